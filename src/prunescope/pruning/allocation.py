"""Per-block sparsity: `uniform` (every block at S) or `owl` (Yin et al. 2024, Outlier Weighed Layerwise).

OWL scores every weight of a decoder block's pruned projections with Wanda's |W_ij| * sqrt(mean ||X_j||^2),
measured on the *dense* model, and takes the block's outlier ratio

    LOD = 100 * (share of the block's scores above M * mean of the block's scores)

(all its projections' scores together, as if concatenated). Blocks with more outliers keep more weights:

    D_b = (LOD_b - min LOD) / (max LOD - min LOD) * 2 * lambda
    sparsity_b = 1 - (D_b - mean(D) + (1 - S))              (mean S, range S - lambda .. S + lambda)

Inside a block the method then prunes at sparsity_b with its own comparison group. The block scores come
from one dense pass of the calibration samples (`calibrated.dense_outlier_ratios`); this module holds the
arithmetic only, so the sequential engine and the from-disk path share it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# A block sparsity is kept inside [0, MAX_BLOCK_SPARSITY]: S +- lambda can leave [0, 1) for S near 0 or 1
# (the reference sets a non-positive ratio to 0.01; clipping is recorded in the allocation).
MAX_BLOCK_SPARSITY = 0.99


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


def allocation_record(
    block_names: Sequence[str], ratios: Sequence[float], sparsities: Sequence[float], spec
) -> dict:
    """What run.json / prune.json keep of an allocation: per block its outlier ratio and target sparsity."""
    return {
        "allocation": spec.allocation,
        "owl_m": spec.owl_m,
        "owl_lambda": spec.owl_lambda,
        "target_sparsity": spec.sparsity,
        "blocks": [
            {"block": name, "outlier_ratio": ratio, "sparsity": s}
            for name, ratio, s in zip(block_names, ratios, sparsities, strict=True)
        ],
    }
