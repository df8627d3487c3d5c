"""RIA (Zhang et al. 2024, "Plug-and-Play"): relative importance times activation, no weight update.

    score_ij = (|W_ij| / sum_i |W_ij| + |W_ij| / sum_j |W_ij|) * (||X_j||_2) ** a,    a = 0.5

The first term is the weight's share of its input channel (column), the second its share of its output row;
||X_j||_2 is Wanda's statistic (`wanda.WandaStats`: running mean over samples of ||X_j||^2, square-rooted).
The lowest scores of each matrix are pruned (scope `layer`, the reference's default), or of each row with
scope `row` (the reference's `--per_outneuron`), or per N:M group. Calibration and the sequential block
pass are the shared driver's (`driver.py`).

Channel permutation (the reference's `--reallocation` for N:M) is not implemented: its mask is N:M only in
a permuted input order, which a saved model does not follow unless the producer's rows are permuted too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...errors import PrunescopeError
from ...layers import linear_weight
from ..record import LayerChange, apply_mask
from ..registry import register_method
from ..scoring import mask_from_scores
from ..spec import PruneSpec
from .wanda import WandaStats


@dataclass(frozen=True)
class RIAOptions:
    alpha: float = field(default=0.5, metadata={"help": "RIA: exponent of the input-channel norm ||X_j||."})

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise PrunescopeError(f"--ria-alpha must be >= 0, got {self.alpha}")


def ria_scores(weight: torch.Tensor, stats: WandaStats, alpha: float) -> torch.Tensor:
    w = weight.detach().abs().to(torch.float32)
    # An all-zero column or row has relative importance 0 there (not NaN).
    column_sums = w.sum(0, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    row_sums = w.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    relative = w / column_sums + w / row_sums
    return relative * stats.sq_norms.sqrt().pow(alpha).unsqueeze(0)


def ria_mask(scores: torch.Tensor, spec: PruneSpec) -> torch.Tensor:
    """True = prune: lowest scores of the matrix (scope layer), of each row (scope row), or per N:M group."""
    return mask_from_scores(scores, spec)


def prune_ria(module: nn.Module, stats: WandaStats, spec: PruneSpec) -> LayerChange:
    mask = ria_mask(ria_scores(linear_weight(module), stats, spec.method_options.alpha), spec)
    return apply_mask(module, mask)


register_method(
    "ria",
    cite="Zhang et al. 2024, Plug-and-Play: An Efficient Post-training Pruning Method for Large Language "
    "Models (ICLR 2024; github.com/biomedical-cybernetics/Relative-importance-and-activation-pruning)",
    options=RIAOptions,
    prefix="ria",
    natural_scope="layer",
    scopes=("layer", "row"),
    stats=WandaStats,
    prune_layer=prune_ria,
)
