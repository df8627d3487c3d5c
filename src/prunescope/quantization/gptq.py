"""GPTQ (Frantar et al. 2023) on the kept weights, and the joint SparseGPT + GPTQ pass.

Both follow the IST-DASLab references line by line (fp32, same operation order):

- `gptq_quantize` is `gptq.py: GPTQ.fasterquant` with the quantizer of `QuantOptions`, plus a fixed pruning
  mask: a pruned weight is quantized as 0 (every quantizer maps 0 to exactly 0) and the error it leaves,
  (w − 0)/[H⁻¹]jj, is propagated like any other — what the SparseGPT reference's joint loop does with a
  fixed mask. Group parameters are recomputed at each group start from `W[:, i:i+group]` of the outer
  weight (lazily updated to the current block start, not by the in-block updates: the reference's
  `static_groups=False`), with the pruned entries of that slice counted as 0. With `act_order` and groups
  the reference's `static_groups=True` is used instead (parameters per consecutive group fixed before the
  loop), so the stored groups stay consecutive.
- `sparsegpt_gptq` is `sparsegpt.py: SparseGPT.fasterprune` with `self.quantizer` set: parameters from the
  dense W first (per row; per consecutive group, also on the dense W, when the quantizer is grouped —
  the reference only has per-row), then per 128-column block the mask of the lowest `sparsity` fraction of
  W²/diag(Hinv)² over the whole block (exactly round(sparsity · block size) weights, as
  `prunescope.pruning.sparsegpt`; the reference's `<= sorted[k]` takes one more), per column
  q = quantize(w with masked entries zeroed), err = (w − q)/Hinv_jj, in-block and lazy updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PrunescopeError
from ..util.linalg import inverse_hessian_factor as _inverse_factor
from ..util.linalg import kill_dead_inputs, lazy_blocks
from .base import Quantizer
from .registry import QuantOptions
from .weight import QuantizedWeight, check_weight


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹, λ = percdamp · mean(diag H); retries with more dampening."""
    return _inverse_factor(hessian, percdamp, "GPTQ", stacklevel=3)


@dataclass
class GPTQResult:
    weight: torch.Tensor  # (out, in) fp32, the dequantized weight
    quantized: QuantizedWeight
    mask: torch.Tensor  # (out, in) bool, True = pruned (the given mask, or the joint pass's choice)


class _Params:
    """Per-(row, group) scale and zero, fp32, filled as the column loop reaches each group."""

    def __init__(self, quantizer: Quantizer, rows: int, groups: int, group: int, device) -> None:
        self.quantizer, self.group = quantizer, group
        self.scales = torch.zeros(rows, groups, dtype=torch.float32, device=device)
        self.zeros = None if quantizer.symmetric else torch.zeros_like(self.scales)

    def find(self, g: int, w: torch.Tensor) -> None:
        scale, zero = self.quantizer.params(w)
        self.scales[:, g] = scale
        if self.zeros is not None:
            self.zeros[:, g] = zero

    def find_all(self, w: torch.Tensor) -> None:
        for g in range(self.scales.shape[1]):
            self.find(g, w[:, g * self.group : (g + 1) * self.group])

    def column(self, g: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.scales[:, g : g + 1], None if self.zeros is None else self.zeros[:, g : g + 1]


def _setup(weight: torch.Tensor, hessian: torch.Tensor, options: QuantOptions):
    check_weight(weight)
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise PrunescopeError(
            f"Hessian of shape {tuple(hessian.shape)} does not match a weight with {cols} input columns"
        )
    group = options.group_for(cols)
    w = weight.detach().to(torch.float32).clone()
    h = hessian.detach().to(torch.float32).clone()
    params = _Params(options.quantizer, rows, cols // group, group, w.device)
    return w, h, group, params


def _quantize_column(quantizer: Quantizer, scale_zero, w1: torch.Tensor, hinv1: torch.Tensor, i: int, pruned):
    """Column i of block `w1` quantized with its `pruned` entries as 0; the error it leaves, (w − q)/[H⁻¹]ii,
    is spread over the block's columns from i on (in place). Returns (q, codes, error), each (rows,)."""
    scale, zero = scale_zero
    column = w1[:, i]
    d = hinv1[i, i]
    c = quantizer.codes(column.masked_fill(pruned, 0).unsqueeze(1), scale, zero)
    q = quantizer.dequantize(c, scale, zero).flatten()
    err = (column - q) / d
    w1[:, i:] -= err.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
    return q, c.flatten(), err


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    options: QuantOptions,
    mask: torch.Tensor | None = None,
) -> GPTQResult:
    """GPTQ of `weight` (out, in) with layer Hessian `hessian` (in, in); `mask` (True = pruned) stays 0."""
    w, h, group, params = _setup(weight, hessian, options)
    rows, cols = w.shape
    quantizer = options.quantizer
    if mask is None:
        mask = torch.zeros_like(w, dtype=torch.bool)
    elif mask.shape != w.shape:
        raise PrunescopeError(f"mask of shape {tuple(mask.shape)} does not match weight {tuple(w.shape)}")
    mask = mask.to(w.device, torch.bool)
    w.masked_fill_(mask, 0)
    grouped = group < cols
    static = grouped and options.act_order
    if not grouped:
        params.find(0, w)  # before the dead columns are zeroed, as the reference's find_params(W)
    kill_dead_inputs(w, h)
    if static:
        params.find_all(w)

    perm = None
    if options.act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h, mask = w[:, perm], h[perm][:, perm], mask[:, perm]
    # Group of each processed column (original column order decides the group).
    column_group = (perm if perm is not None else torch.arange(cols, device=w.device)) // group
    column_group = column_group.tolist()

    hinv = inverse_hessian_factor(h, options.percdamp)
    q_all = torch.zeros_like(w)
    codes = torch.zeros_like(w)
    blocksize = options.blocksize
    for i1, i2, w1, err1, hinv1 in lazy_blocks(w, hinv, blocksize):
        q1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            col = i1 + i
            if grouped and not static and col % group == 0:
                params.find(col // group, w[:, col : col + group].masked_fill(mask[:, col : col + group], 0))
            step = _quantize_column(quantizer, params.column(column_group[col]), w1, hinv1, i, mask[:, col])
            q1[:, i], codes[:, col], err1[:, i] = step
        q_all[:, i1:i2] = q1

    if perm is not None:
        inverse = torch.argsort(perm)
        q_all, codes, mask = q_all[:, inverse], codes[:, inverse], mask[:, inverse]
    quantized = QuantizedWeight.from_codes(quantizer, codes, params.scales, params.zeros, group, weight.dtype)
    return GPTQResult(q_all, quantized, mask)


def _check_sparsity(sparsity: float, prune_n: int, prune_m: int) -> None:
    if prune_n or prune_m:
        if not (0 < prune_n < prune_m):
            raise PrunescopeError(f"N:M pattern needs 0 < N < M, got {prune_n}:{prune_m}")
    elif not 0 <= sparsity < 1:
        raise PrunescopeError(f"sparsity must be in [0, 1), got {sparsity}")


@torch.no_grad()
def sparsegpt_gptq(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    options: QuantOptions,
    blocksize: int | None = None,
    percdamp: float | None = None,
    prune_n: int = 0,
    prune_m: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, QuantizedWeight]:
    """Joint SparseGPT pruning + GPTQ quantization of a dense `weight` (out, in).

    Returns (new weight (out, in) fp32 dequantized, mask (True = pruned), QuantizedWeight). `prune_n:prune_m`
    selects N:M instead of unstructured `sparsity`. `blocksize`/`percdamp` default to the options' values.
    """
    _check_sparsity(sparsity, prune_n, prune_m)
    if options.act_order:
        raise PrunescopeError("act-order is not part of the joint SparseGPT + GPTQ pass; drop it")
    w, h, group, params = _setup(weight, hessian, options)
    quantizer = options.quantizer
    params.find_all(w)  # on the dense weight, before anything is pruned or zeroed (reference)
    kill_dead_inputs(w, h)
    hinv = inverse_hessian_factor(h, options.percdamp if percdamp is None else percdamp)

    blocksize = options.blocksize if blocksize is None else blocksize
    if not isinstance(blocksize, int) or blocksize < 1:
        raise PrunescopeError(f"block size must be a positive integer, got {blocksize!r}")
    if prune_m and blocksize % prune_m:
        blocksize += prune_m - blocksize % prune_m  # an N:M group must not straddle two blocks
    mask = torch.zeros_like(w, dtype=torch.bool)
    codes = torch.zeros_like(w)
    for i1, i2, w1, err1, hinv1 in lazy_blocks(w, hinv, blocksize):
        q1 = torch.zeros_like(w1)
        diag1 = torch.diag(hinv1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if not prune_n:
            scores = w1**2 / diag1.reshape((1, -1)) ** 2
            count = round(sparsity * scores.numel())
            if count:
                flat = mask1.view(-1)
                flat[torch.topk(scores.flatten(), count, largest=False).indices] = True
        for i in range(i2 - i1):
            col = i1 + i
            if prune_n and i % prune_m == 0:
                scores = w1[:, i : i + prune_m] ** 2 / diag1[i : i + prune_m].reshape((1, -1)) ** 2
                mask1.scatter_(1, i + torch.topk(scores, prune_n, dim=1, largest=False)[1], True)
            step = _quantize_column(quantizer, params.column(col // group), w1, hinv1, i, mask1[:, i])
            q1[:, i], codes[:, col], err1[:, i] = step
        w[:, i1:i2] = q1
        mask[:, i1:i2] = mask1

    quantized = QuantizedWeight.from_codes(quantizer, codes, params.scales, params.zeros, group, weight.dtype)
    return w, mask, quantized
