"""`prunescope inspect`: structure of a checkpoint from its safetensors headers."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from .common import ModelArg, OptionalOutOpt, OverwriteOpt, at_least, console, size_text, user_errors


@user_errors
def inspect(
    model: ModelArg,
    zeros: Annotated[
        bool, typer.Option(help="Read each tensor once to count zeros (audit pruning).")
    ] = False,
    layers: Annotated[bool, typer.Option(help="Print the per-layer table too.")] = False,
    context: Annotated[int | None, typer.Option(help="Context length for attention-score FLOPs.")] = None,
    out: OptionalOutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Structure of a safetensors checkpoint from its headers: shapes, params, bytes, FLOPs per group.

    A sparse-layout folder (prune --format sparse) is read through its manifest: each pruned weight is one
    bitmask row at the bytes of its stored parts. With --out: layers.csv, groups.csv and summary.json."""
    from ..checkpoint import inspect_checkpoint
    from ..models import local_checkpoint
    from ..report.output import atomic_directory, check_output, write_json

    at_least(context, 1, "--context")
    if out is not None:
        check_output(out, overwrite)
    result = inspect_checkpoint(local_checkpoint(model), count_zeros=zeros, context_length=context)
    sparse_layout = result.summary.get("layout") == "sparse"
    if layers:
        table = Table(title=f"{model}: layers")
        columns = ["module", "group", "shape", "dtype", "params", "stored_bytes", "bits_per_weight"]
        # The sparse layout mixes stored forms: say which one each row is (bitmask, bitmask+int4, dense).
        columns[4:4] = ["format"] if sparse_layout else []
        columns += ["flops_per_token"]
        columns += ["sparsity"] if zeros else []
        for name in columns:
            table.add_column(
                name.replace("_", " "), justify="left" if name in ("module", "group") else "right"
            )
        for _, row in result.layers.iterrows():
            cells = [f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in columns]
            cells[columns.index("bits_per_weight")] = f"{row['bits_per_weight']:.3g}"
            if sparse_layout:
                cells[columns.index("format")] = "+".join(filter(None, (row["format"], row["quantization"])))
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
            size_text(row["stored_bytes"]),
            f"{row['flops_per_token']:,}",
            f"{row['param_share']:.3f}",
        ]
        if zeros:
            cells.append(f"{row['sparsity']:.3f}")
        table.add_row(*cells)
    console.print(table)
    s = result.summary
    line = (
        f"params {s['params']:,}  bytes {size_text(s['stored_bytes'])}  FLOPs/token {s['flops_per_token']:,}"
        f"  bits/weight {s['bits_per_weight']:.3g} (prunable layers {s['pruned_layer_bits_per_weight']:.3g}"
        + (
            f", {s['quantization']} {'codes' if sparse_layout else 'values'}"
            if s["quantization"] != "none"
            else ""
        )
        + ")"
    )
    if zeros:
        line += f"  sparsity {s['sparsity']:.4f}  prunable-layer sparsity {s['pruned_layer_sparsity']:.4f}"
    if sparse_layout:
        line += f"  sparse layout: {s['pruned_layers']} bitmask layers"
        line += f", sparsity {s['pruned_layer_sparsity']:.4f}" if not zeros else ""
        line += f" (nnz from the manifest{', checked against the mask bits' if zeros else ''})"
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
