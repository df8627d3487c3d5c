"""SparseGPT (Frantar & Alistarh 2023): blocked Optimal Brain Surgeon pruning with weight reconstruction.

For a projection W (out, in) with layer inputs X, the layer Hessian of ||WX - ŴX||² is H = 2 X Xᵀ (running
mean over samples, fp32). Columns are processed left to right in blocks of `blocksize`: the mask of a block is
chosen from the OBS saliency w² / [H⁻¹]_jj² of the already-updated weights (over the whole block when
unstructured, per row and group of M columns for N:M), then each column is quantized to its mask and the
error it leaves is spread over the not-yet-processed columns through the upper Cholesky factor of H⁻¹.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import PrunescopeError
from ..layers import linear_weight
from .record import LayerChange, record_update
from .selection import n_m_mask, smallest_mask
from .spec import PruneSpec

# If H + damp·I is still not positive definite (numerically), retry with this many times more dampening.
_DAMP_RETRY_FACTOR = 10.0
_DAMP_RETRIES = 4


class HessianStats:
    """Running H = (2 / samples) · Σ X Xᵀ of one projection's inputs."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.samples = 0

    def add(self, inputs: torch.Tensor) -> None:
        """`inputs` (batch, ..., in): one sample per batch row, as the projection received them."""
        batch = inputs.shape[0] if inputs.dim() > 2 else 1
        x = inputs.reshape(-1, inputs.shape[-1]).to(torch.float32)
        self.hessian *= self.samples / (self.samples + batch)
        self.samples += batch
        x = x * (2.0 / self.samples) ** 0.5
        self.hessian.addmm_(x.T, x)


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = damp · mean(diag H), retrying with more dampening."""
    lam = damp * torch.mean(torch.diag(hessian))
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for attempt in range(_DAMP_RETRIES + 1):
        try:
            lower = torch.linalg.cholesky(hessian + lam * eye)
            inverse = torch.cholesky_inverse(lower)
            return torch.linalg.cholesky(inverse, upper=True)
        except torch.linalg.LinAlgError:
            if attempt == _DAMP_RETRIES:
                break
            lam = lam * _DAMP_RETRY_FACTOR if lam > 0 else torch.tensor(1e-6, device=hessian.device)
            warnings.warn(
                f"SparseGPT: Hessian not positive definite; retrying with dampening {float(lam):.3g}",
                RuntimeWarning,
                stacklevel=2,
            )
    raise PrunescopeError("SparseGPT: the layer Hessian stays singular even with strong dampening")


def _block_mask(scores: torch.Tensor, spec: PruneSpec) -> torch.Tensor:
    # Exactly round(p · rows · cols) weights of the block: the reference's `<= sorted[k]` can take one more.
    return smallest_mask(scores, round(spec.sparsity * scores.numel()))


def sparsegpt_solve(
    weight: torch.Tensor, hessian: torch.Tensor, spec: PruneSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pruned and reconstructed copy of `weight` (out, in), fp32, and its mask (True = pruned)."""
    w = weight.detach().to(torch.float32).clone()
    h = hessian.clone()
    rows, cols = w.shape
    # Inputs that were always zero carry no information: their weights go, and H_jj = 1 keeps H invertible.
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    hinv = inverse_hessian_factor(h, spec.damp)

    n, m = (spec.pattern.n, spec.pattern.m) if spec.pattern.structured else (0, 0)
    blocksize = spec.blocksize
    if m and blocksize % m:
        blocksize += m - blocksize % m  # an N:M group must not straddle two blocks
    mask = torch.zeros_like(w, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diag(hinv1)
        errors = torch.zeros_like(w1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if not m:
            mask1 = _block_mask(w1.pow(2) / d.pow(2).unsqueeze(0), spec)
        for i in range(i2 - i1):
            if m and i % m == 0:
                group = slice(i, i + m)
                mask1[:, group] = n_m_mask(w1[:, group].pow(2) / d[group].pow(2).unsqueeze(0), n, m)
            column = w1[:, i]
            kept = column.masked_fill(mask1[:, i], 0.0)
            err = (column - kept) / d[i]
            # OBS update of this block's remaining columns (column i itself is final: `kept`).
            w1[:, i:] -= err.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            w1[:, i] = kept
            errors[:, i] = err
        w[:, i1:i2] = w1
        mask[:, i1:i2] = mask1
        # Lazy batch update of all columns right of the block, once per block.
        w[:, i2:] -= errors @ hinv[i1:i2, i2:]
    return w, mask


def prune_sparsegpt(module: nn.Module, stats: HessianStats, spec: PruneSpec) -> LayerChange:
    weight = linear_weight(module)
    original = weight.detach().clone()
    pruned, mask = sparsegpt_solve(weight, stats.hessian, spec)
    with torch.no_grad():
        weight.copy_(pruned.to(weight.dtype))
        weight.masked_fill_(mask, 0)  # exact zeros even after a cast to half precision
    return record_update(module, original, mask)
