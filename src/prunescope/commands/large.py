"""`prunescope inspect / prune / evaluate`: checkpoints larger than memory, from disk."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..cli import DtypeOpt, app, console, user_errors
from ..errors import PrunescopeError

ModelArg = Annotated[
    str, typer.Argument(help="Checkpoint folder (or .safetensors file beside a config.json).")
]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing output folder.")]
ProgressOpt = Annotated[bool, typer.Option(help="Show progress bars.")]


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    return str(n)


@app.command()
@user_errors
def inspect(
    model: ModelArg,
    zeros: Annotated[
        bool, typer.Option(help="Read each tensor once to count zeros (audit pruning).")
    ] = False,
    layers: Annotated[bool, typer.Option(help="Print the per-layer table too.")] = False,
    context: Annotated[int | None, typer.Option(help="Context length for attention-score FLOPs.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write layers.csv, groups.csv, summary.json here.")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Structure of a safetensors checkpoint from its headers: shapes, params, bytes, FLOPs per group."""
    from ..checkpoint import inspect_checkpoint
    from ..output import atomic_directory, check_output, write_json

    if out is not None:
        check_output(out, overwrite)
    result = inspect_checkpoint(model, count_zeros=zeros, context_length=context)
    if layers:
        table = Table(title=f"{model}: layers")
        columns = ["module", "group", "shape", "dtype", "params", "stored_bytes", "flops_per_token"]
        columns += ["sparsity"] if zeros else []
        for name in columns:
            table.add_column(
                name.replace("_", " "), justify="left" if name in ("module", "group") else "right"
            )
        for _, row in result.layers.iterrows():
            cells = [f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in columns]
            if zeros:
                cells[-1] = f"{row['sparsity']:.3f}"
            if row["tied_to"]:
                cells[0] += f" (tied to {row['tied_to']})"
            table.add_row(*cells)
        console.print(table)
    table = Table(
        title=f"{model}: groups ({result.summary['model_type']}, {result.summary['files']} file(s))"
    )
    columns = ["group", "modules", "params", "stored_bytes", "flops_per_token", "param_share"]
    columns += ["sparsity"] if zeros else []
    for name in columns:
        table.add_column(name.replace("_", " "), justify="left" if name == "group" else "right")
    for _, row in result.groups.iterrows():
        cells = [
            str(row["group"]),
            f"{row['modules']:,}",
            f"{row['params']:,}",
            _size(row["stored_bytes"]),
            f"{row['flops_per_token']:,}",
            f"{row['param_share']:.3f}",
        ]
        if zeros:
            cells.append(f"{row['sparsity']:.3f}")
        table.add_row(*cells)
    console.print(table)
    s = result.summary
    line = f"params {s['params']:,}  bytes {_size(s['stored_bytes'])}  FLOPs/token {s['flops_per_token']:,}"
    if zeros:
        line += f"  sparsity {s['sparsity']:.4f}  prunable-layer sparsity {s['pruned_layer_sparsity']:.4f}"
    if s["tied"]:
        line += f"  tied: {', '.join(f'{k} -> {v}' for k, v in s['tied'].items())}"
    console.print(line + f"  ({s['seconds']:.2f} s)")
    if s["missing"] or s["unmapped"]:
        console.print(
            f"[yellow]missing parameters: {len(s['missing'])}, unmapped tensors: {len(s['unmapped'])}[/]"
        )
    if out is not None:
        with atomic_directory(out, overwrite) as tmp:
            result.layers.to_csv(tmp / "layers.csv", index=False)
            result.groups.to_csv(tmp / "groups.csv", index=False)
            write_json(tmp / "summary.json", result.summary)
        console.print(f"written: {out}/ (layers.csv, groups.csv, summary.json)")


def _calibration(model: str, spec, source: str | None, seqlen: int | None):
    """Calibration windows from the checkpoint's own tokenizer, as `prunescope study` draws them."""
    import dataclasses

    from transformers import AutoConfig, AutoTokenizer

    from ..checkpoint.model_map import config_folder
    from ..pruning.calibration import calibration_samples

    folder = config_folder(model)
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
        tokenizer, source, model, spec.calib_samples, spec.calib_seqlen, seed=spec.seed
    )
    return samples, spec


@app.command("prune")
@user_errors
def prune_command(
    model: ModelArg,
    out: Annotated[Path, typer.Option(help="Output folder for the pruned checkpoint.")],
    method: Annotated[str, typer.Option(help="magnitude, random, wanda or sparsegpt.")] = "magnitude",
    sparsity: Annotated[float | None, typer.Option(help="Fraction of prunable weights set to zero.")] = None,
    scope: Annotated[str | None, typer.Option(help="global, layer or row (default: the method's).")] = None,
    pattern: Annotated[str, typer.Option(help="unstructured or N:M, e.g. 2:4.")] = "unstructured",
    format: Annotated[
        str, typer.Option("--format", help="hf, sparse or both (hf/ and sparse/ in OUT).")
    ] = "hf",
    include: Annotated[list[str] | None, typer.Option(help="Glob on module names to prune.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Glob on module names to keep dense.")] = None,
    shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 2GB.")] = "2GB",
    calibration: Annotated[str | None, typer.Option(help="Calibration text file, or 'builtin'.")] = None,
    calib_samples: Annotated[int, typer.Option()] = 128,
    calib_seqlen: Annotated[int | None, typer.Option(help="Default: min(256, context).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Prune a checkpoint from disk and save it: magnitude/random row block by row block, wanda/sparsegpt
    decoder block by decoder block; memory is bounded by a block, not the model."""
    from ..checkpoint import prune_checkpoint
    from ..checkpoint.safetensors_io import parse_size
    from ..output import atomic_directory, check_output, write_json
    from ..pruning import PruneSpec

    samples = None
    spec = PruneSpec.create(
        method,
        sparsity,
        pattern,
        scope=scope,
        seed=seed,
        calib_samples=calib_samples,
        calib_seqlen=calib_seqlen or 256,
    )
    max_shard = parse_size(shard_size)
    check_output(out, overwrite)
    if spec.needs_calibration:
        samples, spec = _calibration(model, spec, calibration, calib_seqlen)
    with atomic_directory(out, overwrite) as tmp:
        result = prune_checkpoint(model, tmp, spec, format, include, exclude, max_shard, progress, samples)
        # Folder paths inside the record must name the final location, not the temporary one.
        for info in result.outputs.values():
            info["folder"] = str(Path(out) / Path(info["folder"]).relative_to(tmp))
        write_json(tmp / "prune.json", {"source": model, **result.as_dict()})
    summary = result.as_dict()
    console.print(
        f"{spec.method} {spec.sparsity:g} ({spec.effective_scope}, {spec.pattern}): pruned "
        f"{summary['pruned_weights']:,} of {summary['prunable_weights']:,} weights "
        f"({summary['pruned_layer_sparsity']:.4f}) in {result.seconds:.1f} s"
    )
    table = Table(title="checkpoint sizes")
    for name in ("checkpoint", "folder", "bytes", "vs source"):
        table.add_column(name, justify="left" if name in ("checkpoint", "folder") else "right")
    table.add_row("source", model, _size(result.checkpoint_bytes), "1.000")
    for kind, info in result.outputs.items():
        table.add_row(
            kind, info["folder"], _size(info["bytes"]), f"{info['bytes'] / result.checkpoint_bytes:.3f}"
        )
    console.print(table)


@app.command()
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
    from ..offload import evaluate_offloaded
    from ..output import atomic_directory, check_output, write_json

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
