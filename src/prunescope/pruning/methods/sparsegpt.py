"""SparseGPT (Frantar & Alistarh 2023): blocked Optimal Brain Surgeon pruning with weight reconstruction.

For a projection W (out, in) with layer inputs X, the layer Hessian of ||WX - ŴX||² is H = 2 X Xᵀ (running
mean over samples, fp32). Columns are processed left to right in blocks of `blocksize`: the mask of a block is
chosen from the OBS saliency w² / [H⁻¹]_jj² of the already-updated weights (over the whole block when
unstructured, per row and group of M columns for N:M), then each column is quantized to its mask and the
error it leaves is spread over the not-yet-processed columns through the upper Cholesky factor of H⁻¹.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...errors import PrunescopeError
from ...layers import linear_weight
from ...util.linalg import HessianStats, inverse_hessian_factor, kill_dead_inputs, lazy_blocks
from ..record import LayerChange, record_update
from ..registry import register_method
from ..selection import n_m_mask, smallest_mask
from ..spec import PruneSpec


@dataclass(frozen=True)
class SparseGPTOptions:
    damp: float = field(
        default=0.01,
        metadata={"help": "SparseGPT: dampening added to the Hessian diagonal, as a fraction of its mean."},
    )
    blocksize: int = field(
        default=128, metadata={"help": "SparseGPT: columns pruned and updated together (lazy batch size)."}
    )

    def __post_init__(self) -> None:
        if self.damp < 0 or self.blocksize < 1:
            raise PrunescopeError("--sparsegpt-damp must be >= 0 and --sparsegpt-blocksize >= 1")


def _block_mask(scores: torch.Tensor, spec: PruneSpec) -> torch.Tensor:
    # Exactly round(p · rows · cols) weights of the block: the reference's `<= sorted[k]` can take one more.
    return smallest_mask(scores, round(spec.sparsity * scores.numel()))


def sparsegpt_solve(
    weight: torch.Tensor, hessian: torch.Tensor, spec: PruneSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pruned and reconstructed copy of `weight` (out, in), fp32, and its mask (True = pruned)."""
    w = weight.detach().to(torch.float32).clone()
    h = hessian.clone()
    kill_dead_inputs(w, h)
    options = spec.method_options
    hinv = inverse_hessian_factor(h, options.damp, "SparseGPT", stacklevel=1)

    n, m = (spec.pattern.n, spec.pattern.m) if spec.pattern.structured else (0, 0)
    blocksize = options.blocksize
    if m and blocksize % m:
        blocksize += m - blocksize % m  # an N:M group must not straddle two blocks
    mask = torch.zeros_like(w, dtype=torch.bool)
    for i1, i2, w1, errors, hinv1 in lazy_blocks(w, hinv, blocksize):
        d = torch.diag(hinv1)
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
    return w, mask


def sparsegpt_gptq_solve(weight: torch.Tensor, hessian: torch.Tensor, spec: PruneSpec):
    """The reference's joint loop (`fasterprune` with a quantizer): each kept column is quantized after
    masking and its error propagated. Returns (dequantized weight fp32, mask, QuantizedWeight)."""
    from ...quantization import sparsegpt_gptq  # lazily: quantization is only needed for the joint pass

    options = spec.method_options
    n, m = (spec.pattern.n, spec.pattern.m) if spec.pattern.structured else (0, 0)
    return sparsegpt_gptq(
        weight.detach(),  # copied to fp32 there; the codes' scales keep the weight's dtype
        hessian,
        spec.sparsity,
        spec.quantize,
        blocksize=options.blocksize,
        percdamp=options.damp,
        prune_n=n,
        prune_m=m,
    )


def prune_sparsegpt(module: nn.Module, stats: HessianStats, spec: PruneSpec) -> LayerChange:
    weight = linear_weight(module)
    original = weight.detach().clone()
    quantized = None
    if spec.joint_quantization:
        pruned, mask, quantized = sparsegpt_gptq_solve(weight, stats.hessian, spec)
    else:
        pruned, mask = sparsegpt_solve(weight, stats.hessian, spec)
    with torch.no_grad():
        weight.copy_(pruned.to(weight.dtype))
        weight.masked_fill_(mask, 0)  # exact zeros even after a cast to half precision
    change = record_update(module, original, mask)
    change.quantized = quantized
    return change


register_method(
    "sparsegpt",
    cite="Frantar & Alistarh 2023, SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot "
    "(arXiv:2301.00774; github.com/IST-DASLab/sparsegpt)",
    options=SparseGPTOptions,
    prefix="sparsegpt",
    old_names={"sparsegpt_damp": "damp", "sparsegpt_blocksize": "blocksize"},  # run.json keeps these
    natural_scope="layer",
    scopes=("layer",),
    stats=HessianStats,
    prune_layer=prune_sparsegpt,
    quantizes=True,
)
