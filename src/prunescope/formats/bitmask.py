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

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import PrunescopeError
from . import expand, native
from .base import SparseLinear

# bit j of an int16 word as an int16 (bit 15 is the sign bit): `word & POWERS[j] != 0` tests it without
# widening the mask to int32.
_POWERS = torch.tensor([1 << j if j < 15 else -(1 << 15) for j in range(16)], dtype=torch.int16)
_POWERS_ON: dict[str, torch.Tensor] = {"cpu": _POWERS}
_PACK_ROWS = 1024  # rows packed at a time: bounds the int32 scratch of a 11008 x 4096 weight


def _powers(device: torch.device) -> torch.Tensor:
    """The 16 bit values on `device`, copied there once per process, not per call."""
    key = str(device)
    if key not in _POWERS_ON:
        _POWERS_ON[key] = _POWERS.to(device)
    return _POWERS_ON[key]


def pack_bitmask(nonzero: torch.Tensor) -> torch.Tensor:
    """(out, in) bool -> (out, ceil(in / 16)) int16 words, bit j of word w = column 16 * w + j.

    (Not `pruning.record.pack_mask`, which packs a whole mask into uint8 bytes for the undo record.)"""
    out, in_features = nonzero.shape
    words = (in_features + 15) // 16
    packed = torch.empty(out, words, dtype=torch.int16, device=nonzero.device)
    bits = torch.arange(16, dtype=torch.int32, device=nonzero.device)
    for r0 in range(0, out, _PACK_ROWS):
        chunk = nonzero[r0 : r0 + _PACK_ROWS]
        padded = torch.zeros(chunk.shape[0], words * 16, dtype=torch.int32, device=nonzero.device)
        padded[:, :in_features] = chunk
        w = (padded.view(-1, words, 16) << bits).sum(-1)
        packed[r0 : r0 + _PACK_ROWS] = torch.where(w >= 32768, w - 65536, w).to(torch.int16)
    return packed


def unpack_bitmask(mask: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of `pack_bitmask`: (out, in) bool, on the mask's device."""
    bits = (mask.unsqueeze(-1) & _powers(mask.device)) != 0
    return bits.reshape(mask.shape[0], -1)[:, :in_features]


def _check_weight(weight: torch.Tensor) -> None:
    if weight.dim() != 2:
        raise PrunescopeError(f"expected a 2-D (out, in) weight, got shape {tuple(weight.shape)}")
    if weight.dtype not in native.DTYPE_CODES:
        raise PrunescopeError(f"unsupported weight dtype {weight.dtype}; use float32, bfloat16 or float16")


def _fill_bitmask(values: torch.Tensor, mask: torch.Tensor, in_features: int):
    def fill(tile: torch.Tensor, r0: int, r1: int, v0: int, v1: int) -> None:
        tile.zero_()
        tile.masked_scatter_(unpack_bitmask(mask[r0:r1], in_features), values[v0:v1].to(tile.dtype))

    return fill


def bitmask_torch(
    x: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    blocks: tuple | None = None,
) -> torch.Tensor:
    """The pure-torch path on any device (see `formats.expand`); `blocks` None expands all rows at once."""
    out = mask.shape[0]
    blocks = blocks if blocks is not None else ((0, out, 0, values.numel()),)
    fill = _fill_bitmask(values, mask, in_features)
    return expand.tiled_linear(x, bias, blocks, out, in_features, expand.compute_dtype(values), fill)


def row_offsets_of(nonzero: torch.Tensor) -> torch.Tensor:
    """(out + 1,) int64 index of each row's first stored value, for values packed row-major from `nonzero`."""
    row_offsets = torch.zeros(nonzero.shape[0] + 1, dtype=torch.int64, device=nonzero.device)
    row_offsets[1:] = nonzero.sum(1).cumsum(0)
    return row_offsets


def native_linear_impl(torch_path, native_path):
    """The body of a row-offset format's custom op: (n, in) x -> (n, out) float32. `kernel` "" means
    `$PRUNESCOPE_KERNEL` or the best path; tensors off the CPU always take the torch path. Both paths take
    (x, values, index, row_offsets, bias, in_features), the native one the resolved kernel too."""

    def impl(x, values, index, row_offsets, bias, in_features: int, kernel: str) -> torch.Tensor:
        # compiled graphs (the only callers of the op) trace the torch path off the CPU and for "triton"
        off_native = not values.is_cpu or native.wants_triton(kernel or None)
        name = "torch" if off_native else native.resolve_kernel(kernel or None)
        if name == "torch":
            return torch_path(x, values, index, row_offsets, bias, in_features).float()
        return native_path(x, values, index, row_offsets, bias, in_features, name)

    return impl


def native_linear_op(name: str, index: str, impl):
    """`impl` as the custom op `prunescope::<name>`, whose index buffer (mask, col_indices) is `index`."""
    op = torch.library.custom_op(
        f"prunescope::{name}",
        mutates_args=(),
        schema=f"(Tensor x, Tensor values, Tensor {index}, Tensor row_offsets, Tensor? bias, "
        "int in_features, str kernel) -> Tensor",
    )(impl)

    @op.register_fake
    def _(x, values, index, row_offsets, bias, in_features, kernel):
        return x.new_empty((x.shape[0], row_offsets.shape[0] - 1), dtype=torch.float32)

    return op


_bitmask_linear_impl = native_linear_impl(
    lambda x, values, mask, _offsets, bias, in_features: bitmask_torch(x, values, mask, bias, in_features),
    native.bitmask_matmul,
)
bitmask_linear = native_linear_op("bitmask_linear", "mask", _bitmask_linear_impl)


@dataclass(frozen=True)
class NativeOptions:
    """`kernel` pins a CPU path ("avx512", "avx2", "scalar", or "torch": the device-resident path every
    other device runs) or, for the formats that have one, the GPU's "triton" kernel (`formats.gpu`); None
    defers to `$PRUNESCOPE_KERNEL` or the best one available, at each call."""

    kernel: str | None = None

    def __post_init__(self) -> None:
        if self.kernel is not None and self.kernel.strip().lower() not in native.KERNELS:
            raise PrunescopeError(f"unknown kernel {self.kernel!r}; choose one of {native.KERNELS}")


class NativeFormat:
    """What the formats the native CPU kernels run share (mixed in before `SparseLinear`): the `kernel`
    option, where they run, and `from_dense`'s checks before the format's own `_from_weight`."""

    Options = NativeOptions
    has_triton: ClassVar[bool] = False  # a Triton kernel in `formats.gpu` reads this format's storage

    @classmethod
    def check_support(cls, dtype: torch.dtype, device: torch.device | str) -> None:
        native.check_support(cls.format_name, dtype, device)

    @classmethod
    @torch.no_grad()
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, kernel: str | None = None):
        _check_weight(weight)
        cls.check_support(weight.dtype, weight.device)
        return cls._from_weight(weight.detach(), bias, kernel)

    @classmethod
    def _from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str | None):
        """`from_dense` of a checked, detached weight."""
        raise NotImplementedError

    def _hold(self, kernel: str | None, **buffers: torch.Tensor) -> None:
        """Keep the `kernel` option and register `buffers`, validated now (`_buffers_changed`) and after every
        `load_state_dict`."""
        self.kernel = kernel
        self.register_load_state_dict_post_hook(_reloaded)
        for name, tensor in buffers.items():
            self.register_buffer(name, tensor)
        self._buffers_changed()

    def resolve_path(self, on_cpu: bool) -> str:
        """The path a call takes: "triton" when `kernel` (else `$PRUNESCOPE_KERNEL`) asks for it and the
        format has one; else a native ISA on the CPU (or "torch" when forced) and "torch" elsewhere.  An
        explicit `kernel="triton"` on a format without a Triton path is an error; the variable is not."""
        name = self.kernel or native.env_kernel()  # the variable read once: this runs on every call
        if native.is_triton(name):
            if self.has_triton:
                return native.TRITON
            if self.kernel is not None:
                raise PrunescopeError(f"{self.format_name} has no Triton kernel; it runs 'torch' off the CPU")
            name = None
        if not on_cpu:
            return "torch"
        return native.resolve_kernel(name or native.best_kernel())

    def _by_path(self, x2: torch.Tensor, path: str) -> torch.Tensor:
        """y for rows x2 on `path` (`resolve_path`'s, or "torch" where a compiled graph traces)."""
        if path == "torch":
            return self._torch(x2)
        return self._triton(x2) if path == native.TRITON else self._native(x2, path)


class TritonBitmask:
    """The Triton decode kernel of the bitmask formats (mixed in before `NativeFormat`): values, or int8
    codes times the row scales of a `scales` buffer (`formats.gpu.triton_bitmask`)."""

    has_triton = True

    def _triton(self, x2: torch.Tensor) -> torch.Tensor:
        from .gpu import triton_bitmask

        if x2.shape[0] > triton_bitmask.MAX_TOKENS:  # prefill: expand once, one GEMM (see formats.gpu)
            return self._torch(x2)
        scales = self._buffers.get("scales")
        return triton_bitmask.bitmask_matmul(
            x2, self.values, self.mask, self.row_offsets, self.bias, self.in_features, scales
        )


def _reloaded(module: NativeFormat, _incompatible_keys) -> None:
    module._buffers_changed()  # load_state_dict copies into the buffers in place: new offsets, new blocks


class BufferedSparseLinear(NativeFormat, SparseLinear):
    """What bitmask and csr16 share: `values` / `row_offsets` buffers, native CPU kernels, the torch path
    elsewhere, and buffers validated once (at construction, after `.to()` / `_apply` and after
    `load_state_dict`), so a call only checks its input."""

    index_name: ClassVar[str] = ""  # the buffer that places the values in their rows: "mask", "col_indices"

    def __init__(
        self,
        values: torch.Tensor,
        index: torch.Tensor,
        row_offsets: torch.Tensor,
        in_features: int,
        bias: torch.Tensor | None = None,
        kernel: str | None = None,
    ) -> None:
        super().__init__(in_features, row_offsets.numel() - 1, bias)
        self._hold(kernel, values=values, **{self.index_name: index}, row_offsets=row_offsets)

    @property
    def _layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.values, self._buffers[self.index_name], self.row_offsets

    def _check_buffers(self) -> None:
        """Format-specific checks of the index and offsets buffers."""
        raise NotImplementedError

    def _buffers_changed(self) -> None:
        """Validate the buffers and cache what every call needs: tile blocks, CPU or not, float32 bias."""
        if self.values.dtype not in native.DTYPE_CODES:
            raise PrunescopeError(
                f"unsupported weight dtype {self.values.dtype}; use float32, bfloat16 or float16"
            )
        for name, t in self._buffers.items():
            if t is not None and not t.is_contiguous():
                self._buffers[name] = t.contiguous()
        self._check_buffers()
        if len({t.device for t in self._layout}) != 1:
            raise PrunescopeError(f"{self.format_name} buffers must be on one device")
        self._on_cpu = self.values.is_cpu
        elsize = torch.empty((), dtype=expand.compute_dtype(self.values)).element_size()
        self._blocks = expand.row_blocks(self.row_offsets, self.in_features, elsize)
        bias = self.bias
        self._bias32 = None if bias is None else bias.detach().float().contiguous()
        self._cache_kernel_args()

    def _cache_kernel_args(self) -> None:
        """What a format's one-call native fast path needs besides x, computed when the buffers change."""

    def __setstate__(self, state) -> None:
        # deepcopy and unpickling rebuild the buffers: the cached addresses must follow them
        super().__setstate__(state)
        self._buffers_changed()

    def _apply(self, fn, recurse: bool = True):
        module = super()._apply(fn, recurse)
        self._buffers_changed()
        return module

    @property
    def path(self) -> str:
        """The path a call takes now (see `NativeFormat.resolve_path`)."""
        return self.resolve_path(self._on_cpu)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def weight_bytes(self) -> dict[str, int]:
        return self.buffer_bytes("values", self.index_name, "row_offsets")

    def _torch(self, x2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _native_matmul(
        x, values, index, row_offsets, bias, in_features, kernel, checked=False
    ) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _linear_op(x, values, index, row_offsets, bias, in_features, kernel) -> torch.Tensor:
        raise NotImplementedError

    def _native(self, x2: torch.Tensor, kernel: str) -> torch.Tensor:
        return self._native_matmul(x2, *self._layout, self._bias32, self.in_features, kernel, checked=True)

    def _op(self, x2: torch.Tensor) -> torch.Tensor:
        return self._linear_op(x2, *self._layout, self.bias, self.in_features, self.kernel or "")

    def _run(self, x2: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self._op(x2)  # compiled graphs call the custom op, which checks everything itself
        # Eager calls skip the custom-op dispatcher (tens of microseconds a call).
        return self._by_path(x2, self.path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows_forward(x, self._run)


class BitmaskLinear(TritonBitmask, BufferedSparseLinear):
    """A Linear whose pruned weight is stored as a per-row bitmask plus packed non-zeros.

    On CPU the native kernels run (`kernel` pins a path, see `NativeOptions`); on any other device, or
    with `kernel="torch"`, the pure-torch path (`formats.expand`).  The output has the input's dtype;
    accumulation is float32 on CPU.
    """

    format_name = "bitmask"
    index_name = "mask"
    _native_matmul = staticmethod(native.bitmask_matmul)
    _linear_op = staticmethod(bitmask_linear)

    def _check_buffers(self) -> None:
        native.check_bitmask_buffers(self.mask, self.row_offsets, self.in_features)

    @classmethod
    def _from_weight(
        cls, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str | None
    ) -> BitmaskLinear:
        nonzero = weight != 0
        values = weight[nonzero].contiguous()  # boolean indexing walks row-major: rows stay packed in order
        return cls(values, pack_bitmask(nonzero), row_offsets_of(nonzero), weight.shape[1], bias, kernel)

    def to_dense(self) -> torch.Tensor:
        dense = torch.zeros(
            self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device
        )
        return dense.masked_scatter_(unpack_bitmask(self.mask, self.in_features), self.values)

    def flops_per_token(self) -> int:
        # "Load sparse, compute dense": the kernel expands each 16-weight chunk, zeros included, and
        # multiplies all of it (the torch path expands whole rows). It saves memory traffic, not arithmetic.
        return 2 * self.in_features * self.out_features

    def _torch(self, x2: torch.Tensor) -> torch.Tensor:
        return bitmask_torch(x2, self.values, self.mask, self.bias, self.in_features, self._blocks)

    def _cache_kernel_args(self) -> None:
        if self.values.is_cpu:
            self._dtype_code = native.DTYPE_CODES[self.values.dtype]
            bias = 0 if self._bias32 is None else self._bias32.data_ptr()
            values, mask, offsets = (t.data_ptr() for t in (self.values, self.mask, self.row_offsets))
            self._kernel_args = (values, self.values.numel(), mask, offsets, bias)

    def _native(self, x2: torch.Tensor, kernel: str) -> torch.Tensor:
        # One call per token at decode: the buffers' addresses were cached when they were set (validated
        # then), so only x is checked here; many tokens take the panel path of `native.bitmask_matmul`.
        if x2.shape[0] >= native.PANEL_MIN_TOKENS or native._ext is None:
            return super()._native(x2, kernel)
        x2 = native.kernel_input(x2)
        return native.rows_matmul(
            native._ext.bitmask_matmul,
            kernel,
            self._dtype_code,
            x2,
            self.in_features,
            self.out_features,
            self._kernel_args,
        )
