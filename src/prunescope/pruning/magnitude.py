"""Score-based pruning without calibration: magnitude |W| and the random baseline.

A mask is chosen by the spec's scope (global / layer / row) or N:M pattern from per-weight scores, where a
lower score means "prune first".
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import linear_weight
from ..util.heap import trim_heap
from .record import LayerChange, apply_mask
from .selection import global_smallest_masks, n_m_mask, row_smallest_mask, smallest_mask
from .spec import PruneSpec


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().to(torch.float32)


def random_scores(weight: torch.Tensor, seed: int, index: int) -> torch.Tensor:
    # One generator per layer, seeded from (seed, layer index): scores are recomputed identically on every
    # pass of the streaming global selection, and do not depend on which other layers are pruned.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.rand(weight.shape, generator=generator).to(weight.device)


def mask_from_scores(scores: torch.Tensor, spec: PruneSpec) -> torch.Tensor:
    """Mask (True = prune) of one (out, in) score matrix for the spec's layer/row scope or N:M pattern."""
    if spec.pattern.structured:
        if scores.shape[1] % spec.pattern.m:
            raise ValueError(f"in_features {scores.shape[1]} is not divisible by M={spec.pattern.m}")
        return n_m_mask(scores, spec.pattern.n, spec.pattern.m)
    if spec.effective_scope == "row":
        return row_smallest_mask(scores, round(spec.sparsity * scores.shape[1]))
    return smallest_mask(scores, round(spec.sparsity * scores.numel()))


def prune_by_score(layers: dict[str, nn.Module], spec: PruneSpec) -> dict[str, LayerChange]:
    names = list(layers)

    def scores(i: int) -> torch.Tensor:
        weight = linear_weight(layers[names[i]])
        if spec.method == "random":
            return random_scores(weight, spec.seed, i)
        return magnitude_scores(weight)

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
