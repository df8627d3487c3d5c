"""Bitmask weights: per output row, 1 bit per weight plus the packed non-zeros ("load sparse, compute dense").

Decode on CPU is memory-bound, and this format moves (1 - s) * elsize + 1/8 bytes per weight instead of
elsize, with no per-value index.  The native kernels rebuild 16 dense lanes per mask word in a register
and FMA them with the dense input, so they run near the memory bound where CSR kernels do not.

Layout (all buffers, so `.to()` and `state_dict` carry them):
  values       (nnz,)                      the non-zeros, row after row, in the weight's dtype
  mask         (out, ceil(in / 16)) int16  bit j of word w set <=> column 16 * w + j is non-zero
  row_offsets  (out + 1,) int64            index in `values` of each row's first non-zero
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PrunescopeError
from . import native
from .base import SparseLinear

_BITS = torch.arange(16, dtype=torch.int32)
_PACK_ROWS = 1024  # rows packed at a time: bounds the int32 scratch of a 11008 x 4096 weight


def pack_mask(nonzero: torch.Tensor) -> torch.Tensor:
    """(out, in) bool -> (out, ceil(in / 16)) int16 words, bit j of word w = column 16 * w + j."""
    out, in_features = nonzero.shape
    words = (in_features + 15) // 16
    packed = torch.empty(out, words, dtype=torch.int16, device=nonzero.device)
    bits = _BITS.to(nonzero.device)
    for r0 in range(0, out, _PACK_ROWS):
        chunk = nonzero[r0 : r0 + _PACK_ROWS]
        padded = torch.zeros(chunk.shape[0], words * 16, dtype=torch.int32, device=nonzero.device)
        padded[:, :in_features] = chunk
        w = (padded.view(-1, words, 16) << bits).sum(-1)
        packed[r0 : r0 + _PACK_ROWS] = torch.where(w >= 32768, w - 65536, w).to(torch.int16)
    return packed


def unpack_mask(mask: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of `pack_mask`: (out, in) bool."""
    words = (mask.to(torch.int32) & 0xFFFF).unsqueeze(-1)
    bits = (words >> _BITS.to(mask.device)) & 1
    return bits.reshape(mask.shape[0], -1)[:, :in_features].bool()


def _check_weight(weight: torch.Tensor) -> None:
    if weight.dim() != 2:
        raise PrunescopeError(f"expected a 2-D (out, in) weight, got shape {tuple(weight.shape)}")
    if weight.dtype not in native.DTYPE_CODES:
        raise PrunescopeError(f"unsupported weight dtype {weight.dtype}; use float32, bfloat16 or float16")


def _linear_torch(x: torch.Tensor, dense: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.float(), dense.float(), None if bias is None else bias.float())


def _bitmask_linear_impl(
    x: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    row_offsets: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    kernel: str,
) -> torch.Tensor:
    """(n, in) x -> (n, out) float32. `kernel` "" means `$PRUNESCOPE_KERNEL` or the best path."""
    name = native.resolve_kernel(kernel or None)
    if name == "torch":
        native.check_cpu(x, values, bias)
        dense = torch.zeros(mask.shape[0], in_features, dtype=values.dtype)
        dense[unpack_mask(mask, in_features)] = values
        return _linear_torch(x, dense, bias)
    return native.bitmask_matmul(x, values, mask, row_offsets, bias, in_features, name)


bitmask_linear = torch.library.custom_op(
    "prunescope::bitmask_linear",
    mutates_args=(),
    schema="(Tensor x, Tensor values, Tensor mask, Tensor row_offsets, Tensor? bias, int in_features, "
    "str kernel) -> Tensor",
)(_bitmask_linear_impl)


@bitmask_linear.register_fake
def _(x, values, mask, row_offsets, bias, in_features, kernel):
    return x.new_empty((x.shape[0], row_offsets.shape[0] - 1), dtype=torch.float32)


class BitmaskLinear(SparseLinear):
    """A Linear whose pruned weight is stored as a per-row bitmask plus packed non-zeros (CPU kernels).

    `kernel` pins a path ("avx512", "avx2", "scalar", "torch"); None defers to `$PRUNESCOPE_KERNEL` or the
    best one available, decided at each call.  The output has the input's dtype; accumulation is float32.
    """

    format_name = "bitmask"

    def __init__(
        self,
        values: torch.Tensor,
        mask: torch.Tensor,
        row_offsets: torch.Tensor,
        in_features: int,
        bias: torch.Tensor | None = None,
        kernel: str | None = None,
    ) -> None:
        super().__init__(in_features, mask.shape[0], bias)
        self.register_buffer("values", values)
        self.register_buffer("mask", mask)
        self.register_buffer("row_offsets", row_offsets)
        self.kernel = kernel

    @classmethod
    def check_support(cls, dtype: torch.dtype, device: torch.device) -> None:
        native.check_support(cls.format_name, dtype, device)

    @classmethod
    @torch.no_grad()
    def from_dense(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None, kernel: str | None = None
    ) -> BitmaskLinear:
        _check_weight(weight)
        weight = weight.detach()
        nonzero = weight != 0
        row_offsets = torch.zeros(weight.shape[0] + 1, dtype=torch.int64, device=weight.device)
        row_offsets[1:] = nonzero.sum(1).cumsum(0)
        values = weight[nonzero].contiguous()  # boolean indexing walks row-major: rows stay packed in order
        return cls(values, pack_mask(nonzero), row_offsets, weight.shape[1], bias, kernel)

    def to_dense(self) -> torch.Tensor:
        dense = torch.zeros(
            self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device
        )
        dense[unpack_mask(self.mask, self.in_features)] = self.values
        return dense

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def flops_per_token(self) -> int:
        # "Load sparse, compute dense": the kernel expands each 16-weight chunk, zeros included, and
        # multiplies all of it. It saves memory traffic, not arithmetic.
        return 2 * self.in_features * self.out_features

    def weight_bytes(self) -> dict[str, int]:
        return {
            name: t.numel() * t.element_size()
            for name, t in (("values", self.values), ("mask", self.mask), ("row_offsets", self.row_offsets))
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.is_cpu and self.values.is_cpu):
            native.check_cpu(x, self.values)
        if x.shape[-1] != self.in_features:
            raise PrunescopeError(
                f"expected last dim {self.in_features}, got input of shape {tuple(x.shape)}"
            )
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        args = (x2, self.values, self.mask, self.row_offsets, self.bias, self.in_features, self.kernel or "")
        # Eager calls skip the custom-op dispatcher (tens of microseconds a call); compiled graphs use the op.
        y = bitmask_linear(*args) if torch.compiler.is_compiling() else _bitmask_linear_impl(*args)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)
