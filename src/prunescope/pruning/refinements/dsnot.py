"""DSnoT (Zhang et al. 2024, "Dynamic Sparse No Training"): training-free refinement of any method's mask.

For an output row i with pruned set P, and mu_j / var_j the mean / variance of input channel j over the
calibration tokens, the expected reconstruction error of the row is

    e_i = sum_{j in P} W_ij * mu_j        (what the pruned weights would have added, on average)

While |e_i| > threshold and cycles remain, each cycle makes one swap in the row:
- regrow the pruned weight j whose contribution W_ij mu_j has the sign of e_i and the largest
  |W_ij mu_j| / var_j (the paper's variance-damped criterion, exponent 1 as in the reference code);
- prune the kept weight k of lowest Wanda importance |W_ik| * ||X_k|| among those for which the swap
  lowers |e_i| (|e_i - W_ij mu_j + W_ik mu_k| < |e_i|): the prune "does not push the error back".
  With an N:M pattern k must lie in j's group of M, so every group keeps exactly N weights.
A row's number of zeros never changes, and |e_i| strictly decreases with every swap. Each weight is swapped
at most once. A regrow candidate without a valid partner is set aside and the next one is tried.

Where the reference code (zyxxmu/DSnoT `prune_DSnoT`) differs, this follows the paper: every pruned
projection is refined (the code's default `--skip_layer mlp` leaves the MLP untouched), and the prune side
checks the swap against |e| itself (the code requires e to keep its initial sign). The statistics are per
token, the paper's expectation: the code's `sum_metric_row` sums over each sample's tokens, which scales e
by the sequence length, so its threshold 0.1 is 0.1 / seqlen here (`--refine-threshold 0.0004` at 256
tokens refines nearly every row, as the code does; the default 0.1 only rows with a large expected error).
Methods that rewrite the kept weights (SparseGPT) are refined as in the reference's `--initial_method
sparsegpt`: their mask is refined on the original weights, without the update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...errors import PrunescopeError
from ...layers import linear_weight
from ..record import LayerChange, apply_mask, restore_layer
from ..registry import register_refinement
from ..spec import PruneSpec

# Rows are refined in chunks: a cycle holds a few (rows, in) float32 temporaries, bounded to ~this many.
_CHUNK_ELEMENTS = 1 << 22
_VAR_FLOOR = 1e-12  # a constant channel has no variance: its regrow score stays finite


@dataclass(frozen=True)
class DSnoTOptions:
    cycles: int = field(default=50, metadata={"help": "DSnoT: at most this many swaps per row."})
    threshold: float = field(
        default=0.1, metadata={"help": "DSnoT: rows with |expected error| at or below this are left alone."}
    )

    def __post_init__(self) -> None:
        if self.cycles < 0 or self.threshold < 0:
            raise PrunescopeError("--refine-cycles and --refine-threshold must be >= 0")


class MomentStats:
    """Per input channel: mean, variance and mean square over all calibration tokens (float64 sums)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.sum = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.reshape(-1, inputs.shape[-1]).to(torch.float64)
        self.sum += x.sum(0)
        self.sum_sq += x.pow(2).sum(0)
        self.tokens += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return (self.sum / max(self.tokens, 1)).to(torch.float32)

    @property
    def variance(self) -> torch.Tensor:
        mean = self.sum / max(self.tokens, 1)
        return (self.sum_sq / max(self.tokens, 1) - mean.pow(2)).clamp_min(0).to(torch.float32)

    @property
    def norm(self) -> torch.Tensor:
        """sqrt(mean of x_j^2): proportional to Wanda's ||X_j||_2 when samples have equal length."""
        return (self.sum_sq / max(self.tokens, 1)).sqrt().to(torch.float32)


def row_errors(weight: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """e_i = sum over the pruned j of row i of W_ij * mu_j (float64)."""
    contribution = weight.to(torch.float64) * mean.to(torch.float64).unsqueeze(0)
    return (contribution * mask).sum(1)


def _refine_rows(
    weight: torch.Tensor, mask: torch.Tensor, stats: MomentStats, spec: PruneSpec
) -> tuple[torch.Tensor, int]:
    """Refined mask of a chunk of rows (same shape), and the number of swaps made."""
    rows, cols = weight.shape
    options: DSnoTOptions = spec.refine_options
    w = weight.to(torch.float32)
    contribution = w * stats.mean.unsqueeze(0)
    regrow_score = contribution / stats.variance.clamp_min(_VAR_FLOOR).unsqueeze(0)
    importance = w.abs() * stats.norm.unsqueeze(0)
    mask = mask.clone()
    error = (contribution.to(torch.float64) * mask).sum(1)
    touched = torch.zeros_like(mask)
    active = error.abs() > options.threshold
    group = torch.arange(cols, device=w.device) // spec.pattern.m if spec.pattern.structured else None
    swaps = 0
    inf = torch.tensor(float("inf"), device=w.device)
    for _ in range(options.cycles):
        # Only the rows still above the threshold are worked on: most rows settle in a few cycles.
        rows_left = active.nonzero().flatten()
        if not rows_left.numel():
            break
        c, m, t, e = contribution[rows_left], mask[rows_left], touched[rows_left], error[rows_left]
        sign = torch.sign(e).to(torch.float32).unsqueeze(1)
        candidates = m & ~t & (sign * c > 0)
        best, j = torch.where(candidates, sign * regrow_score[rows_left], -inf).max(1)
        has_j = torch.isfinite(best)
        # The row's error once j is regrown, in float64; each partner's error after the swap is compared in
        # float32: that (rows x cols) tensor is the work of a cycle, and float64 runs at 1/32 of float32's
        # speed on consumer GPUs. The kept per-row error is updated in float64 below.
        base = e - c.gather(1, j.unsqueeze(1)).squeeze(1).to(torch.float64)
        after = base.to(torch.float32).unsqueeze(1) + c
        partners = ~m & ~t & (after.abs() < e.abs().to(torch.float32).unsqueeze(1)) & has_j.unsqueeze(1)
        if group is not None:
            partners &= group.unsqueeze(0) == (j // spec.pattern.m).unsqueeze(1)
        low, k = torch.where(partners, importance[rows_left], inf).min(1)
        swap = has_j & torch.isfinite(low)
        swapped = rows_left[swap]
        mask[swapped, j[swap]] = False
        mask[swapped, k[swap]] = True
        touched[swapped, k[swap]] = True
        # A regrown weight, or a candidate that found no partner, is not considered again.
        touched[rows_left[has_j], j[has_j]] = True
        e = torch.where(swap, base + c.gather(1, k.unsqueeze(1)).squeeze(1).to(torch.float64), e)
        error[rows_left] = e
        swaps += int(swap.sum())
        active[rows_left] = has_j & (e.abs() > options.threshold)
    return mask, swaps


def refine_mask(
    weight: torch.Tensor, mask: torch.Tensor, stats: MomentStats, spec: PruneSpec
) -> tuple[torch.Tensor, dict]:
    """DSnoT-refined copy of `mask` (True = pruned) of the dense (out, in) `weight`, and a summary."""
    rows, cols = weight.shape
    before = row_errors(weight, mask, stats.mean).abs()
    step = max(1, _CHUNK_ELEMENTS // max(cols, 1))
    refined = torch.empty_like(mask)
    swaps = 0
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        refined[start:stop], count = _refine_rows(weight[start:stop], mask[start:stop], stats, spec)
        swaps += count
    after = row_errors(weight, refined, stats.mean).abs()
    info = {
        "swaps": swaps,
        "rows_above_threshold": int((before > spec.refine_options.threshold).sum()),
        "error_before": float(before.sum()),
        "error_after": float(after.sum()),
    }
    return refined, info


@torch.no_grad()
def refine_layer(
    module: nn.Module, change: LayerChange, stats: MomentStats, spec: PruneSpec
) -> tuple[LayerChange, dict]:
    """Refine the mask `change` applied to `module`: the dense weights come back, the refined mask goes on."""
    mask = change.mask
    restore_layer(module, change)  # the original values: regrown weights need them
    refined, info = refine_mask(linear_weight(module).detach(), mask, stats, spec)
    return apply_mask(module, refined), info


register_refinement(
    "dsnot",
    cite="Zhang et al. 2024, Dynamic Sparse No Training: Training-Free Fine-tuning for Sparse LLMs "
    "(ICLR 2024, arXiv:2310.08915; github.com/zyxxmu/DSnoT)",
    options=DSnoTOptions,
    prefix="refine",
    stats=MomentStats,
    refine=refine_layer,
)
