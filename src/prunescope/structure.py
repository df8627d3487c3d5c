"""Where parameters, zeros, bytes and FLOPs live: per-layer, per-group and global tables.

Conventions (docs/metrics.md): a tied parameter is counted once, on its first owner (the others show
`tied_to`); an embedding lookup costs no FLOPs; a projection executes 2·in·out FLOPs per token with a dense
kernel and 2·nnz with a sparse one (a format may declare otherwise); norms and other small modules are not
counted in FLOPs; attention-score FLOPs (QKᵀ and AV) depend on the context and are reported on their own.
Global figures are sums of the layer table, so they always add up.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from .formats.base import SparseLinear
from .layers import GROUPS, linear_shape, parameter_modules

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
    "flops_per_token",
    "nonzero_flops_per_token",
    "tied_to",
]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def layer_table(model: nn.Module) -> pd.DataFrame:
    """One row per module that owns parameters (or a sparse weight), in model order."""
    owners: dict[int, str] = {}
    rows = []
    for info in parameter_modules(model):
        module = info.module
        row = {"module": info.name, "group": info.group, "type": type(module).__name__, "tied_to": ""}
        if isinstance(module, SparseLinear):
            out_features, in_features = module.out_features, module.in_features
            bias = module.bias
            weights, weight_nonzero = out_features * in_features, module.nnz
            bias_nz = int(torch.count_nonzero(bias)) if bias is not None else 0
            bias_n = bias.numel() if bias is not None else 0
            row.update(
                shape=f"{out_features}x{in_features}",
                dtype=str(module.dtype).removeprefix("torch."),
                format=module.format_name,
                params=weights + bias_n,
                nonzero=weight_nonzero + bias_nz,
                weights=weights,
                weight_nonzero=weight_nonzero,
                stored_bytes=module.stored_bytes(),
                flops_per_token=module.flops_per_token(),
                nonzero_flops_per_token=2 * weight_nonzero,
            )
        else:
            params = nz = nbytes = 0
            weight = getattr(module, "weight", None)
            for pname, param in module.named_parameters(recurse=False):
                owner = owners.setdefault(id(param), info.name)
                if owner != info.name:
                    row["tied_to"] = f"{owner}.{pname}" if pname != "weight" else owner
                    continue
                params += param.numel()
                nz += int(torch.count_nonzero(param))
                nbytes += _nbytes(param)
            has_weight = isinstance(weight, torch.Tensor)
            weight_nz = int(torch.count_nonzero(weight)) if has_weight else 0
            # A tied weight belongs to its first owner; this row still does the arithmetic with it.
            own_weight = has_weight and not row["tied_to"]
            is_projection = info.kind == "linear"
            if is_projection:
                out_features, in_features = linear_shape(module)
                shape = f"{out_features}x{in_features}"
            else:
                shape = "x".join(str(d) for d in weight.shape) if has_weight else ""
            row.update(
                shape=shape,
                dtype=str(weight.dtype).removeprefix("torch.") if has_weight else "",
                format="dense",
                params=params,
                nonzero=nz,
                weights=weight.numel() if own_weight else 0,
                weight_nonzero=weight_nz if own_weight else 0,
                stored_bytes=nbytes,
                # A dense projection multiplies every weight, tied or not (the lm_head does real work).
                flops_per_token=2 * out_features * in_features if is_projection else 0,
                nonzero_flops_per_token=2 * weight_nz if is_projection else 0,
            )
        row["sparsity"] = 1.0 - row["nonzero"] / row["params"] if row["params"] else 0.0
        rows.append(row)
    return pd.DataFrame(rows, columns=LAYER_COLUMNS)


def group_table(layers: pd.DataFrame) -> pd.DataFrame:
    """Sums per group, with sparsity and share of the model's (unique) parameters."""
    sums = [
        "params",
        "nonzero",
        "weights",
        "weight_nonzero",
        "stored_bytes",
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
        "flops_per_token": int(layers["flops_per_token"].sum()),
        "nonzero_flops_per_token": int(layers["nonzero_flops_per_token"].sum()),
    }


__all__ = ["LAYER_COLUMNS", "attention_score_flops", "global_summary", "group_table", "layer_table"]
