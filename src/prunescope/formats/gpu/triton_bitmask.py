"""A Triton kernel for bitmask weights at decode: read the bitmap and the packed values, never a dense tile.

The torch device path (`formats.expand`) writes each layer's dense weight into a scratch tile and reads it
back for the GEMM, so at one token it moves more bytes than `F.linear` on the dense weight.  This kernel
reads what the format stores, (1 - s) * elsize + 1/8 bytes per weight, and expands it in registers, as the
native CPU kernels do: for a tile of rows and columns it loads the mask words, takes each kept weight's rank
in its row (a prefix sum of the bits, plus the row's running offset) and gathers the values at those ranks.
The same kernel serves `bitmask-int8`: int8 codes instead of values, times the row's scale at the end.

Scope: up to MAX_TOKENS tokens (decode and small batches).  One token is a row-wise dot product; more run
`tl.dot` over a tile of 16 tokens.  Beyond MAX_TOKENS a GEMM re-reads each weight tile once per 16 tokens
while the expand-and-GEMM path reads it once, so the callers take that path there.  The block sizes are
autotuned on the GPU at the first call of each shape.  NOT MEASURED: no GPU was at hand when this was
written, so whether it beats the torch path or dense `F.linear` is for `benchmarks/gpu_check.py` (and the
`auto` format, which times it as a candidate) to say; the kernel is opt-in (`kernel="triton"`).

Tested on the CPU under Triton's interpreter (`TRITON_INTERPRET=1` before triton is first imported, as
tests/conftest.py sets it on a machine without a GPU) against F.linear on the stored weight.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os

import torch

from ...errors import PrunescopeError

MAX_TOKENS = 16
_INTERPRET_ENV = "TRITON_INTERPRET"


def available() -> bool:
    """Whether Triton is installed (it comes with CUDA builds of torch; `pip install triton` elsewhere)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter in this process.  It decides when `triton.language`
    is first imported (its library functions are decorated then), from TRITON_INTERPRET at that moment;
    a later change of the variable does not switch it."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.cumsum, InterpretedFunction)


def check_usable(device: torch.device) -> None:
    """Raise a one-line PrunescopeError when the Triton path cannot run on `device` here."""
    if not available():
        raise PrunescopeError("the Triton kernel needs the triton package (pip install triton)")
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return
    raise PrunescopeError(
        f"the Triton kernel runs on CUDA (or on the CPU with {_INTERPRET_ENV}=1 set before triton is first "
        f"imported, for tests), not on {device}"
    )


@contextlib.contextmanager
def _interpret_mode(on: bool):
    """`triton.jit` reads TRITON_INTERPRET when it decorates: the kernel must be decorated in the mode the
    library functions it calls were (`interpreting`), whatever the variable says now."""
    before = os.environ.get(_INTERPRET_ENV)
    os.environ[_INTERPRET_ENV] = "1" if on else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[_INTERPRET_ENV]
        else:
            os.environ[_INTERPRET_ENV] = before


@functools.cache
def _kernel(interpret: bool):
    """The kernel, compiled (autotuned) for a GPU or interpreted for the CPU; built on first use."""
    import triton
    import triton.language as tl

    with _interpret_mode(interpret):

        @triton.jit
        def bitmask_matmul(
            x_ptr,
            values_ptr,
            mask_ptr,
            offsets_ptr,
            scales_ptr,
            bias_ptr,
            y_ptr,
            n_tokens,
            out_features,
            in_features,
            words,
            HAS_SCALES: tl.constexpr,
            HAS_BIAS: tl.constexpr,
            PRECISION: tl.constexpr,
            BLOCK_N: tl.constexpr,
            BLOCK_M: tl.constexpr,
            BLOCK_K: tl.constexpr,
        ):
            rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
            tokens = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
            row_ok = rows < out_features
            token_ok = tokens < n_tokens
            # index in `values` of the next kept weight of each row
            start = tl.load(offsets_ptr + rows, mask=row_ok, other=0)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            lanes = tl.arange(0, BLOCK_K)
            for k0 in range(0, in_features, BLOCK_K):
                cols = k0 + lanes
                col_ok = cols < in_features
                inside = row_ok[:, None] & col_ok[None, :]
                # each lane reads its own 16-column word (the 16 loads of a word hit the same cache line)
                word = tl.load(mask_ptr + rows[:, None] * words + (cols // 16)[None, :], mask=inside, other=0)
                bit = (word.to(tl.int32) >> (cols % 16)[None, :]) & 1
                rank = tl.cumsum(bit, axis=1) - bit  # kept weights before this lane, in this tile and row
                w = tl.load(values_ptr + start[:, None] + rank, mask=bit != 0, other=0)
                if BLOCK_N == 1:
                    xv = tl.load(x_ptr + tl.program_id(1) * in_features + cols, mask=col_ok, other=0)
                    prod = w.to(tl.float32) * xv.to(tl.float32)[None, :]
                    acc += tl.sum(prod, axis=1)[:, None]
                else:
                    xt = tl.load(
                        x_ptr + tokens[None, :] * in_features + cols[:, None],
                        mask=col_ok[:, None] & token_ok[None, :],
                        other=0,
                    )
                    # fp16/bf16 operands are exact in tf32, and Triton's interpreter has no bf16 dot
                    acc = tl.dot(w.to(tl.float32), xt.to(tl.float32), acc, input_precision=PRECISION)
                start += tl.sum(bit, axis=1)
            if HAS_SCALES:
                acc *= tl.load(scales_ptr + rows, mask=row_ok, other=0)[:, None]
            if HAS_BIAS:
                acc += tl.load(bias_ptr + rows, mask=row_ok, other=0).to(tl.float32)[:, None]
            target = y_ptr + tokens[None, :] * out_features + rows[:, None]
            tl.store(target, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & token_ok[None, :])

        if interpret:
            return bitmask_matmul
        configs = [
            triton.Config({"BLOCK_M": m, "BLOCK_K": k}, num_warps=w)
            for m, k, w in ((16, 128, 4), (32, 128, 4), (64, 64, 4), (32, 256, 8), (64, 128, 8))
        ]
        return triton.autotune(configs, key=["out_features", "in_features", "BLOCK_N"])(bitmask_matmul)


@functools.cache
def _has_tf32(device: torch.device) -> bool:
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 0)


def _precision(operand: torch.dtype, device: torch.device) -> str:
    """tl.dot's input precision: fp16/bf16 values are exact in tf32 (10 mantissa bits, 8 exponent bits),
    so tensor cores may take them where the GPU has tf32 (compute capability >= 8.0); float32 operands, and
    GPUs before Ampere (a T4), multiply in full float32."""
    return "tf32" if operand != torch.float32 and _has_tf32(device) else "ieee"


def bitmask_matmul(
    x: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    row_offsets: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """y (n, out) = x (n, in) @ W^T + bias for n <= MAX_TOKENS, W the bitmask weight (`formats.bitmask`
    layout), or with `scales` the bitmask-int8 one (int8 codes, one float32 scale per row).

    The products accumulate in float32.  Float values: x is cast to their dtype (as `F.linear` on the
    weight computes) and y has it.  int8 codes: they are cast to x's dtype (exact for |code| <= 127 in
    fp16/bf16), and y is float32, as the torch path returns."""
    check_usable(x.device)
    n = x.shape[0]
    if not 1 <= n <= MAX_TOKENS:
        raise PrunescopeError(f"the Triton kernel takes 1 to {MAX_TOKENS} tokens, got {n}")
    out = row_offsets.numel() - 1
    operand = x.dtype if scales is not None else values.dtype
    x = x.to(operand).contiguous()
    y = torch.empty(n, out, dtype=torch.float32 if scales is not None else operand, device=x.device)
    interpret = interpreting()
    kernel = _kernel(interpret)
    block_n = 1 if n == 1 else 16
    blocks = {} if not interpret else {"BLOCK_M": 16, "BLOCK_K": 64}

    def grid(meta):
        return (-(-out // meta["BLOCK_M"]), -(-n // block_n))

    kernel[grid](
        x,
        values,
        mask,
        row_offsets,
        scales if scales is not None else values,  # not read without HAS_SCALES
        bias if bias is not None else values,  # not read without HAS_BIAS
        y,
        n,
        out,
        in_features,
        mask.shape[1],
        HAS_SCALES=scales is not None,
        HAS_BIAS=bias is not None,
        PRECISION=_precision(operand, x.device),
        BLOCK_N=block_n,
        **blocks,
    )
    return y
