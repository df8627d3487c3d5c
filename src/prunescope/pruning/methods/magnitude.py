"""Magnitude pruning: the weights of smallest |W| go first; no calibration, any scope or N:M pattern."""

from __future__ import annotations

import torch

from ..registry import register_method


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().to(torch.float32)


def _score(weight: torch.Tensor, spec, index: int) -> torch.Tensor:
    return magnitude_scores(weight)


register_method(
    "magnitude",
    cite="Han et al. 2015, Learning both Weights and Connections for Efficient Neural Networks "
    "(arXiv:1506.02626)",
    natural_scope="global",
    score=_score,
)
