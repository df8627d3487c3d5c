"""`prunescope prune`: prune a checkpoint layer by layer from disk, larger than memory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import PrunescopeError
from .common import (
    CALIBRATION_HELP,
    TEXT_COLUMN_HELP,
    ModelArg,
    OutOpt,
    OverwriteOpt,
    ProgressOpt,
    SeedOpt,
    console,
    size_text,
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


def _calibration(model: str, spec, source: str | None, seqlen: int | None, text_column: str | None = None):
    """Calibration windows from the checkpoint's own tokenizer, as `prunescope study` draws them."""
    import dataclasses

    from transformers import AutoConfig, AutoTokenizer

    from ..checkpoint.model_map import config_folder
    from ..models import local_checkpoint
    from ..pruning.calibration import calibration_samples

    folder = config_folder(local_checkpoint(model))
    if seqlen is None:
        config = AutoConfig.from_pretrained(folder)
        context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 256)
        spec = dataclasses.replace(spec, calib_seqlen=min(256, context))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError):
        raise PrunescopeError(
            f"{spec.method} needs the model's tokenizer; none found in {str(folder)!r}"
        ) from None
    samples = calibration_samples(
        tokenizer,
        source,
        model,
        spec.calib_samples,
        spec.calib_seqlen,
        seed=spec.seed,
        text_column=text_column,
    )
    return samples, spec


@user_errors
def prune_command(
    model: ModelArg,
    out: OutOpt,
    method: Annotated[str, typer.Option(help="magnitude, random, wanda, sparsegpt or ria.")] = "magnitude",
    sparsity: Annotated[float | None, typer.Option(help="Fraction of prunable weights set to zero.")] = None,
    scope: Annotated[str | None, typer.Option(help="global, layer or row (default: the method's).")] = None,
    pattern: Annotated[str, typer.Option(help="unstructured or N:M, e.g. 2:4.")] = "unstructured",
    format: Annotated[
        str, typer.Option("--format", help="hf, sparse or both (hf/ and sparse/ in OUT).")
    ] = "hf",
    include: Annotated[list[str] | None, typer.Option(help="Glob on module names to prune.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Glob on module names to keep dense.")] = None,
    shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 2GB.")] = "2GB",
    calibration: Annotated[str | None, typer.Option(help=CALIBRATION_HELP)] = None,
    text_column: Annotated[str | None, typer.Option(help=TEXT_COLUMN_HELP)] = None,
    calib_samples: Annotated[int, typer.Option()] = 128,
    calib_seqlen: Annotated[int | None, typer.Option(help="Default: min(256, context).")] = None,
    seed: SeedOpt = 0,
    allocation: AllocationOpt = "uniform",
    owl_m: OwlMOpt = 5.0,
    owl_lambda: OwlLambdaOpt = 0.08,
    ria_alpha: RiaAlphaOpt = 0.5,
    refine: RefineOpt = "none",
    refine_cycles: RefineCyclesOpt = 50,
    refine_threshold: RefineThresholdOpt = 0.1,
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Prune a checkpoint from disk and save it: magnitude/random row block by row block, wanda/sparsegpt
    decoder block by decoder block; memory is bounded by a block, not the model."""
    from ..checkpoint import prune_checkpoint
    from ..checkpoint.safetensors_io import parse_size
    from ..models import local_checkpoint
    from ..pruning import PruneSpec
    from ..report.output import atomic_directory, check_output, write_json

    samples = None
    spec = PruneSpec.create(
        method,
        sparsity,
        pattern,
        scope=scope,
        seed=seed,
        calib_samples=calib_samples,
        calib_seqlen=calib_seqlen or 256,
        **method_kwargs(allocation, owl_m, owl_lambda, ria_alpha, refine, refine_cycles, refine_threshold),
    )
    max_shard = parse_size(shard_size)
    source = local_checkpoint(model)
    check_output(out, overwrite)
    if spec.needs_calibration:
        samples, spec = _calibration(model, spec, calibration, calib_seqlen, text_column)
    with atomic_directory(out, overwrite) as tmp:
        result = prune_checkpoint(source, tmp, spec, format, include, exclude, max_shard, progress, samples)
        # Folder paths inside the record must name the final location, not the temporary one.
        for info in result.outputs.values():
            info["folder"] = str(Path(out) / Path(info["folder"]).relative_to(tmp))
        write_json(tmp / "prune.json", {"source": model, **result.as_dict()})
        if "allocation" in result.details:  # OWL's block sparsities, beside prune.json
            from ..report.allocation import PLOT_NAME, plot_allocation

            plot_allocation(result.details["allocation"], tmp / PLOT_NAME)
    summary = result.as_dict()
    console.print(
        f"{spec.method} {spec.sparsity:g} ({spec.effective_scope}, {spec.pattern}): pruned "
        f"{summary['pruned_weights']:,} of {summary['prunable_weights']:,} weights "
        f"({summary['pruned_layer_sparsity']:.4f}) in {result.seconds:.1f} s"
    )
    if "allocation" in summary:
        blocks = summary["allocation"]["blocks"]
        console.print("OWL block sparsities: " + ", ".join(f"{b['sparsity']:.3f}" for b in blocks))
    table = Table(title="checkpoint sizes")
    for name in ("checkpoint", "folder", "bytes", "vs source"):
        table.add_column(name, justify="left" if name in ("checkpoint", "folder") else "right")
    table.add_row("source", model, size_text(result.checkpoint_bytes), "1.000")
    for kind, info in result.outputs.items():
        table.add_row(
            kind, info["folder"], size_text(info["bytes"]), f"{info['bytes'] / result.checkpoint_bytes:.3f}"
        )
    console.print(table)
