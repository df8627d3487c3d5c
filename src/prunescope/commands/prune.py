"""`prunescope prune`: prune a checkpoint layer by layer from disk, larger than memory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import PrunescopeError
from . import options
from .common import ModelArg, OutOpt, OverwriteOpt, ProgressOpt, console, size_text, user_errors

VALIDATION_SEQLEN = 256  # replaced by min(256, context) once the checkpoint's config is read


def _stored_values(format: str) -> str:
    return {"hf": "dequantized", "sparse": "codes"}.get(format, "hf/: dequantized, sparse/: codes")


def _calibration(model: str, spec, source: str | None, seqlen: int | None, text_column: str | None = None):
    """Calibration windows from the checkpoint's own tokenizer, as `prunescope study` draws them."""
    from transformers import AutoConfig, AutoTokenizer

    from ..checkpoint.model_map import config_folder
    from ..models import local_checkpoint
    from ..pruning.calibration import calibration_samples
    from ..util.model_config import context_length

    folder = config_folder(local_checkpoint(model))
    if seqlen is None:
        config = AutoConfig.from_pretrained(folder)
        context = context_length(config, fallback=VALIDATION_SEQLEN)
        spec = dataclasses.replace(spec, calib_seqlen=min(VALIDATION_SEQLEN, context))
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


def _provenance(model: str, source: Path) -> dict:
    """Where the pruned checkpoint came from and what wrote it, for prune.json and its model card."""
    from datetime import datetime, timezone

    from ..version import __version__

    return {
        "source": model,  # as the user named it (`evaluate` follows it back to the source's builtin corpus)
        "source_path": str(source),
        "prunescope": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": options.command_line(),
    }


def _prune_options() -> list:
    from ..experiments.config import EvaluationOptions, LoadOptions

    chosen = options.study_options(
        groups=("prune", "calib", "run", "quant"), skip=("variants", "seeds", "latency", "per_token")
    )
    # The device runs a calibrated method's blocks (float32, as SparseGPT's Hessian needs): no --dtype.
    return (
        chosen
        + options.group_options(EvaluationOptions, only=["text_column"])
        + options.group_options(LoadOptions, only=["device"])
    )


@options.with_options(_prune_options)
@user_errors
def prune_command(
    model: ModelArg,
    out: OutOpt,
    format: Annotated[
        str, typer.Option("--format", help="hf, sparse or both (hf/ and sparse/ in OUT).")
    ] = "hf",
    shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 2GB.")] = "2GB",
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
    **values,
) -> None:
    """Prune a checkpoint from disk and save it: magnitude/random row block by row block, wanda/sparsegpt
    decoder block by decoder block; memory is bounded by a block, not the model."""
    from ..checkpoint import prune_checkpoint
    from ..checkpoint.model_card import write_model_card
    from ..checkpoint.prune_stream import PRUNE_RECORD
    from ..checkpoint.safetensors_io import parse_size
    from ..device import resolve_device
    from ..experiments.config import StudyConfig
    from ..models import local_checkpoint
    from ..report.output import atomic_directory, check_output, write_json

    # The study's option groups route the flat options (and validate them) exactly as `study` does.
    config = StudyConfig(**values, variants=["dense"])
    request, calib = config.prune, config.calib
    include, exclude = request.include, request.exclude
    samples = None
    spec = config.prune_spec(VALIDATION_SEQLEN)
    quantizers = config.quant.quantizers()  # --quantize: one quantizer
    if len(quantizers) > 1:
        raise PrunescopeError("prune --quantize takes one quantizer (int8 or int4), not a list")
    quantize = quantizers[0] if quantizers else None
    if quantize is not None and quantize.method == "gptq":  # inside the block pass (joint with SparseGPT)
        spec, quantize = dataclasses.replace(spec, quantize=quantize), None
    max_shard = parse_size(shard_size)
    source = local_checkpoint(model)
    device = resolve_device(config.load.device)  # an absent device fails in one line before any work
    check_output(out, overwrite)
    if spec.needs_calibration:
        samples, spec = _calibration(
            model, spec, calib.calibration, calib.calib_seqlen, config.evaluation.text_column
        )
    with atomic_directory(out, overwrite) as tmp:
        result = prune_checkpoint(
            source, tmp, spec, format, include, exclude, max_shard, progress, samples, quantize, device
        )
        written = {kind: Path(info["folder"]) for kind, info in result.outputs.items()}
        # Folder paths inside the record must name the final location, not the temporary one.
        for info in result.outputs.values():
            info["folder"] = str(Path(out) / Path(info["folder"]).relative_to(tmp))
        quantization = quantize or spec.quantize
        # hf/: dequantized values any loader reads; sparse/: codes, scales and zeros (checkpoint/sparse.py)
        quant = (
            {"quantization": {**vars(quantization), "values": _stored_values(format)}} if quantization else {}
        )
        record = {**_provenance(model, source), **result.as_dict(), **quant}
        write_json(tmp / PRUNE_RECORD, record)
        for kind, folder in written.items():  # each checkpoint's own card, not the source model's
            write_model_card(folder, record, kind)
        if "allocation" in result.details:  # allocation.json and its pictures, beside prune.json
            from ..report.allocation import write_allocation

            write_allocation(result.details["allocation"], result.layers, tmp)
    summary = result.as_dict()
    console.print(
        f"{spec.method} {spec.sparsity:g} ({spec.effective_scope}, {spec.pattern}): pruned "
        f"{summary['pruned_weights']:,} of {summary['prunable_weights']:,} weights "
        f"({summary['pruned_layer_sparsity']:.4f}) in {result.seconds:.1f} s"
        + (f"; values {quantize.label} RTN ({_stored_values(format)})" if quantize else "")
        + (
            f"; values {spec.quantize.label} in the pass{' (joint)' * spec.joint_quantization}"
            if spec.quantize
            else ""
        )
    )
    if "allocation" in summary:
        blocks = summary["allocation"].get("blocks", [])
        label = summary["allocation"].get("allocation", spec.allocation)
        if blocks:
            console.print(f"{label} block sparsities: " + ", ".join(f"{b['sparsity']:.3f}" for b in blocks))
        console.print(f"allocation: {out}/allocation.json")
    table = Table(title="checkpoint sizes")
    for name in ("checkpoint", "folder", "bytes", "vs source"):
        table.add_column(name, justify="left" if name in ("checkpoint", "folder") else "right")
    table.add_row("source", model, size_text(result.checkpoint_bytes), "1.000")
    for kind, info in result.outputs.items():
        table.add_row(
            kind, info["folder"], size_text(info["bytes"]), f"{info['bytes'] / result.checkpoint_bytes:.3f}"
        )
    console.print(table)
