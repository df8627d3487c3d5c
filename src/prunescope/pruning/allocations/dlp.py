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

from ...errors import PrunescopeError
from ..registry import register_allocation
from ._common import allocate_by_wanda, complement_shares, mean_score, spread_sparsities
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


block_importance = mean_score  # S_l: the mean of the block's scores, all projections together


def dlp_sparsities(importance: list[float], sparsity: float, alpha: float) -> list[float]:
    """Block sparsities from the blocks' importances S_l (module docstring)."""
    return spread_sparsities(complement_shares(importance), alpha, lambda di, mean_d: sparsity - di + mean_d)


def allocate_dlp(context: AllocationContext) -> Allocation:
    spec = context.spec
    options: DLPOptions = spec.allocation_options
    return allocate_by_wanda(
        context,
        "DLP block importance",
        block_importance,
        lambda importance: dlp_sparsities(importance, spec.sparsity, options.alpha),
        "importance",
        {
            "allocation": "dlp",
            "dlp_alpha": options.alpha,
            "target_sparsity": spec.sparsity,
            "measure": "importance",
            "measure_label": "mean |W| x ||X|| (dense)",
        },
    )


register_allocation(
    "dlp",
    cite="Chen et al. 2025, DLP: Dynamic Layerwise Pruning in Large Language Models (ICML 2025, "
    "arXiv:2505.23807; github.com/ironartisan/DLP)",
    options=DLPOptions,
    prefix="dlp",
    allocate=allocate_dlp,
)
