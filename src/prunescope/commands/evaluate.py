"""`prunescope evaluate`: behaviour of a checkpoint against a reference, offloaded when it is large."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import DtypeOpt, ModelArg, OverwriteOpt, ProgressOpt, console, user_errors


@user_errors
def evaluate(
    model: ModelArg,
    reference: Annotated[
        str | None, typer.Option(help="Checkpoint to compare against (top-1/top-5/KL).")
    ] = None,
    max_memory: Annotated[
        str, typer.Option(help="Memory cap per device; the rest is offloaded to disk.")
    ] = "2GB",
    offload_folder: Annotated[
        Path | None, typer.Option(help="Offload folder (default: a temporary one).")
    ] = None,
    corpus: Annotated[str | None, typer.Option(help=".txt (blank-line blocks) or .jsonl ('text').")] = None,
    seqlen: Annotated[int | None, typer.Option(help="Window length (default min(256, context)).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Evaluation token budget.")] = 4096,
    batch_size: Annotated[int, typer.Option()] = 8,
    dtype: DtypeOpt = "auto",
    out: Annotated[Path | None, typer.Option(help="Write evaluation.json here.")] = None,
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Perplexity (and behaviour vs --reference) of a model larger than memory, with accelerate offload."""
    from ..checkpoint.safetensors_io import parse_size
    from ..evaluation.offload import evaluate_offloaded
    from ..report.output import atomic_directory, check_output, write_json

    if out is not None:
        check_output(out, overwrite)
    result = evaluate_offloaded(
        model,
        reference,
        parse_size(max_memory),
        offload_folder,
        corpus,
        seqlen,
        max_tokens,
        batch_size,
        dtype,
        progress,
    )
    table = Table(title=f"{model} (max memory {max_memory} per device)")
    for name in ("model", "perplexity", "top1 agreement", "top5 overlap", "KL mean", "positions"):
        table.add_column(name, justify="left" if name == "model" else "right")
    if result.reference_behaviour is not None:
        r = result.reference_behaviour
        table.add_row(f"reference: {reference}", f"{r.perplexity:.3f}", "-", "-", "-", f"{r.positions:,}")
    b = result.behaviour
    compared = reference is not None
    table.add_row(
        str(model),
        f"{b.perplexity:.3f}",
        f"{b.top1_agreement:.4f}" if compared else "-",
        f"{b.top5_overlap:.4f}" if compared else "-",
        f"{b.kl_mean:.4g}" if compared else "-",
        f"{b.positions:,}",
    )
    console.print(table)
    console.print(f"placement (modules per device): {result.placement}")
    if out is not None:
        with atomic_directory(out, overwrite) as tmp:
            write_json(tmp / "evaluation.json", result.as_dict())
        console.print(f"written: {out}/evaluation.json")
