"""`prunescope study`: prune one model copy and compare its dense, masked and sparse-format variants."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import (
    CALIBRATION_HELP,
    CORPUS_HELP,
    MAX_TOKENS_HELP,
    PROTOCOL_HELP,
    SEEDS_HELP,
    SEQLEN_HELP,
    TEXT_COLUMN_HELP,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    NumFewshotOpt,
    OutOpt,
    OverwriteOpt,
    ProgressOpt,
    SeedOpt,
    TasksLimitOpt,
    TasksOpt,
    TasksPathOpt,
    console,
    print_tasks,
    user_errors,
)
from .method_options import (
    AllocationOpt,
    OwlLambdaOpt,
    OwlMOpt,
    RefineCyclesOpt,
    RefineOpt,
    RefineThresholdOpt,
    RiaAlphaOpt,
    method_kwargs,
)


def print_summary(summary, title: str, caption: str | None = None) -> None:
    """The summary table; `caption` (the perplexity protocol line) is printed under it, unwrapped."""
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
    if caption:
        console.print(caption, soft_wrap=True, highlight=False)


@user_errors
def study(
    model: ModelOpt = "demo",
    sparsity: Annotated[
        float | None, typer.Option(help="Fraction of prunable weights set to zero [0, 1).")
    ] = None,
    method: Annotated[str, typer.Option(help="magnitude, random, wanda, sparsegpt or ria.")] = "magnitude",
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
    corpus: Annotated[str | None, typer.Option(help=CORPUS_HELP)] = None,
    text_column: Annotated[str | None, typer.Option(help=TEXT_COLUMN_HELP)] = None,
    ppl_protocol: Annotated[str | None, typer.Option(help=PROTOCOL_HELP)] = None,
    seqlen: Annotated[int | None, typer.Option(help=SEQLEN_HELP)] = None,
    max_tokens: Annotated[int | None, typer.Option(help=MAX_TOKENS_HELP)] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    calibration: Annotated[str | None, typer.Option(help=CALIBRATION_HELP)] = None,
    calib_samples: Annotated[int, typer.Option()] = 128,
    calib_seqlen: Annotated[int | None, typer.Option()] = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    seeds: Annotated[str | None, typer.Option(help=SEEDS_HELP)] = None,
    out: OutOpt = Path("results/study"),
    overwrite: OverwriteOpt = False,
    latency: Annotated[bool, typer.Option(help="Also measure layer/model latency per format.")] = False,
    allocation: AllocationOpt = "uniform",
    owl_m: OwlMOpt = 5.0,
    owl_lambda: OwlLambdaOpt = 0.08,
    ria_alpha: RiaAlphaOpt = 0.5,
    refine: RefineOpt = "none",
    refine_cycles: RefineCyclesOpt = 50,
    refine_threshold: RefineThresholdOpt = 0.1,
    tasks: TasksOpt = None,
    tasks_path: TasksPathOpt = None,
    tasks_limit: TasksLimitOpt = None,
    num_fewshot: NumFewshotOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Prune a model and compare the dense, masked and sparse-format variants."""
    from ..experiments.study import StudyConfig, run_study
    from ..experiments.sweep import method_label
    from ..report.output import atomic_directory, check_output
    from ..report.study import write_study

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
        **method_kwargs(allocation, owl_m, owl_lambda, ria_alpha, refine, refine_cycles, refine_threshold),
        text_column=text_column,
        ppl_protocol=ppl_protocol,
        seeds=seeds,
        tasks=tasks or [],
        tasks_path=tasks_path,
        tasks_limit=tasks_limit,
        num_fewshot=num_fewshot,
    )
    check_output(out, overwrite)
    with atomic_directory(out, overwrite) as tmp:
        result = run_study(config, work_dir=tmp / "_work", progress=progress, results_dir=tmp)
        import shutil

        shutil.rmtree(tmp / "_work", ignore_errors=True)
        write_study(result, tmp)
    print_summary(
        result.summary,
        f"{model}: {method_label(result.spec.method, result.spec.allocation, result.spec.refine)} "
        f"{result.spec.sparsity:g} "
        f"({result.spec.effective_scope}, {result.spec.pattern})",
        caption=result.run["evaluation"].get("protocol"),
    )
    print_tasks(result.tasks, result.run)
    console.print(f"results: {out}/ (report.md, summary.csv, layers.csv, groups.csv, run.json, plots)")
