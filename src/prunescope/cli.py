"""The `prunescope` command line: parses options, calls the library, prints. No logic of its own."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import PrunescopeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Study unstructured pruning of causal LMs: behaviour, structure, bytes, FLOPs, latency.",
)
# Rich falls back to 80 columns when stdout is not a terminal (CI, files): too narrow for the tables.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)


def _quiet_libraries() -> None:
    # Our own progress bars cover long steps; transformers' per-file bars would only add noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def user_errors(fn):
    """One line on stderr and exit code 2 for bad input; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except PrunescopeError as error:
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; nothing was written")
            raise typer.Exit(130) from None

    return wrapper


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Hub id, local directory, or 'demo'.")]
DtypeOpt = Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16.")]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps.")]


def print_summary(summary, title: str) -> None:
    table = Table(title=title)
    # (column, header, format, scale): short headers keep the table readable in 80 columns.
    columns = [
        ("variant", "variant", "{}", None),
        ("stored_bytes", "MB", "{:.3f}", 1e-6),
        ("sparsity", "sparsity", "{:.3f}", None),
        ("pruned_layer_sparsity", "pruned", "{:.3f}", None),
        ("flops_per_token", "MFLOP/tok", "{:.3f}", 1e-6),
        ("top1_agreement", "top-1", "{:.4f}", None),
        ("top5_overlap", "top-5", "{:.4f}", None),
        ("kl_mean", "KL", "{:.3g}", None),
        ("perplexity", "ppl", "{:.3f}", None),
    ]
    for name, header, _, _ in columns:
        table.add_column(header, justify="left" if name == "variant" else "right")
    for _, row in summary.iterrows():
        table.add_row(
            *[fmt.format(row[name] * scale if scale else row[name]) for name, _, fmt, scale in columns]
        )
    console.print(table)


@app.command()
@user_errors
def study(
    model: ModelOpt = "demo",
    sparsity: Annotated[
        float | None, typer.Option(help="Fraction of prunable weights set to zero [0, 1).")
    ] = None,
    method: Annotated[str, typer.Option(help="magnitude, random, wanda or sparsegpt.")] = "magnitude",
    scope: Annotated[
        str | None, typer.Option(help="global, layer or row (default: the method's own).")
    ] = None,
    pattern: Annotated[str, typer.Option(help="unstructured or N:M, e.g. 2:4.")] = "unstructured",
    variants: Annotated[
        str, typer.Option(help="Comma list of dense, masked and formats (csr, bitmask, ...).")
    ] = "dense,masked,csr",
    include: Annotated[
        list[str] | None, typer.Option(help="Glob on module names to prune (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Glob on module names to keep dense (repeatable).")
    ] = None,
    corpus: Annotated[str | None, typer.Option(help=".txt (blank-line blocks) or .jsonl ('text').")] = None,
    seqlen: Annotated[int | None, typer.Option(help="Window length (default min(256, context)).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Evaluation token budget.")] = 4096,
    batch_size: Annotated[int, typer.Option()] = 8,
    calibration: Annotated[str | None, typer.Option(help="Calibration text file, or 'builtin'.")] = None,
    calib_samples: Annotated[int, typer.Option()] = 128,
    calib_seqlen: Annotated[int | None, typer.Option()] = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results/study"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing results folder.")] = False,
    latency: Annotated[bool, typer.Option(help="Also measure layer/model latency per format.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Prune a model and compare the dense, masked and sparse-format variants."""
    from .output import atomic_directory, check_output
    from .report import write_study
    from .study import StudyConfig, run_study

    config = StudyConfig(
        model=model,
        sparsity=sparsity,
        method=method,
        scope=scope,
        pattern=pattern,
        variants=variants,
        include=include or [],
        exclude=exclude or [],
        corpus=corpus,
        seqlen=seqlen,
        max_tokens=max_tokens,
        batch_size=batch_size,
        calibration=calibration,
        calib_samples=calib_samples,
        calib_seqlen=calib_seqlen,
        dtype=dtype,
        device=device,
        seed=seed,
        latency=latency,
    )
    check_output(out, overwrite)
    with atomic_directory(out, overwrite) as tmp:
        result = run_study(config, work_dir=tmp / "_work", progress=progress, results_dir=tmp)
        import shutil

        shutil.rmtree(tmp / "_work", ignore_errors=True)
        write_study(result, tmp)
    print_summary(
        result.summary,
        f"{model}: {result.spec.method} {result.spec.sparsity:g} "
        f"({result.spec.effective_scope}, {result.spec.pattern})",
    )
    console.print(f"results: {out}/ (report.md, summary.csv, layers.csv, groups.csv, run.json, plots)")


@app.command("train-demo")
@user_errors
def train_demo_command(
    out: Annotated[Path, typer.Option(help="Training folder (checkpoints + final model).")] = Path(
        "demo-train"
    ),
    seed: Annotated[int, typer.Option()] = 0,
    minutes: Annotated[
        float, typer.Option(help="Training time budget the LR schedule is planned for.")
    ] = 40.0,
    resume: Annotated[bool, typer.Option(help="Resume from the last checkpoint in OUT.")] = True,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's).")] = None,
) -> None:
    """Train the bundled demo model (OPT architecture) on this interpreter's standard library."""
    from .demo_training import train_demo

    final = train_demo(out, seed=seed, minutes=minutes, resume=resume, threads=threads)
    console.print(f"model written to {final}")


def main() -> None:  # pragma: no cover
    sys.exit(app())


# Commands of other features register themselves on `app`.
from . import commands  # noqa: E402,F401
