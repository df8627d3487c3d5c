"""Dense int8, one token: the bandwidth-bound baseline of the bitmask-int8 one-token kernel (issue 25).

y[r] = scales[r] * sum_c codes[r, c] * x[c] + bias[r], with float32 input, output and accumulation, on the
int8 RTN layout (`quantization.rtn_quantize(w, QuantOptions("int8"))`: `packed` codes (out, in), one scale
per row).  The C kernel shares its widen-and-FMA step, prefetch and threading with the bitmask-int8 rows, so
a benchmark of the two measures the format (1 byte per weight here, (1 - s) + 1/8 there), not the tuning.

Not a sparse format (nothing registered in `formats.FORMATS`): a reference for benchmarks, kept out of
`bitmask_int8`, which holds the format's module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PrunescopeError
from . import native

_ext = native._ext
# The kernel arrived after the bitmask-int8 ones: an extension built before it still serves everything else.
HAS_NATIVE = _ext is not None and hasattr(_ext, "dense_int8_matmul")


def dequantized(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The (out, in) float32 weight the codes stand for: scales[r] * codes[r, c]."""
    return codes.float() * scales.float()[:, None]


def _check(codes: torch.Tensor, scales: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> None:
    native.check_cpu(codes, scales, x, bias)
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise PrunescopeError(f"codes must be a 2-D int8 tensor, got {codes.dtype} {tuple(codes.shape)}")
    out, in_features = codes.shape
    if scales.dtype != torch.float32 or tuple(scales.shape) != (out,):
        raise PrunescopeError(f"scales must be float32 ({out},), got {scales.dtype} {tuple(scales.shape)}")
    if x.shape[-1:] != (in_features,) or x.numel() != in_features:
        raise PrunescopeError(
            f"expected one token, x of shape ({in_features},) or (1, {in_features}), got {tuple(x.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (out,):
        raise PrunescopeError(f"bias must have shape ({out},), got {tuple(bias.shape)}")


def dense_int8_matvec(
    codes: torch.Tensor,
    scales: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    kernel: str | None = None,
) -> torch.Tensor:
    """y = scales * (codes @ x) + bias in float32 for one token x ((in,) or (1, in); y has x's leading
    shape and out columns).  `kernel`: "avx512", "avx2", "scalar" (native) or "torch" (the dequantized
    F.linear), else `native.resolve_kernel`'s choice."""
    _check(codes, scales, x, bias)
    kernel = native.resolve_kernel(kernel)
    if kernel == "torch":
        return F.linear(x.float(), dequantized(codes, scales), None if bias is None else bias.float())
    if not HAS_NATIVE:  # a native path named, or chosen by default, on an extension built before this kernel
        raise PrunescopeError(f"kernel {kernel!r}: this native extension predates dense int8; rebuild it")
    out, in_features = codes.shape
    x = x.to(torch.float32).contiguous()
    codes, scales = codes.contiguous(), scales.contiguous()
    bias = None if bias is None else bias.to(torch.float32).contiguous()
    y = torch.empty(*x.shape[:-1], out, dtype=torch.float32)
    _ext.dense_int8_matmul(
        native._ISA[kernel],
        native.num_threads(),
        in_features,
        out,
        x.data_ptr(),
        codes.data_ptr(),
        scales.data_ptr(),
        0 if bias is None else bias.data_ptr(),
        y.data_ptr(),
    )
    return y
