"""The random baseline: uniformly random scores, so any method has to beat chance at the same sparsity."""

from __future__ import annotations

import torch

from ..registry import register_method


def random_scores(weight: torch.Tensor, seed: int, index: int) -> torch.Tensor:
    # One generator per layer, seeded from (seed, layer index): scores are recomputed identically on every
    # pass of the streaming global selection, and do not depend on which other layers are pruned. Drawn on
    # the CPU and copied: a seed gives the same mask on every device (a CUDA generator draws other numbers).
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.rand(weight.shape, generator=generator).to(weight.device)


def _score(weight: torch.Tensor, spec, index: int) -> torch.Tensor:
    return random_scores(weight, spec.seed, index)


register_method(
    "random",
    cite="",  # a baseline, no paper
    natural_scope="global",
    score=_score,
    weight_free=True,
)
