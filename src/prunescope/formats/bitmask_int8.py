"""Bitmask over int8: 1 bit per weight plus the int8 codes of the kept weights, one float32 scale per row.

The weight is quantized by the quantization package's int8 RTN (symmetric, per output row: scale =
max|w_row| / 127, code = clamp(round(w / scale), -127, 127)), then stored like `formats.bitmask` with the
codes as its values.  A weight whose code is 0 (pruned, or too small for its row's scale) is not stored:
the bitmap marks exactly the non-zero codes, so `to_dense()` (the dequantized weight, scale * code) has
zeros exactly there.  One token moves (1 - s) + 1/8 bytes per weight against dense int8's 1: the byte bound
over a bandwidth-bound dense int8 kernel (`formats.dense_int8`, or `aten._weight_int8pack_mm` where that is
faster; benchmarks/bench_int8.py times both) is 1 / ((1 - s) + 1/8), 1.6x at s = 0.5.

Layout (all buffers, so `.to()` and `state_dict` carry them):
  values       (nnz,) int8                 the non-zero codes, row after row
  mask         (out, ceil(in / 16)) int16  bit j of word w set <=> code of column 16 * w + j is non-zero
  row_offsets  (out + 1,) int64            index in `values` of each row's first code
  scales       (out,) float32              the row scales (kept float32 under `.half()` and the like)

Forward on CPU: the native kernels (`kernel` pins "avx512", "avx2", "scalar" or "torch"); one to
PANEL_MIN_TOKENS - 1 tokens run the expand-and-FMA kernel (float32 accumulation, each row sum scaled once),
more tokens decompress panels of dequantized rows and multiply them with torch.mm.  Elsewhere, or when the
extension lacks these kernels: the pure-torch path (dequantize tile by tile, float32 GEMM).  The buffers are
validated once, when they are set (construction, `.to()`, `load_state_dict`), not on each call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PrunescopeError
from ..quantization import QuantOptions, rtn_quantize
from . import expand, native
from .base import SparseLinear
from .bitmask import NativeFormat, TritonBitmask, pack_bitmask, row_offsets_of, unpack_bitmask

_ext = native._ext
# The kernels arrived with issue 25: an extension built before them still serves the other formats.
HAS_NATIVE = _ext is not None and hasattr(_ext, "bitmask_int8_matmul")
_ISA = native._ISA
VARIANTS = {"best": 0, "vpshufb": 1}  # AVX-512 expand: VBMI2 vpexpandb where the CPU has it, or vpshufb


def has_vbmi2() -> bool:
    """Whether the AVX-512 path expands with VBMI2 (vpexpandb) on this CPU."""
    return bool(HAS_NATIVE and _ext.bitmask_int8_has_vbmi2())


def kernel_variant(kernel: str) -> str:
    """What a native path runs here, for reports: 'avx512-vbmi2', 'avx512-vpshufb', 'avx2', 'scalar'."""
    if kernel == "avx512":
        return "avx512-vbmi2" if has_vbmi2() else "avx512-vpshufb"
    return kernel


class BitmaskInt8Linear(TritonBitmask, NativeFormat, SparseLinear):
    """A Linear whose pruned weight is stored as a per-row bitmask over int8 codes with per-row scales.

    `kernel` pins a CPU path (see `formats.bitmask.NativeOptions`); the output has the input's dtype,
    accumulation is float32."""

    format_name = "bitmask-int8"
    lossless = False  # to_dense() is the dequantized weight: `convert` keeps the originals for revert

    def __init__(
        self,
        values: torch.Tensor,
        mask: torch.Tensor,
        row_offsets: torch.Tensor,
        scales: torch.Tensor,
        in_features: int,
        bias: torch.Tensor | None = None,
        kernel: str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(in_features, mask.shape[0], bias)
        self._dtype = dtype  # the dtype of the weight it represents (to_dense); the scales stay float32
        self._hold(kernel, values=values, mask=mask, row_offsets=row_offsets, scales=scales)

    # ------------------------------------------------------------------------------------ construction

    @classmethod
    def _from_weight(cls, weight: torch.Tensor, bias, kernel) -> BitmaskInt8Linear:
        """int8 RTN of the (pruned) weight, then the bitmask of its non-zero codes."""
        quantized = rtn_quantize(weight, QuantOptions("int8"))
        codes = quantized.packed  # (out, in) int8, row-major
        nonzero = codes != 0
        row_offsets = row_offsets_of(nonzero)
        values = codes[nonzero].contiguous()  # boolean indexing walks row-major: rows stay packed in order
        scales = quantized.scales.reshape(-1).float().contiguous()  # the stored scale, exactly, in fp32
        return cls(
            values, pack_bitmask(nonzero), row_offsets, scales, weight.shape[1], bias, kernel, weight.dtype
        )

    def _buffers_changed(self) -> None:
        """Validate the buffers once and cache what every call needs (float32 bias, tiles, CPU or not)."""
        for name, t in self._buffers.items():
            if t is not None and not t.is_contiguous():
                self._buffers[name] = t.contiguous()
        out, in_features = self.out_features, self.in_features
        values, mask, offsets, scales = self.values, self.mask, self.row_offsets, self.scales
        if (
            values.dtype != torch.int8
            or values.dim() != 1
            or mask.dtype != torch.int16
            or tuple(mask.shape) != (out, (in_features + 15) // 16)
            or offsets.dtype != torch.int64
            or tuple(offsets.shape) != (out + 1,)
            or scales.dtype != torch.float32
            or tuple(scales.shape) != (out,)
        ):
            raise PrunescopeError(
                "corrupt bitmask-int8 buffers (values int8 (nnz,), mask int16 (out, ceil(in/16)), "
                "row_offsets int64 (out + 1,), scales float32 (out,))"
            )
        if len({t.device for t in (values, mask, offsets, scales)}) != 1:
            raise PrunescopeError("bitmask-int8 buffers must be on one device")
        if self.bias is not None and tuple(self.bias.shape) != (out,):
            raise PrunescopeError(f"bias must have shape ({out},), got {tuple(self.bias.shape)}")
        # One host read per buffer change: the offsets must describe exactly the values, or a kernel would
        # read past them.
        ends = offsets[[0, -1]].tolist()
        if ends != [0, values.numel()]:
            raise PrunescopeError(
                f"corrupt bitmask-int8 buffers: row offsets span {ends}, values {values.numel()}"
            )
        self._on_cpu = values.is_cpu
        self._blocks = expand.row_blocks(offsets, in_features, 4)
        self._bias32 = None if self.bias is None else self.bias.detach().float().contiguous()
        self._bias_addr = 0 if self._bias32 is None else self._bias32.data_ptr()
        self._kernel_args = (
            in_features,
            out,
            values.data_ptr(),
            values.numel(),
            mask.data_ptr(),
            offsets.data_ptr(),
            scales.data_ptr(),
        )
        # the one-token kernel's arguments after x (native.rows_matmul), built once, not per call
        self._matmul_buffers = (*self._kernel_args[2:], self._bias_addr)

    def __setstate__(self, state) -> None:
        # deepcopy and unpickling rebuild the buffers: the cached kernel addresses must follow them
        super().__setstate__(state)
        self._buffers_changed()

    def _apply(self, fn, recurse: bool = True):
        scales = self.scales
        try:  # the weight dtype follows dtype conversions (.half(), .to(bf16)); the scales stay float32
            self._dtype = fn(torch.empty(0, dtype=self._dtype)).dtype
        except Exception:  # noqa: BLE001 - a function that only makes sense on real buffers: keep the dtype
            pass
        module = super()._apply(fn, recurse)
        moved = self._buffers["scales"]
        if moved.dtype != torch.float32:
            self._buffers["scales"] = scales.to(moved.device)  # from the float32 original, not re-rounded
        self._buffers_changed()
        return module

    # ------------------------------------------------------------------------------------ the contract

    @property
    def path(self) -> str:
        """The path a call takes now (see `NativeFormat.resolve_path`); "torch" on a CPU whose extension
        was built before these kernels."""
        path = self.resolve_path(self._on_cpu)
        return "torch" if path != native.TRITON and self._on_cpu and not HAS_NATIVE else path

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def flops_per_token(self) -> int:
        # load sparse, compute dense: every 16-lane word is multiplied whole, zeros included
        return 2 * self.in_features * self.out_features

    def weight_bytes(self) -> dict[str, int]:
        return self.buffer_bytes("values", "mask", "row_offsets", "scales")

    def _fill(self, tile: torch.Tensor, r0: int, r1: int, v0: int, v1: int) -> None:
        tile.zero_()
        tile.masked_scatter_(
            unpack_bitmask(self.mask[r0:r1], self.in_features), self.values[v0:v1].to(tile.dtype)
        )
        tile.mul_(self.scales[r0:r1, None])

    def dequantized(self) -> torch.Tensor:
        """The (out, in) dequantized weight in float32 (scale * code, zeros included)."""
        dense = torch.empty(
            self.out_features, self.in_features, dtype=torch.float32, device=self.values.device
        )
        self._fill(dense, 0, self.out_features, 0, self.values.numel())
        return dense

    def to_dense(self) -> torch.Tensor:
        return self.dequantized().to(self._dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, int8 codes, per-row float32 scales"

    # --------------------------------------------------------------------------------------- forward

    def _torch(self, x2: torch.Tensor) -> torch.Tensor:
        """Dequantize tile by tile (float32), F.linear: any device, the reference of the native paths."""
        return expand.tiled_linear(
            x2, self.bias, self._blocks, self.out_features, self.in_features, torch.float32, self._fill
        )

    def _args(self) -> tuple:
        """The kernels' buffer arguments, cached by `_buffers_changed` (buffers are replaced only through
        `.to()`, `load_state_dict` or the constructor; in-place writes keep their addresses)."""
        return self._kernel_args

    def _native(
        self, x2: torch.Tensor, kernel: str, variant: int = 0, panels: bool | None = None
    ) -> torch.Tensor:
        """y (n, out) float32 on a native path; `panels` None: panels from PANEL_MIN_TOKENS tokens on
        (never on the scalar path, which is the plain-C reference)."""
        x2 = native.kernel_input(x2)
        if panels is None:
            panels = x2.shape[0] >= native.PANEL_MIN_TOKENS and kernel != "scalar"
        if panels:
            return self._panels(x2, kernel, variant)
        return native.rows_matmul(
            _ext.bitmask_int8_matmul,
            kernel,
            variant,
            x2,
            self.in_features,
            self.out_features,
            self._matmul_buffers,
        )

    def unpack_rows(self, r0: int, r1: int, out: torch.Tensor, kernel: str, variant: int = 0) -> torch.Tensor:
        """Rows r0..r1 dequantized into `out` ((r1 - r0, in) contiguous float32) by a native path."""
        if (
            out.dtype != torch.float32
            or not out.is_contiguous()
            or tuple(out.shape) != (r1 - r0, self.in_features)
        ):
            raise PrunescopeError(f"unpack target must be contiguous float32 ({r1 - r0}, {self.in_features})")
        if not 0 <= r0 <= r1 <= self.out_features:
            raise PrunescopeError(f"rows {r0}..{r1} outside 0..{self.out_features}")
        in_features, n_out, values, nnz, mask, offsets, scales = self._args()
        threads = native.num_threads()
        args = (in_features, n_out, values, nnz, mask, offsets, scales, r0, r1, out.data_ptr())
        _ext.bitmask_int8_unpack(_ISA[kernel], threads, variant, *args)
        return out

    def _panels(self, x2: torch.Tensor, kernel: str, variant: int) -> torch.Tensor:
        """y = x @ W^T + bias, panel by panel: decompress dequantized rows (C), then torch.mm."""

        def unpack(r0: int, r1: int, tile: torch.Tensor) -> None:
            self.unpack_rows(r0, r1, tile, kernel, variant)

        return native.panel_matmul(x2, self.out_features, self.in_features, self._bias32, unpack)

    def _run(self, x2: torch.Tensor) -> torch.Tensor:
        # compiled graphs trace the torch path
        return self._by_path(x2, "torch" if torch.compiler.is_compiling() else self.path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows_forward(x, self._run)


def reference_linear(x: torch.Tensor, module: BitmaskInt8Linear) -> torch.Tensor:
    """x @ dequantized(W).T + bias in float32 (what every path is checked against)."""
    bias = None if module.bias is None else module.bias.float()
    return F.linear(x.float(), module.dequantized(), bias)
