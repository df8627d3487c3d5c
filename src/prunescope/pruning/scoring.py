"""Masks from per-weight scores (lower = pruned first), for the methods without calibration (magnitude,
random, any `score` plug-in) and for RIA's per-matrix ranking.

The comparison group is the spec's scope (global / layer / row) or its N:M pattern. `global` over many
layers runs the streaming radix select of `selection.py`, so no concatenated copy of the scores is made.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..layers import linear_weight
from ..util.heap import trim_heap
from .record import LayerChange, apply_mask, pack_mask, unpack_mask
from .selection import global_smallest_masks, n_m_mask, row_smallest_mask, smallest_mask
from .spec import PruneSpec


def mask_from_scores(scores: torch.Tensor, spec: PruneSpec) -> torch.Tensor:
    """Mask (True = prune) of one (out, in) score matrix for the spec's layer/row scope or N:M pattern."""
    if spec.pattern.structured:
        if scores.shape[1] % spec.pattern.m:
            raise ValueError(f"in_features {scores.shape[1]} is not divisible by M={spec.pattern.m}")
        return n_m_mask(scores, spec.pattern.n, spec.pattern.m)
    if spec.effective_scope == "row":
        return row_smallest_mask(scores, round(spec.sparsity * scores.shape[1]))
    return smallest_mask(scores, round(spec.sparsity * scores.numel()))


def _scorer(layers: dict[str, nn.Module], spec: PruneSpec, index_of: dict[str, int] | None):
    """scores(i) of the i-th of `layers`; the layer index the method sees is its position among all pruned
    layers (`index_of`), so random scores do not depend on how the layers are grouped."""
    names = list(layers)
    score = spec.method_plugin.score

    def scores(i: int) -> torch.Tensor:
        return score(linear_weight(layers[names[i]]), spec, (index_of or {}).get(names[i], i))

    return scores


def prune_by_score(layers: dict[str, nn.Module], spec: PruneSpec) -> dict[str, LayerChange]:
    """Prune `layers` in place by their scores, all at once (no calibration pass)."""
    names = list(layers)
    scores = _scorer(layers, spec, None)
    changes: dict[str, LayerChange] = {}
    if spec.effective_scope == "global" and not spec.pattern.structured:
        total = sum(linear_weight(m).numel() for m in layers.values())
        masks = global_smallest_masks(scores, len(names), round(spec.sparsity * total))
        # The threshold is fixed before any zeroing and mask i reads only layer i, so each layer can be
        # zeroed as soon as its mask is known: one layer's mask in memory at a time.
        for i, name in enumerate(names):
            changes[name] = apply_mask(layers[name], masks(i))
            trim_heap()  # layer-sized temporaries of many shapes fragment the heap: hand them back each time
        return changes
    for i, name in enumerate(names):
        changes[name] = apply_mask(layers[name], mask_from_scores(scores(i), spec))
    return changes


def block_score_masks(
    block_layers: dict[str, nn.Module],
    spec: PruneSpec,
    index_of: dict[str, int] | None = None,
    fixed_masks: dict[str, torch.Tensor] | None = None,
    layer_sparsity: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks of a scored method inside the block-by-block pass (when an allocation or a refinement needs
    that pass).

    `fixed_masks` (packed) are the whole model's global selection made before the pass; otherwise the
    comparison group is the layer, the row or N:M, and `global` means all of this block's layers together.
    With per-matrix targets (`layer_sparsity`, from an allocation) each matrix is its own group.
    """
    names = list(block_layers)
    if fixed_masks is not None:
        return {
            name: unpack_mask(fixed_masks[name], linear_weight(block_layers[name]).shape) for name in names
        }
    scores = _scorer(block_layers, spec, index_of)
    targets = {name: layer_sparsity[name] for name in names if name in (layer_sparsity or {})}
    if targets:
        specs = {name: dataclasses.replace(spec, sparsity=targets.get(name, spec.sparsity)) for name in names}
        return {name: mask_from_scores(scores(i), specs[name]) for i, name in enumerate(names)}
    if spec.effective_scope == "global" and not spec.pattern.structured:
        total = sum(linear_weight(m).numel() for m in block_layers.values())
        masks = global_smallest_masks(scores, len(names), round(spec.sparsity * total))
        return {name: masks(i) for i, name in enumerate(names)}
    return {name: mask_from_scores(scores(i), spec) for i, name in enumerate(names)}


def global_score_masks(layers: dict[str, nn.Module], spec: PruneSpec) -> dict[str, torch.Tensor]:
    """Packed masks of a scored method with the global scope over all `layers` (dense weights)."""
    return {name: pack_mask(mask) for name, mask in block_score_masks(layers, spec).items()}
