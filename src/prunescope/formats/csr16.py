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
from . import native
from .base import SparseLinear
from .bitmask import _check_weight, _linear_torch

MAX_IN_FEATURES = 65536


def _columns(col_indices: torch.Tensor) -> torch.Tensor:
    return col_indices.to(torch.int64) & 0xFFFF


def _dense(
    values: torch.Tensor, col_indices: torch.Tensor, row_offsets: torch.Tensor, in_features: int
) -> torch.Tensor:
    out = row_offsets.numel() - 1
    rows = torch.repeat_interleave(torch.arange(out, device=values.device), row_offsets.diff())
    dense = torch.zeros(out, in_features, dtype=values.dtype, device=values.device)
    dense[rows, _columns(col_indices)] = values
    return dense


def _csr16_linear_impl(
    x: torch.Tensor,
    values: torch.Tensor,
    col_indices: torch.Tensor,
    row_offsets: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    kernel: str,
) -> torch.Tensor:
    """(n, in) x -> (n, out) float32. `kernel` "" means `$PRUNESCOPE_KERNEL` or the best path."""
    name = native.resolve_kernel(kernel or None)
    if name == "torch":
        native.check_cpu(x, values, bias)
        return _linear_torch(x, _dense(values, col_indices, row_offsets, in_features), bias)
    return native.csr16_matmul(x, values, col_indices, row_offsets, bias, in_features, name)


csr16_linear = torch.library.custom_op(
    "prunescope::csr16_linear",
    mutates_args=(),
    schema="(Tensor x, Tensor values, Tensor col_indices, Tensor row_offsets, Tensor? bias, int in_features, "
    "str kernel) -> Tensor",
)(_csr16_linear_impl)


@csr16_linear.register_fake
def _(x, values, col_indices, row_offsets, bias, in_features, kernel):
    return x.new_empty((x.shape[0], row_offsets.shape[0] - 1), dtype=torch.float32)


class CSR16Linear(SparseLinear):
    """A Linear whose pruned weight is CSR with uint16 column indices (CPU kernels, in_features <= 65536)."""

    format_name = "csr16"

    def __init__(
        self,
        values: torch.Tensor,
        col_indices: torch.Tensor,
        row_offsets: torch.Tensor,
        in_features: int,
        bias: torch.Tensor | None = None,
        kernel: str | None = None,
    ) -> None:
        super().__init__(in_features, row_offsets.numel() - 1, bias)
        self.register_buffer("values", values)
        self.register_buffer("col_indices", col_indices)
        self.register_buffer("row_offsets", row_offsets)
        self.kernel = kernel

    @classmethod
    def check_support(cls, dtype: torch.dtype, device: torch.device) -> None:
        native.check_support(cls.format_name, dtype, device)

    @classmethod
    @torch.no_grad()
    def from_dense(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None, kernel: str | None = None
    ) -> CSR16Linear:
        _check_weight(weight)
        if weight.shape[1] > MAX_IN_FEATURES:
            raise PrunescopeError(f"csr16 needs in_features <= {MAX_IN_FEATURES}, got {weight.shape[1]}")
        weight = weight.detach()
        nonzero = weight != 0
        cols = nonzero.nonzero()[:, 1]  # row-major order, like the values below
        cols = torch.where(cols >= 32768, cols - 65536, cols).to(torch.int16)
        row_offsets = torch.zeros(weight.shape[0] + 1, dtype=torch.int64, device=weight.device)
        row_offsets[1:] = nonzero.sum(1).cumsum(0)
        return cls(
            weight[nonzero].contiguous(), cols.contiguous(), row_offsets, weight.shape[1], bias, kernel
        )

    def to_dense(self) -> torch.Tensor:
        return _dense(self.values, self.col_indices, self.row_offsets, self.in_features)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def weight_bytes(self) -> dict[str, int]:
        return {
            name: t.numel() * t.element_size()
            for name, t in (
                ("values", self.values),
                ("col_indices", self.col_indices),
                ("row_offsets", self.row_offsets),
            )
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.is_cpu and self.values.is_cpu):
            native.check_cpu(x, self.values)
        if x.shape[-1] != self.in_features:
            raise PrunescopeError(
                f"expected last dim {self.in_features}, got input of shape {tuple(x.shape)}"
            )
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        args = (
            x2,
            self.values,
            self.col_indices,
            self.row_offsets,
            self.bias,
            self.in_features,
            self.kernel or "",
        )
        # Eager calls skip the custom-op dispatcher (tens of microseconds a call); compiled graphs use the op.
        y = csr16_linear(*args) if torch.compiler.is_compiling() else _csr16_linear_impl(*args)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)
