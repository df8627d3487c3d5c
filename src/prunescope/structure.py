"""Where parameters, zeros, bytes and FLOPs live: per-layer, per-group and global tables.

Conventions (docs/metrics.md): a tied parameter is counted once, on its first owner (the others show
`tied_to`); an embedding lookup costs no FLOPs; a projection executes 2·in·out FLOPs per token with a dense
kernel and 2·nnz with a sparse one (a format may declare otherwise); norms and other small modules are not
counted in FLOPs; attention-score FLOPs (QKᵀ and AV) depend on the context and are reported on their own.
Global figures are sums of the layer table, so they always add up.

Bytes are at real storage: `weight_bytes` is the weight's own storage (values and, for a sparse format, its
index); `bits_per_weight` = 8·weight_bytes / weights (32 or 16 for a dense fp32/fp16 weight). A layer whose
values are quantized (`layer_table(model, quantized={name: QuantOptions})`, issue 25) is counted as its
format would store it with packed 8/4-bit values, scales and zeros (`quantized_storage_bytes`): format
"dense" for a dense module (codes per row), the module's own format for a sparse one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from .formats.base import SparseLinear
from .layers import GROUPS, LayerInfo, linear_shape, parameter_modules
from .quantization import QuantOptions, quantized_storage_bytes

LAYER_COLUMNS = [
    "module",
    "group",
    "type",
    "shape",
    "dtype",
    "format",
    "params",
    "nonzero",
    "sparsity",
    "weights",
    "weight_nonzero",
    "stored_bytes",
    "weight_bytes",
    "bits_per_weight",
    "quantization",
    "flops_per_token",
    "nonzero_flops_per_token",
    "tied_to",
]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def layer_table(model: nn.Module, quantized: Mapping[str, QuantOptions] | None = None) -> pd.DataFrame:
    """One row per module that owns parameters (or a sparse weight), in model order.

    `quantized`: module name -> the quantizer its (dequantized, in place) values stand for; those layers'
    bytes are counted at the quantized storage of their format.
    """
    owners: dict[int, str] = {}
    rows = []
    quantized = quantized or {}
    for info in parameter_modules(model):
        module = info.module
        quant = quantized.get(info.name)
        row = {
            "module": info.name,
            "group": info.group,
            "type": type(module).__name__,
            "tied_to": "",
            "quantization": quant.label if quant is not None else "",
        }
        if isinstance(module, SparseLinear):
            out_features, in_features = module.out_features, module.in_features
            bias = module.bias
            weights, weight_nonzero = out_features * in_features, module.nnz
            bias_nz = int(torch.count_nonzero(bias)) if bias is not None else 0
            bias_n = bias.numel() if bias is not None else 0
            weight_bytes = sum(module.weight_bytes().values())
            stored = module.stored_bytes()
            if quant is not None:
                parts = quantized_storage_bytes(
                    (out_features, in_features), weight_nonzero, module.format_name, quant, module.dtype
                )
                stored += sum(parts.values()) - weight_bytes
                weight_bytes = sum(parts.values())
            row.update(
                shape=f"{out_features}x{in_features}",
                dtype=str(module.dtype).removeprefix("torch."),
                format=module.format_name,
                params=weights + bias_n,
                nonzero=weight_nonzero + bias_nz,
                weights=weights,
                weight_nonzero=weight_nonzero,
                stored_bytes=stored,
                weight_bytes=weight_bytes,
                flops_per_token=module.flops_per_token(),
                nonzero_flops_per_token=2 * weight_nonzero,
            )
        else:
            params = nz = nbytes = 0
            weight = getattr(module, "weight", None)
            for pname, param in module.named_parameters(recurse=False):
                tied = tied_to(owners, param, info.name, pname)
                if tied:
                    row["tied_to"] = tied
                    continue
                params += param.numel()
                nz += int(torch.count_nonzero(param))
                nbytes += _nbytes(param)
            has_weight = isinstance(weight, torch.Tensor)
            weight_nz = int(torch.count_nonzero(weight)) if has_weight else 0
            # A tied weight belongs to its first owner; this row still does the arithmetic with it.
            own_weight = has_weight and not row["tied_to"]
            columns, features = dense_columns(
                info, weight.shape if has_weight else None, weight.dtype if has_weight else None, weight_nz
            )
            weight_bytes = _nbytes(weight) if own_weight else 0
            if quant is not None and own_weight and features:
                parts = quantized_storage_bytes(features, weight_nz, "dense", quant, weight.dtype)
                nbytes += sum(parts.values()) - weight_bytes
                weight_bytes = sum(parts.values())
            row.update(
                columns,
                params=params,
                nonzero=nz,
                weights=weight.numel() if own_weight else 0,
                weight_nonzero=weight_nz if own_weight else 0,
                stored_bytes=nbytes,
                weight_bytes=weight_bytes,
            )
        row["sparsity"] = 1.0 - row["nonzero"] / row["params"] if row["params"] else 0.0
        row["bits_per_weight"] = 8 * row["weight_bytes"] / row["weights"] if row["weights"] else math.nan
        if hasattr(module, "auto_choice"):  # a layer the `auto` format timed: what it chose and why
            from .formats.auto import auto_details

            row.update(auto_details(module))
        rows.append(row)
    extra = [key for key in dict.fromkeys(k for row in rows for k in row) if key not in LAYER_COLUMNS]
    return pd.DataFrame(rows, columns=LAYER_COLUMNS + extra)


def tied_to(owners: dict[int, str], param: torch.Tensor, module_name: str, pname: str) -> str:
    """The row's `tied_to`: empty when `module_name` is the first to hold `param` (it counts it), else the
    first owner for a tied weight, owner.pname for another shared parameter. Records the first holder."""
    owner = owners.setdefault(id(param), module_name)
    if owner == module_name:
        return ""
    return owner if pname == "weight" else f"{owner}.{pname}"


def dense_columns(
    info: LayerInfo, weight_shape: Sequence[int] | None, weight_dtype: torch.dtype | None, multiplied: int
) -> tuple[dict, tuple[int, int] | None]:
    """A dense row's shape, dtype, format and FLOP columns, and for a projection its (out_features,
    in_features) (else None). A dense projection multiplies every weight, tied or not (the lm_head does real
    work): `multiplied` of them are non-zero."""
    features = linear_shape(info.module) if info.kind == "linear" else None
    if features is not None:
        shape = f"{features[0]}x{features[1]}"
    else:
        shape = "x".join(str(d) for d in weight_shape) if weight_shape is not None else ""
    columns = {
        "shape": shape,
        "dtype": str(weight_dtype).removeprefix("torch.") if weight_dtype is not None else "",
        "format": "dense",
        "flops_per_token": 2 * math.prod(features) if features else 0,
        "nonzero_flops_per_token": 2 * multiplied if features else 0,
    }
    return columns, features


def group_table(layers: pd.DataFrame) -> pd.DataFrame:
    """Sums per group, with sparsity and share of the model's (unique) parameters."""
    sums = [
        "params",
        "nonzero",
        "weights",
        "weight_nonzero",
        "stored_bytes",
        "weight_bytes",
        "flops_per_token",
        "nonzero_flops_per_token",
    ]
    grouped = layers.groupby("group", sort=False)[sums].sum()
    grouped.insert(0, "modules", layers.groupby("group", sort=False).size())
    grouped = grouped.reindex([g for g in GROUPS if g in grouped.index])
    total = max(int(layers["params"].sum()), 1)
    grouped["sparsity"] = [
        1.0 - nz / p if p else 0.0 for nz, p in zip(grouped["nonzero"], grouped["params"], strict=True)
    ]
    grouped["bits_per_weight"] = [
        8 * b / w if w else math.nan for b, w in zip(grouped["weight_bytes"], grouped["weights"], strict=True)
    ]
    grouped["param_share"] = grouped["params"] / total
    grouped["flops_share"] = grouped["flops_per_token"] / max(int(layers["flops_per_token"].sum()), 1)
    return grouped.reset_index()


def attention_score_flops(model: nn.Module, context_length: int) -> int:
    """FLOPs per token of QKᵀ and AV at `context_length` attended positions, summed over layers (4·L·d)."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
    return 4 * context_length * heads * head_dim * layers


def global_summary(layers: pd.DataFrame, pruned: list[str] | None = None) -> dict:
    """Global figures, each a sum over the layer table."""
    pruned_rows = layers[layers["module"].isin(pruned or [])]
    params = int(layers["params"].sum())
    nonzero = int(layers["nonzero"].sum())
    pruned_weights = int(pruned_rows["weights"].sum())
    weights = int(layers["weights"].sum())
    weight_bytes = int(layers["weight_bytes"].sum())
    labels = sorted({q for q in layers.get("quantization", pd.Series(dtype=str)) if q})
    return {
        "params": params,
        "nonzero": nonzero,
        "sparsity": 1.0 - nonzero / params if params else 0.0,
        "pruned_layers": len(pruned_rows),
        "pruned_layer_weights": pruned_weights,
        "pruned_layer_sparsity": (
            1.0 - int(pruned_rows["weight_nonzero"].sum()) / pruned_weights if pruned_weights else 0.0
        ),
        "stored_bytes": int(layers["stored_bytes"].sum()),
        "weight_bytes": weight_bytes,
        "bits_per_weight": 8 * weight_bytes / weights if weights else math.nan,
        "pruned_layer_bits_per_weight": (
            8 * int(pruned_rows["weight_bytes"].sum()) / pruned_weights if pruned_weights else math.nan
        ),
        "quantization": ",".join(labels) or "none",
        "flops_per_token": int(layers["flops_per_token"].sum()),
        "nonzero_flops_per_token": int(layers["nonzero_flops_per_token"].sum()),
    }


__all__ = ["LAYER_COLUMNS", "attention_score_flops", "global_summary", "group_table", "layer_table"]
