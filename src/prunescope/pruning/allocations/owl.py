"""OWL (Yin et al. 2024, Outlier Weighed Layerwise sparsity): per-block sparsity from outlier ratios.

OWL scores every weight of a decoder block's pruned projections with Wanda's |W_ij| * sqrt(mean ||X_j||^2),
measured on the *dense* model, and takes the block's outlier ratio

    LOD = 100 * (share of the block's scores above M * mean of the block's scores)

(all its projections' scores together, as if concatenated). Blocks with more outliers keep more weights:

    D_b = (LOD_b - min LOD) / (max LOD - min LOD) * 2 * lambda
    sparsity_b = 1 - (D_b - mean(D) + (1 - S))              (mean S, range S - lambda .. S + lambda)

Inside a block the method then prunes at sparsity_b with its own comparison group. The block scores come
from one dense pass of the calibration samples, in memory or from disk (`AllocationContext`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ...errors import PrunescopeError
from ...layers import linear_weight
from ..methods.wanda import WandaStats, wanda_scores
from ..registry import register_allocation
from .context import Allocation, AllocationContext

# A block sparsity is kept inside [0, MAX_BLOCK_SPARSITY]: S +- lambda can leave [0, 1) for S near 0 or 1
# (the reference sets a non-positive ratio to 0.01; clipping is recorded in the allocation).
MAX_BLOCK_SPARSITY = 0.99


@dataclass(frozen=True)
class OWLOptions:
    m: float = field(default=5.0, metadata={"help": "OWL: a score is an outlier above M x its block's mean."})
    lambda_: float = field(
        default=0.08, metadata={"help": "OWL: block sparsities span S - lambda .. S + lambda."}
    )

    def __post_init__(self) -> None:
        if self.m <= 0 or not 0 <= self.lambda_ < 0.5:
            raise PrunescopeError("--owl-m must be > 0 and --owl-lambda in [0, 0.5)")


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """LOD of one block: 100 * share of all `scores` (the block's projections together) above m * mean."""
    total = sum(float(s.to(torch.float64).sum()) for s in scores)
    count = sum(s.numel() for s in scores)
    if count == 0:
        return 0.0
    threshold = total / count * m
    above = sum(int((s.to(torch.float64) > threshold).sum()) for s in scores)
    return 100.0 * above / count


def owl_sparsities(ratios: Sequence[float], sparsity: float, lam: float) -> list[float]:
    """Block sparsities from the blocks' outlier ratios (see the module docstring); equal ratios -> S."""
    if not ratios:
        return []
    low, high = min(ratios), max(ratios)
    spread = high - low
    d = [(r - low) / spread * 2 * lam if spread > 0 else 0.0 for r in ratios]
    mean_d = sum(d) / len(d)
    return [min(max(1.0 - (di - mean_d + (1.0 - sparsity)), 0.0), MAX_BLOCK_SPARSITY) for di in d]


def allocate_owl(context: AllocationContext) -> Allocation:
    spec = context.spec
    options: OWLOptions = spec.allocation_options
    ratios: dict[int, float] = {}
    for index, block_layers, stats in context.dense_statistics(WandaStats, "OWL outlier ratios"):
        scores = [wanda_scores(linear_weight(module), stats[name]) for name, module in block_layers.items()]
        ratios[index] = outlier_ratio(scores, options.m)
        del scores
    indices = sorted(ratios)
    values = owl_sparsities([ratios[i] for i in indices], spec.sparsity, options.lambda_)
    # What run.json / prune.json keep: per block its outlier ratio and target sparsity (the driver adds
    # the realised one).
    context.record(
        {
            "allocation": spec.allocation,
            "owl_m": options.m,
            "owl_lambda": options.lambda_,
            "target_sparsity": spec.sparsity,
            "blocks": [
                {"block": context.block_name(i), "outlier_ratio": ratios[i], "sparsity": s}
                for i, s in zip(indices, values, strict=True)
            ],
        }
    )
    return Allocation(blocks=dict(zip(indices, values, strict=True)))


register_allocation(
    "owl",
    cite="Yin et al. 2024, Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning "
    "LLMs to High Sparsity (ICML 2024, arXiv:2310.05175; github.com/luuyin/OWL)",
    options=OWLOptions,
    prefix="owl",
    allocate=allocate_owl,
)
