"""OWL (Yin et al. 2024, Outlier Weighed Layerwise sparsity): per-block sparsity from outlier ratios.

OWL scores every weight of a decoder block's pruned projections with Wanda's |W_ij| * sqrt(mean ||X_j||^2),
measured on the *dense* model, and takes the block's outlier ratio

    LOD = 100 * (share of the block's scores above M * mean of the block's scores)

(all its projections' scores together, as if concatenated). Blocks with more outliers keep more weights:

    D_b = (LOD_b - min LOD) / (max LOD - min LOD) * 2 * lambda
    sparsity_b = 1 - (D_b - mean(D) + (1 - S)) = S + mean(D) - D_b

D_b lies in [0, 2 lambda], so the block sparsities have mean S and span exactly 2 lambda (the block with the
most outliers S + mean(D) - 2 lambda, the one with the fewest S + mean(D)). The span is not centred on S:
mean(D) is anywhere in [0, 2 lambda], so a block lies in [S - 2 lambda, S + 2 lambda] (e.g. S = 0.6,
lambda = 0.08, one block with few outliers and three with many: 0.72). Clipped to [0, 0.99] (`_common`).

Inside a block the method then prunes at sparsity_b with its own comparison group. The block scores come
from one dense pass of the calibration samples, in memory or from disk (`AllocationContext`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ...errors import PrunescopeError
from ..registry import register_allocation
from ._common import allocate_by_wanda, mean_score, spread_sparsities
from .context import Allocation, AllocationContext


@dataclass(frozen=True)
class OWLOptions:
    m: float = field(default=5.0, metadata={"help": "OWL: a score is an outlier above M x its block's mean."})
    lambda_: float = field(
        default=0.08,
        metadata={
            "help": "OWL: block sparsities span 2 x lambda with mean S, not centred: each block lies in "
            "S - 2 x lambda .. S + 2 x lambda."
        },
    )

    def __post_init__(self) -> None:
        if self.m <= 0 or not 0 <= self.lambda_ < 0.5:
            raise PrunescopeError("--owl-m must be > 0 and --owl-lambda in [0, 0.5)")


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """LOD of one block: 100 * share of all `scores` (the block's projections together) above m * mean."""
    count = sum(s.numel() for s in scores)
    if count == 0:
        return 0.0
    threshold = mean_score(scores) * m
    above = sum(int((s.to(torch.float64) > threshold).sum()) for s in scores)
    return 100.0 * above / count


def owl_sparsities(ratios: Sequence[float], sparsity: float, lam: float) -> list[float]:
    """Block sparsities from the blocks' outlier ratios (see the module docstring); equal ratios -> S."""
    return spread_sparsities(ratios, lam, lambda di, mean_d: 1.0 - (di - mean_d + (1.0 - sparsity)))


def allocate_owl(context: AllocationContext) -> Allocation:
    spec = context.spec
    options: OWLOptions = spec.allocation_options
    # What run.json / prune.json keep: per block its outlier ratio and target sparsity.
    return allocate_by_wanda(
        context,
        "OWL outlier ratios",
        lambda scores: outlier_ratio(scores, options.m),
        lambda ratios: owl_sparsities(ratios, spec.sparsity, options.lambda_),
        "outlier_ratio",
        {
            "allocation": spec.allocation,
            "owl_m": options.m,
            "owl_lambda": options.lambda_,
            "target_sparsity": spec.sparsity,
        },
    )


register_allocation(
    "owl",
    cite="Yin et al. 2024, Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning "
    "LLMs to High Sparsity (ICML 2024, arXiv:2310.05175; github.com/luuyin/OWL)",
    options=OWLOptions,
    prefix="owl",
    allocate=allocate_owl,
)
