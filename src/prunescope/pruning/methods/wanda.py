"""Wanda (Sun et al. 2023): prune by |W_ij| * ||X_j||_2, compared within each output row; no weight update.

The activation statistic is, per input channel j, the running mean over calibration samples of the squared
L2 norm of X_j over that sample's tokens (kept in fp32).
"""

from __future__ import annotations

import torch
from torch import nn

from ...layers import linear_weight
from ...util.linalg import RunningSampleMean
from ..record import LayerChange, apply_mask
from ..registry import register_method
from ..selection import n_m_mask, row_smallest_mask
from ..spec import PruneSpec


class WandaStats(RunningSampleMean):
    """Running mean over samples of the squared input-channel norms of one projection."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.sq_norms = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.samples = 0

    def add(self, inputs: torch.Tensor) -> None:
        """`inputs` (batch, ..., in): one sample per batch row, as the projection received them."""
        x = self._next_batch(inputs, self.sq_norms)
        self.sq_norms += x.pow(2).sum(0) / self.samples


def wanda_scores(weight: torch.Tensor, stats: WandaStats) -> torch.Tensor:
    return weight.detach().abs().to(torch.float32) * stats.sq_norms.sqrt().unsqueeze(0)


def wanda_mask(scores: torch.Tensor, spec: PruneSpec) -> torch.Tensor:
    """True = prune: the lowest scores of every row (same count per row), or per N:M group of a row."""
    if spec.pattern.structured:
        return n_m_mask(scores, spec.pattern.n, spec.pattern.m)
    return row_smallest_mask(scores, round(spec.sparsity * scores.shape[1]))


def prune_wanda(module: nn.Module, stats: WandaStats, spec: PruneSpec) -> LayerChange:
    mask = wanda_mask(wanda_scores(linear_weight(module), stats), spec)
    return apply_mask(module, mask)


register_method(
    "wanda",
    cite="Sun et al. 2023, A Simple and Effective Pruning Approach for Large Language Models "
    "(arXiv:2306.11695; github.com/locuslab/wanda)",
    natural_scope="row",
    scopes=("row",),
    stats=WandaStats,
    prune_layer=prune_wanda,
)
