"""The pure-torch path of the bitmask and csr16 formats: expand a block of rows into a dense tile, multiply.

It runs on any device (CUDA, MPS, and the CPU when `kernel="torch"` or `PRUNESCOPE_KERNEL=torch` forces it,
which is how it is tested here) and never leaves the device: the rows of each tile and where their values
start are host integers computed once per buffer (`row_blocks`, when a module's buffers are set or moved),
so a call issues kernels only, with no device-to-host synchronisation.  Tiles are written into one scratch
buffer per device and dtype, reused by every layer, and bounded by TILE_BYTES.

On the CPU the tile and the product are float32 (the reference the native kernels are checked against);
elsewhere they stay in the weight's dtype, as `F.linear` on the masked weight computes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Bytes of one dense tile of expanded rows: a layer of up to this size is expanded whole (one GEMM).
TILE_BYTES = 32 * 2**20

Block = tuple[int, int, int, int]  # rows r0..r1, their values v0..v1


def row_blocks(
    row_offsets: torch.Tensor, in_features: int, elsize: int, tile_bytes: int | None = None
) -> tuple:
    """(r0, r1, v0, v1) per tile of rows (at most `tile_bytes`, default TILE_BYTES), from the row
    offsets: one host read, when the buffers are set."""
    out = row_offsets.numel() - 1
    rows = max(1, (tile_bytes or TILE_BYTES) // max(1, in_features * elsize))
    starts = [*range(0, out, rows), out]
    offsets = row_offsets[starts].tolist() if out else [0]
    return tuple(
        (r0, r1, v0, v1) for r0, r1, v0, v1 in zip(starts, starts[1:], offsets, offsets[1:], strict=False)
    )


_SCRATCH: dict[tuple[str, torch.dtype], torch.Tensor] = {}


def scratch(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A (rows, cols) tile of the shared scratch buffer of this device and dtype (grown, never shrunk).

    Safe to reuse from layer to layer: on one stream every kernel that reads a tile is queued before the
    next expansion overwrites it."""
    key = (str(device), dtype)
    buffer = _SCRATCH.get(key)
    if buffer is None or buffer.numel() < rows * cols:
        # a normal tensor even when first asked for under inference_mode: an inference tensor could not
        # be written in place by a later call outside it
        with torch.inference_mode(False):
            buffer = torch.empty(rows * cols, dtype=dtype, device=device)
        _SCRATCH[key] = buffer
    return buffer[: rows * cols].view(rows, cols)


def compute_dtype(values: torch.Tensor) -> torch.dtype:
    return torch.float32 if values.device.type == "cpu" else values.dtype


def tiled_linear(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    blocks: tuple,
    out_features: int,
    in_features: int,
    dtype: torch.dtype,
    fill: Callable[[torch.Tensor, int, int, int, int], None],
) -> torch.Tensor:
    """y (n, out) in `dtype` = x (n, in) @ W^T + bias, W expanded tile by tile by `fill(tile, *block)`."""
    x = x.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    if len(blocks) == 1:
        tile = scratch(out_features, in_features, dtype, x.device)
        fill(tile, *blocks[0])
        return torch.nn.functional.linear(x, tile, bias)
    yt = torch.empty(out_features, x.shape[0], dtype=dtype, device=x.device)
    xt = x.t()
    for r0, r1, v0, v1 in blocks:
        tile = scratch(r1 - r0, in_features, dtype, x.device)
        fill(tile, r0, r1, v0, v1)
        torch.mm(tile, xt, out=yt[r0:r1])
    y = yt.t()
    return y + bias if bias is not None else y.contiguous()
