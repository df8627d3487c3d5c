"""Layer-Hessian helpers shared by SparseGPT (pruning) and GPTQ (quantization), and the running mean over
calibration samples that every per-projection input statistic keeps."""

from __future__ import annotations

import warnings

import torch

from ..errors import PrunescopeError

# If H + damp·I is still not positive definite (numerically), retry with this many times more dampening.
_DAMP_RETRY_FACTOR = 10.0
_DAMP_RETRIES = 4


class RunningSampleMean:
    """Base of a running mean over samples of one projection's inputs: `add` rescales the running tensor
    to the new sample count and hands the subclass the inputs as fp32 rows to add their share."""

    samples = 0

    def _next_batch(self, inputs: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
        """`inputs` (batch, ..., in): one sample per batch row (a 2-D input is one sample). Scales `running`
        by old / new sample count, counts the samples and returns the inputs as (tokens, in) fp32."""
        batch = inputs.shape[0] if inputs.dim() > 2 else 1
        x = inputs.reshape(-1, inputs.shape[-1]).to(torch.float32)
        running *= self.samples / (self.samples + batch)
        self.samples += batch
        return x


class HessianStats(RunningSampleMean):
    """Running H = (2 / samples) · Σ X Xᵀ of one projection's inputs (fp32), as both references keep it."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu") -> None:
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.samples = 0

    def add(self, inputs: torch.Tensor) -> None:
        """`inputs` (batch, ..., in): one sample per batch row, as the projection received them."""
        x = self._next_batch(inputs, self.hessian)
        x = x * (2.0 / self.samples) ** 0.5
        self.hessian.addmm_(x.T, x)


def kill_dead_inputs(w: torch.Tensor, h: torch.Tensor) -> None:
    """Inputs that were always zero carry no information: H_jj = 1 keeps H invertible, their weights go."""
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0


def lazy_blocks(w: torch.Tensor, hinv: torch.Tensor, blocksize: int):
    """The lazy-batch column loop of SparseGPT and GPTQ: per block of `blocksize` columns, yields
    (i1, i2, w1, err1, hinv1): a copy of the block's columns, its error buffer for the caller to fill
    and the block of the inverse-Hessian factor. When the caller asks for the next block, the errors of
    this one update every column of `w` right of it at once (w[:, i2:] -= err1 @ Hinv[i1:i2, i2:])."""
    cols = w.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        yield i1, i2, w1, err1, hinv[i1:i2, i1:i2]
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])


def inverse_hessian_factor(hessian: torch.Tensor, damp: float, who: str, stacklevel: int) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹, λ = damp · mean(diag H); retries with more dampening, warning
    as `who` with `stacklevel` counted as if the caller called `warnings.warn` itself."""
    diag = torch.arange(hessian.shape[0], device=hessian.device)
    lam = damp * torch.mean(torch.diag(hessian))
    for attempt in range(_DAMP_RETRIES + 1):
        try:
            damped = hessian.clone()
            damped[diag, diag] += lam
            lower = torch.linalg.cholesky(damped)
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
        except torch.linalg.LinAlgError:
            if attempt == _DAMP_RETRIES:
                break
            lam = lam * _DAMP_RETRY_FACTOR if lam > 0 else torch.tensor(1e-6, device=hessian.device)
            warnings.warn(
                f"{who}: Hessian not positive definite; retrying with dampening {float(lam):.3g}",
                RuntimeWarning,
                stacklevel=stacklevel + 1,
            )
    raise PrunescopeError(f"{who}: the layer Hessian stays singular even with strong dampening")
