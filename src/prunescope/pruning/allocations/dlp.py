"""DLP (Chen et al., ICML 2025, Dynamic Layerwise Pruning; ironartisan/DLP `lib/prune.py`): per-block
sparsity from the blocks' mean Wanda importance on the dense model.

For block l, with its pruned projections' scores |W_ij| * ||X_j||_2 (Wanda's, dense activations):

    S_l = mean of all the block's scores (its projections together, as the reference concatenates them;
          the paper says median, the code takes the mean)
    r_l = 1 - S_l / sum_k S_k
    d_l = 2 * alpha * (r_l - min r) / (max r - min r)
    sparsity_l = s - d_l + mean(d)                          (mean s, range s - alpha .. s + alpha)

so the more important a block (larger S_l, smaller r_l) the higher its sparsity, exactly as the reference
computes it. Block sparsities are clipped to [0, 0.99] as OWL's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import PrunescopeError
from ...layers import linear_weight
from ..methods.wanda import WandaStats, wanda_scores
from ..registry import register_allocation
from ._common import clip_sparsity, minmax_spread
from .context import Allocation, AllocationContext


@dataclass(frozen=True)
class DLPOptions:
    alpha: float = field(
        default=0.15,
        metadata={
            "help": "DLP: block sparsities span S - alpha .. S + alpha (the reference's 0.15 at 70 %)."
        },
    )

    def __post_init__(self) -> None:
        if not 0 <= self.alpha < 0.5:
            raise PrunescopeError("--dlp-alpha must be in [0, 0.5)")


def block_importance(scores: list[torch.Tensor]) -> float:
    """S_l: the mean of the block's scores, all projections together."""
    total = sum(float(s.to(torch.float64).sum()) for s in scores)
    count = sum(s.numel() for s in scores)
    return total / count if count else 0.0


def dlp_sparsities(importance: list[float], sparsity: float, alpha: float) -> list[float]:
    """Block sparsities from the blocks' importances S_l (module docstring)."""
    if not importance:
        return []
    total = sum(importance)
    ratios = [1.0 - s / total if total else 0.0 for s in importance]
    d = minmax_spread(ratios, alpha)
    mean_d = sum(d) / len(d)
    return [clip_sparsity(sparsity - di + mean_d) for di in d]


def allocate_dlp(context: AllocationContext) -> Allocation:
    spec = context.spec
    options: DLPOptions = spec.allocation_options
    importance: dict[int, float] = {}
    for index, block_layers, stats in context.dense_statistics(WandaStats, "DLP block importance"):
        scores = [wanda_scores(linear_weight(module), stats[name]) for name, module in block_layers.items()]
        importance[index] = block_importance(scores)
        del scores
    indices = sorted(importance)
    values = dlp_sparsities([importance[i] for i in indices], spec.sparsity, options.alpha)
    context.record(
        {
            "allocation": "dlp",
            "dlp_alpha": options.alpha,
            "target_sparsity": spec.sparsity,
            "measure": "importance",
            "measure_label": "mean |W| x ||X|| (dense)",
            "blocks": [
                {"block": context.block_name(i), "importance": importance[i], "sparsity": s}
                for i, s in zip(indices, values, strict=True)
            ],
        }
    )
    return Allocation(blocks=dict(zip(indices, values, strict=True)))


register_allocation(
    "dlp",
    cite="Chen et al. 2025, DLP: Dynamic Layerwise Pruning in Large Language Models (ICML 2025, "
    "arXiv:2505.23807; github.com/ironartisan/DLP)",
    options=DLPOptions,
    prefix="dlp",
    allocate=allocate_dlp,
)
