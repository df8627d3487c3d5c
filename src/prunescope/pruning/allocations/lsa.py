"""LSA (Yang et al., ICLR 2026; BeiYazi0/LSA `layersp/blk.py`): per-block sparsity from the reconstruction
error of a greedy 50 % pruning of each matrix, on the dense model.

For each pruned matrix W (out, in) with H = (2/n) X^T X (its dense inputs, SparseGPT's statistic):
per row k, columns are removed greedily in groups of 128, half of each group: start from
eps_kj = W_kj^2 * H_jj, remove the column of the group with the smallest eps_k (its eps is added to the
error), then eps_k += 2 * W_ki * (W_k (*) H_i,:) for the removed column i (over the whole row, so the sum is
the exact error w_R H w_R^T of the removed set R = ||W X^T - (M (*) W) X^T||^2 * 2/n). Then

    E_l = mean over the block's matrices of their error
    I_l = 1 - E_l / sum_k E_k
    d_l = 2 * beta * (I_l - min I) / (max I - min I)
    sparsity_l = p + mean(d) - d_l                 (higher error -> smaller I -> higher sparsity)

beta: the reference's 0.04 / 0.10 / 0.15 at 50 / 60 / 70 % (`--lsa-beta -1`, the default, interpolates
linearly between those targets and keeps the nearest end outside 50..70 %). Clipped to [0, 0.99].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import PrunescopeError
from ...layers import linear_weight
from ..methods.sparsegpt import HessianStats
from ..registry import register_allocation
from ._common import complement_shares, spread_sparsities
from .context import Allocation, AllocationContext, allocate_by_block

BETA_BY_TARGET = ((0.5, 0.04), (0.6, 0.10), (0.7, 0.15))  # the reference's table
GROUP = 128  # columns per greedy group
SHARE = 0.5  # of each group's columns removed per row


@dataclass(frozen=True)
class LSAOptions:
    beta: float = field(
        default=-1.0,
        metadata={
            "help": "LSA: block sparsities span p - beta .. p + beta; -1 = by target as the reference "
            "(0.04 / 0.10 / 0.15 at 50 / 60 / 70 %, linear in between, nearest end outside)."
        },
    )

    def __post_init__(self) -> None:
        if self.beta != -1.0 and not 0 <= self.beta < 0.5:
            raise PrunescopeError("--lsa-beta must be -1 (by target) or in [0, 0.5)")


def default_beta(sparsity: float) -> float:
    """The reference's beta for a target sparsity: linear between 50/60/70 %, constant outside."""
    xs, ys = zip(*BETA_BY_TARGET, strict=True)
    return float(np.interp(sparsity, xs, ys))


@torch.no_grad()
def greedy_error(
    weight: torch.Tensor, hessian: torch.Tensor, group: int = GROUP, share: float = SHARE
) -> float:
    """The accumulated error of LSA's greedy removal of `share` of each `group` columns per row (float64)."""
    w = weight.detach().to(torch.float64)
    h = hessian.detach().to(torch.float64)
    rows, cols = w.shape
    eps = w.pow(2) * torch.diag(h).unsqueeze(0)
    removed = torch.zeros_like(w, dtype=torch.bool)
    arange = torch.arange(rows)
    error = 0.0
    for c0 in range(0, cols, group):
        c1 = min(c0 + group, cols)
        for _ in range(int((c1 - c0) * share)):
            candidates = eps[:, c0:c1].masked_fill(removed[:, c0:c1], float("inf"))
            picked = candidates.argmin(1) + c0
            error += float(eps[arange, picked].sum())
            removed[arange, picked] = True
            # Removing column i of row k raises every other eps_kj by 2 W_ki W_kj H_ij; earlier groups are
            # done, so only columns from c0 on need it.
            eps[:, c0:] += 2 * w[arange, picked].unsqueeze(1) * w[:, c0:] * h[picked, c0:]
    return error


def lsa_sparsities(errors: list[float], sparsity: float, beta: float) -> list[float]:
    """Block sparsities from the blocks' errors E_l (module docstring)."""
    return spread_sparsities(complement_shares(errors), beta, lambda di, mean_d: sparsity + mean_d - di)


def block_error(block_layers: dict, stats: dict) -> float:
    """E_l: the mean of the block's matrices' greedy errors."""
    values = [greedy_error(linear_weight(m), stats[name].hessian) for name, m in block_layers.items()]
    return sum(values) / len(values)


def allocate_lsa(context: AllocationContext) -> Allocation:
    spec = context.spec
    options: LSAOptions = spec.allocation_options
    beta = default_beta(spec.sparsity) if options.beta == -1.0 else options.beta
    return allocate_by_block(
        context,
        HessianStats,
        "LSA reconstruction errors",
        block_error,
        lambda errors: lsa_sparsities(errors, spec.sparsity, beta),
        "error",
        {
            "allocation": "lsa",
            "lsa_beta": beta,
            "lsa_beta_option": options.beta,
            "target_sparsity": spec.sparsity,
            "measure": "error",
            "measure_label": "greedy 50 % reconstruction error (dense)",
        },
    )


register_allocation(
    "lsa",
    cite="Yang et al. 2026, LSA: layer-wise sparsity allocation from reconstruction error (ICLR 2026; "
    "github.com/BeiYazi0/LSA)",
    options=LSAOptions,
    prefix="lsa",
    allocate=allocate_lsa,
)
