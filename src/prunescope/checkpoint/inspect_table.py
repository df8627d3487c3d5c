"""The structural table of a checkpoint from its safetensors headers (and, optionally, a zero count).

Rows and columns are those of `structure.layer_table` (same conventions: a tied weight counted once on its
first owner, embedding lookups 0 FLOPs, a dense projection 2·in·out FLOPs per token), so `group_table` and
`global_summary` apply unchanged. Shapes, dtypes and bytes come from the header; with `count_zeros`, each
tensor is read once, on its own, to count its non-zeros. A `prune --quantize` checkpoint holds dequantized
values (their disk bytes in `stored_bytes`); its header names the quantizer, so `weight_bytes` and
`bits_per_weight` of those layers give the packed storage (codes, scales, zeros) the values need.
A sparse-layout checkpoint (`prune --format sparse`) has each pruned weight as the parts its manifest names
(`inspect_sparse`): one "bitmask" weight at the bytes of its parts, its nnz from the manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ..layers import DEFAULT_PRUNABLE_GROUPS, parameter_modules
from ..quantization import QuantOptions, quantized_storage_bytes
from ..structure import (
    LAYER_COLUMNS,
    attention_score_flops,
    dense_columns,
    global_summary,
    group_table,
    tied_to,
)
from .inspect_sparse import claim_parts, count_mask_bits, sparse_columns, sparse_weights
from .model_map import map_tensors, meta_model
from .safetensors_io import Checkpoint

_COUNT_ELEMENTS = 1 << 22


@dataclass
class Inspection:
    layers: pd.DataFrame
    groups: pd.DataFrame
    summary: dict
    unmapped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _nonzero_counter(checkpoint: Checkpoint, enabled: bool) -> Callable[[str], int | None]:
    cache: dict[str, int] = {}

    def count(tensor_name: str) -> int | None:
        if not enabled:
            return None
        if tensor_name not in cache:
            entry = checkpoint.entries[tensor_name]
            if not entry.shape:
                cache[tensor_name] = int(torch.count_nonzero(checkpoint.read(tensor_name)))
                return cache[tensor_name]
            rows = entry.shape[0]
            step = max(1, _COUNT_ELEMENTS * rows // max(entry.numel, 1))
            # Row blocks: memory stays at one block whatever the tensor (an embedding can be GBs).
            cache[tensor_name] = sum(
                int(torch.count_nonzero(checkpoint.read_rows(tensor_name, r, min(r + step, rows))))
                for r in range(0, rows, step)
            )
        return cache[tensor_name]

    return count


def _quantization(metadata: dict[str, str]):
    """(QuantOptions, quantized module names) from a `prune --quantize` header, else None."""
    import json

    from .prune_stream import QUANT_METADATA

    text = metadata.get(QUANT_METADATA)
    if not text:
        return None
    info = json.loads(text)
    options = QuantOptions(info["quantizer"], info.get("group_size"), info.get("method", "rtn"))
    return options, set(info["layers"])


def inspect_checkpoint(
    source: str | Path, count_zeros: bool = False, context_length: int | None = None
) -> Inspection:
    """Table of `source` (folder or .safetensors file with a config.json beside it) without its weights."""
    start = time.perf_counter()
    checkpoint = Checkpoint(source)
    model = meta_model(source)
    mapping = map_tensors(model, checkpoint)
    quantization = _quantization(checkpoint.metadata)
    sparse = sparse_weights(source, checkpoint, quantization[0].method if quantization else "rtn")
    claim_parts(mapping, sparse)
    nonzero_of = _nonzero_counter(checkpoint, count_zeros)
    owners: dict[int, str] = {}
    rows = []
    for info in parameter_modules(model):
        module = info.module
        row = {"module": info.name, "group": info.group, "type": type(module).__name__, "tied_to": ""}
        params = nonzero = nbytes = 0
        weight_entry = None
        weight_tied = False
        stored = sparse.get(info.name)
        for pname, param in module.named_parameters(recurse=False):
            if stored is not None and pname == "weight":
                continue  # stored as the sparse layout's parts: counted below
            full = f"{info.name}.{pname}"
            tensor = mapping.to_checkpoint.get(full)
            entry = checkpoint.entries.get(tensor) if tensor else None
            if pname == "weight":
                weight_entry = entry
            tied = tied_to(owners, param, info.name, pname)
            if tied:
                row["tied_to"] = tied
                weight_tied = weight_tied or pname == "weight"
                continue
            if entry is None:
                continue
            params += entry.numel
            counted = nonzero_of(entry.name)
            nonzero += entry.numel if counted is None else counted
            nbytes += entry.nbytes
        if stored is not None:
            nnz = count_mask_bits(checkpoint, stored) if count_zeros else stored.nnz
            row.update(sparse_columns(info, stored, nnz))
            row.update(
                params=params + stored.weights, nonzero=nonzero + nnz, stored_bytes=nbytes + stored.nbytes
            )
            row["sparsity"] = 1.0 - row["nonzero"] / row["params"] if row["params"] else 0.0
            rows.append(row)
            continue
        weights = 0 if (weight_entry is None or weight_tied) else weight_entry.numel
        weight_nonzero = 0
        if weight_entry is not None:
            counted = nonzero_of(weight_entry.name)
            all_nonzero = weight_entry.numel if counted is None else counted
            weight_nonzero = 0 if weight_tied else all_nonzero
        else:
            all_nonzero = 0
        columns, _ = dense_columns(
            info,
            weight_entry.shape if weight_entry else None,
            weight_entry.torch_dtype if weight_entry else None,
            all_nonzero,
        )
        row.update(
            columns,
            params=params,
            nonzero=nonzero,
            weights=weights,
            weight_nonzero=weight_nonzero,
            stored_bytes=nbytes,
            weight_bytes=weight_entry.nbytes if weights else 0,
        )
        row["sparsity"] = 1.0 - row["nonzero"] / row["params"] if row["params"] else 0.0
        rows.append(row)
    # Tensors no parameter claims (e.g. saved buffers) still occupy the file: list them so bytes add up.
    for name in mapping.unmapped:
        entry = checkpoint.entries[name]
        counted = nonzero_of(name)
        nz = entry.numel if counted is None else counted
        rows.append(
            {
                "module": name,
                "group": "other",
                "type": "(unmapped tensor)",
                "shape": "x".join(str(d) for d in entry.shape),
                "dtype": str(entry.torch_dtype).removeprefix("torch."),
                "format": "dense",
                "params": entry.numel,
                "nonzero": nz,
                "weights": 0,
                "weight_nonzero": 0,
                "stored_bytes": entry.nbytes,
                "weight_bytes": 0,
                "flops_per_token": 0,
                "nonzero_flops_per_token": 0,
                "sparsity": 1.0 - nz / entry.numel if entry.numel else 0.0,
                "tied_to": "",
            }
        )
    checkpoint.close()
    if quantization is not None:  # `prune --quantize`: weight bytes at the packed storage the values need
        options, quantized = quantization
        for row in rows:
            if row["module"] in quantized and row["weights"] and row["module"] not in sparse:
                out_features, in_features = (int(d) for d in row["shape"].split("x"))
                nnz = row["weight_nonzero"] if count_zeros else row["weights"]
                dtype = getattr(torch, row["dtype"])
                parts = quantized_storage_bytes((out_features, in_features), nnz, "dense", options, dtype)
                row["weight_bytes"], row["quantization"] = sum(parts.values()), options.label
    layers = pd.DataFrame(rows, columns=LAYER_COLUMNS)
    layers["quantization"] = layers["quantization"].astype(object).fillna("")
    layers["bits_per_weight"] = [
        8 * b / w if w else float("nan")
        for b, w in zip(layers["weight_bytes"], layers["weights"], strict=True)
    ]
    # The default prunable projections, so an audit (--zeros) reports their sparsity on its own; in the
    # sparse layout, the layers its manifest says were pruned.
    prunable = layers[layers["group"].isin(DEFAULT_PRUNABLE_GROUPS) & (layers["tied_to"] == "")]
    summary = global_summary(layers, list(sparse) if sparse else list(prunable["module"]))
    summary.update(
        source=str(source),
        model_type=getattr(model.config, "model_type", None),
        files=len(checkpoint.files),
        tensors=len(checkpoint.entries),
        checkpoint_tensor_bytes=checkpoint.nbytes,
        zeros_counted=count_zeros,
        tied=dict(mapping.tied),
        missing=list(mapping.missing),
        unmapped=list(mapping.unmapped),
        seconds=time.perf_counter() - start,
    )
    if context_length:
        summary["attention_score_flops_per_token"] = attention_score_flops(model, context_length)
        summary["context_length"] = context_length
    if sparse:
        summary.update(layout="sparse", pruned_layer_nonzero_from="mask bits" if count_zeros else "manifest")
    if not count_zeros:
        # Without reading the weights every weight counts as non-zero; say so rather than report 0 sparsity.
        # (The sparse layout's manifest gives its pruned layers' nnz: their sparsity is known.)
        for key in ("nonzero", "sparsity", "nonzero_flops_per_token", "pruned_layer_sparsity"):
            if not (sparse and key == "pruned_layer_sparsity"):
                summary[key] = None
    return Inspection(layers, group_table(layers), summary, list(mapping.unmapped), list(mapping.missing))
