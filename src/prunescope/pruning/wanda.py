"""Wanda (Sun et al. 2023): prune by |W_ij| * ||X_j||_2, compared within each output row; no weight update.

The activation statistic is, per input channel j, the running mean over calibration samples of the squared
L2 norm of X_j over that sample's tokens (kept in fp32).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import linear_weight
from .record import LayerChange, apply_mask
from .selection import n_m_mask, row_smallest_mask
from .spec import PruneSpec


class WandaStats:
    """Running mean over samples of the squared input-channel norms of one projection."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.sq_norms = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.samples = 0

    def add(self, inputs: torch.Tensor) -> None:
        """`inputs` (batch, ..., in): one sample per batch row, as the projection received them."""
        batch = inputs.shape[0] if inputs.dim() > 2 else 1
        x = inputs.reshape(-1, inputs.shape[-1]).to(torch.float32)
        self.sq_norms *= self.samples / (self.samples + batch)
        self.samples += batch
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
