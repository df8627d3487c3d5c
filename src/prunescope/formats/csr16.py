"""CSR weights with 16-bit column indices (in_features <= 65536), run by the native kernels.

Half the index bytes of int32 CSR; it beats the bitmask format only at high sparsity (the mask costs
1/8 byte per weight, an index 2 bytes per non-zero: break-even at density 1/16) or at many tokens, where
the kernel transposes the input and does one broadcast FMA per non-zero over 16 tokens.

Layout (all buffers):
  values       (nnz,)         the non-zeros, row after row, in the weight's dtype
  col_indices  (nnz,) int16   column of each value, as uint16 bits (torch has no general uint16)
  row_offsets  (out + 1,) int64
"""

from __future__ import annotations

import torch

from ..errors import PrunescopeError
from . import expand, native
from .bitmask import BufferedSparseLinear, native_linear_impl, native_linear_op, row_offsets_of

MAX_IN_FEATURES = 65536


def _columns(col_indices: torch.Tensor) -> torch.Tensor:
    return col_indices.to(torch.int64) & 0xFFFF


def _rows(row_offsets: torch.Tensor, r0: int, r1: int, count: int) -> torch.Tensor:
    """The row (counted from r0) of each of the `count` values of rows r0..r1; no host synchronisation."""
    lengths = row_offsets[r0 + 1 : r1 + 1] - row_offsets[r0:r1]
    rows = torch.arange(r1 - r0, device=row_offsets.device)
    return torch.repeat_interleave(rows, lengths, output_size=count)


def _dense(
    values: torch.Tensor, col_indices: torch.Tensor, row_offsets: torch.Tensor, in_features: int
) -> torch.Tensor:
    out = row_offsets.numel() - 1
    dense = torch.zeros(out, in_features, dtype=values.dtype, device=values.device)
    dense[_rows(row_offsets, 0, out, values.numel()), _columns(col_indices)] = values
    return dense


def _fill_csr16(values: torch.Tensor, col_indices: torch.Tensor, row_offsets: torch.Tensor):
    def fill(tile: torch.Tensor, r0: int, r1: int, v0: int, v1: int) -> None:
        tile.zero_()
        index = (_rows(row_offsets, r0, r1, v1 - v0), _columns(col_indices[v0:v1]))
        tile.index_put_(index, values[v0:v1].to(tile.dtype))

    return fill


def csr16_torch(
    x: torch.Tensor,
    values: torch.Tensor,
    col_indices: torch.Tensor,
    row_offsets: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    blocks: tuple | None = None,
) -> torch.Tensor:
    """The pure-torch path on any device (see `formats.expand`); `blocks` None expands all rows at once."""
    out = row_offsets.numel() - 1
    blocks = blocks if blocks is not None else ((0, out, 0, values.numel()),)
    fill = _fill_csr16(values, col_indices, row_offsets)
    return expand.tiled_linear(x, bias, blocks, out, in_features, expand.compute_dtype(values), fill)


_csr16_linear_impl = native_linear_impl(csr16_torch, native.csr16_matmul)
csr16_linear = native_linear_op("csr16_linear", "col_indices", _csr16_linear_impl)


class CSR16Linear(BufferedSparseLinear):
    """A Linear whose pruned weight is CSR with uint16 column indices (in_features <= 65536).

    Native kernels on CPU; the pure-torch path (`formats.expand`) on any other device or when forced."""

    format_name = "csr16"
    index_name = "col_indices"
    _native_matmul = staticmethod(native.csr16_matmul)
    _linear_op = staticmethod(csr16_linear)

    def _check_buffers(self) -> None:
        native.check_csr16_buffers(self.col_indices, self.row_offsets, self.in_features)
        if self.col_indices.numel() != self.values.numel():
            raise PrunescopeError("corrupt csr16 buffers (one column index per value)")

    @classmethod
    def _from_weight(cls, weight: torch.Tensor, bias, kernel) -> CSR16Linear:
        if weight.shape[1] > MAX_IN_FEATURES:
            raise PrunescopeError(f"csr16 needs in_features <= {MAX_IN_FEATURES}, got {weight.shape[1]}")
        nonzero = weight != 0
        cols = nonzero.nonzero()[:, 1]  # row-major order, like the values below
        cols = torch.where(cols >= 32768, cols - 65536, cols).to(torch.int16)
        values, offsets = weight[nonzero].contiguous(), row_offsets_of(nonzero)
        return cls(values, cols.contiguous(), offsets, weight.shape[1], bias, kernel)

    def to_dense(self) -> torch.Tensor:
        return _dense(self.values, self.col_indices, self.row_offsets, self.in_features)

    def flops_per_token(self) -> int:
        # The native kernels do one FMA per stored non-zero; the torch path expands rows and multiplies
        # them whole, zeros included.
        return 2 * self.in_features * self.out_features if self.path == "torch" else 2 * self.nnz

    def _torch(self, x2: torch.Tensor) -> torch.Tensor:
        args = (self.values, self.col_indices, self.row_offsets, self.bias, self.in_features, self._blocks)
        return csr16_torch(x2, *args)
