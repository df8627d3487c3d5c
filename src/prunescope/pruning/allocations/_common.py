"""Helpers shared by the closed-form allocations (OWL, DLP, LSA): the spread of block scores, the clip,
the blocks' Wanda scores."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ...layers import linear_weight
from ..methods.wanda import WandaStats, wanda_scores
from .context import Allocation, AllocationContext, allocate_by_block

# A block sparsity is kept inside [0, MAX_BLOCK_SPARSITY]: S +- lambda can leave [0, 1) for S near 0 or 1
# (OWL's reference sets a non-positive ratio to 0.01; clipping is recorded in the allocation).
MAX_BLOCK_SPARSITY = 0.99


def minmax_spread(values: Sequence[float], amplitude: float) -> list[float]:
    """d_l = 2 * amplitude * (v_l - min v) / (max v - min v); all zeros when the values are equal."""
    if not values:
        return []
    low, high = min(values), max(values)
    spread = high - low
    return [(v - low) / spread * 2 * amplitude if spread > 0 else 0.0 for v in values]


def clip_sparsity(value: float) -> float:
    return min(max(value, 0.0), MAX_BLOCK_SPARSITY)


def complement_shares(values: Sequence[float]) -> list[float]:
    """1 - v_l / sum_k v_k per block (all zeros when the sum is 0)."""
    total = sum(values)
    return [1.0 - v / total if total else 0.0 for v in values]


def spread_sparsities(
    values: Sequence[float], amplitude: float, place: Callable[[float, float], float]
) -> list[float]:
    """Block sparsities `place(d_l, mean d)`, clipped, from d = `minmax_spread(values, amplitude)`."""
    if not values:
        return []
    d = minmax_spread(values, amplitude)
    mean_d = sum(d) / len(d)
    return [clip_sparsity(place(di, mean_d)) for di in d]


def mean_score(scores: Sequence[torch.Tensor]) -> float:
    """The mean of all `scores` (a block's projections together, as if concatenated); 0 when empty."""
    total = sum(float(s.to(torch.float64).sum()) for s in scores)
    count = sum(s.numel() for s in scores)
    return total / count if count else 0.0


def allocate_by_wanda(
    context: AllocationContext,
    label: str,
    measure: Callable[[list[torch.Tensor]], float],
    sparsities: Callable[[list[float]], list[float]],
    key: str,
    header: dict,
) -> Allocation:
    """`allocate_by_block` measuring each block from its projections' Wanda scores |W_ij| * ||X_j||."""

    def block_measure(block_layers: dict[str, nn.Module], stats: dict[str, Any]) -> float:
        return measure([wanda_scores(linear_weight(m), stats[name]) for name, m in block_layers.items()])

    return allocate_by_block(context, WandaStats, label, block_measure, sparsities, key, header)
