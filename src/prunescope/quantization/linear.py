"""`QuantizedLinear`: a Linear whose weight is stored quantized, and the bytes of quantized sparse formats.

Forward paths (`kernel`: None = best available, "aten" = insist on torch's kernel, "dequant" = fallback):

- int8 on CPU, x in fp32/bf16/fp16: `torch.ops.aten._weight_int8pack_mm(x, codes_int8, scales)`, scales
  cast to x's dtype (cached per dtype).
- int4 on CPU, x in fp32/bf16/fp16, out_features % 16 == 0, group size in {32, 64, 128, 256}:
  `aten._convert_weight_to_int4pack_for_cpu(codes_int32, 2)` once (cached; same size as our packed codes)
  + `aten._weight_int4pack_mm_for_cpu(x, packed, group, scale_and_zero)`. torch's int4 convention is
  w = (code − 8) · s + z with a float offset z per group, layout (groups, out, 2) = [s, z]; ours is
  w = s · (code − zero) with an integer zero, so z = s · (8 − zero).
- anything else (other devices, dtypes or shapes): dequantize to x's dtype, then `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PrunescopeError
from .registry import QuantOptions, get_quantizer
from .weight import QuantizedWeight, rtn_quantize

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_INT4_GROUPS = (32, 64, 128, 256)
_INT32_MAX = 2**31 - 1
_KERNELS = (None, "aten", "dequant")


class QuantizedLinear(nn.Module):
    """y = x @ dequant(W).T + bias for any leading batch dims; buffers: values, scales (, zeros)."""

    format_name = "quantized"

    def __init__(
        self, quantized: QuantizedWeight, bias: torch.Tensor | None = None, kernel: str | None = None
    ):
        super().__init__()
        if kernel not in _KERNELS:
            raise PrunescopeError(f"unknown quantized kernel {kernel!r}; choose aten or dequant")
        self.out_features, self.in_features = quantized.shape
        self.quantizer_name = quantized.quantizer_name
        self.group_size = quantized.group_size
        self.kernel = kernel
        self.register_buffer("values", quantized.packed)
        self.register_buffer("scales", quantized.scales)
        self.register_buffer("zeros", quantized.zeros)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        self._cache: dict = {}

    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        options: QuantOptions | None = None,
        kernel: str | None = None,
    ) -> QuantizedLinear:
        """RTN-quantize a dense (out, in) weight (already pruned: its zeros stay exactly zero)."""
        return cls(rtn_quantize(weight, options or QuantOptions()), bias, kernel)

    @classmethod
    def from_quantized(
        cls, quantized: QuantizedWeight, bias: torch.Tensor | None = None, kernel: str | None = None
    ) -> QuantizedLinear:
        return cls(quantized, bias, kernel)

    @property
    def quantized(self) -> QuantizedWeight:
        return QuantizedWeight(
            self.quantizer_name,
            (self.out_features, self.in_features),
            self.group_size,
            self.values,
            self.scales,
            self.zeros,
        )

    def to_dense(self) -> torch.Tensor:
        """The dequantized (out, in) weight at the scales' dtype."""
        return self.quantized.dequantize()

    @property
    def nnz(self) -> int:
        return self.quantized.nnz

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    def weight_bytes(self) -> dict[str, int]:
        return self.quantized.weight_bytes()

    def bits_per_weight(self) -> float:
        return self.quantized.bits_per_weight()

    def stored_bytes(self) -> int:
        bias = self.bias.numel() * self.bias.element_size() if self.bias is not None else 0
        return sum(self.weight_bytes().values()) + bias

    def flops_per_token(self) -> int:
        return 2 * self.in_features * self.out_features

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"quantizer={self.quantizer_name}, group_size={self.group_size}"
        )

    def _apply(self, fn, recurse=True):  # .to()/.half() etc.: derived kernel buffers must be rebuilt
        self._cache = {}
        return super()._apply(fn, recurse)

    def kernel_path(self, x: torch.Tensor) -> str:
        """ "int8pack", "int4pack" or "dequant": what `forward` runs for this input."""
        if self.kernel == "dequant" or not (x.is_cpu and self.values.is_cpu) or x.dtype not in _KERNEL_DTYPES:
            path = "dequant"
        elif self.quantizer_name == "int8":
            path = "int8pack"
        elif (
            self.quantizer_name == "int4" and self.out_features % 16 == 0 and self.group_size in _INT4_GROUPS
        ):
            path = "int4pack"
        else:
            path = "dequant"
        if self.kernel == "aten" and path == "dequant":
            raise PrunescopeError(
                f"no torch weight-only kernel for {self.quantizer_name} with group {self.group_size}, "
                f"out_features {self.out_features}, {x.dtype} on {x.device}"
            )
        return path

    def _int8_scales(self, dtype: torch.dtype) -> torch.Tensor:
        key = ("int8", dtype)
        if key not in self._cache:
            self._cache[key] = self.scales.reshape(-1).to(dtype).contiguous()
        return self._cache[key]

    def _int4_operands(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if "int4pack" not in self._cache:
            codes = self.quantized.codes().contiguous()
            self._cache["int4pack"] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
        key = ("int4sz", dtype)
        if key not in self._cache:
            scale = self.scales.float()
            offset = scale * (8 - self.zeros.float())
            self._cache[key] = torch.stack([scale.T, offset.T], dim=-1).to(dtype).contiguous()
        return self._cache["int4pack"], self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise PrunescopeError(
                f"expected last dim {self.in_features}, got input of shape {tuple(x.shape)}"
            )
        path = self.kernel_path(x)
        if path == "dequant":
            return F.linear(
                x, self.to_dense().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype)
            )
        x2 = x.reshape(-1, self.in_features).contiguous()
        if path == "int8pack":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.values, self._int8_scales(x.dtype))
        else:
            packed, scale_zero = self._int4_operands(x.dtype)
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, self.group_size, scale_zero)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


# ---------------------------------------------------------------------------------------------------------
# Bytes of a sparse format whose values are quantized

STORAGE_FORMATS = ("dense", "bitmask", "csr", "csr16")


def quantized_storage_bytes(
    shape: tuple[int, int],
    nnz: int,
    format: str,
    options: QuantOptions | None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, int]:
    """Bytes per stored part of one (out, in) weight with `nnz` non-zeros in `format`, values quantized
    by `options` (None: values unquantized at `dtype`). Scales are stored at `dtype` (the weight's dtype).

    ======================  ==============================================================================
    part                    bytes
    ======================  ==============================================================================
    values      dense       out · in · elsize(dtype); int8: out · in; int4: out · ceil(in / 2) (per row)
                sparse      nnz · elsize(dtype); int8: nnz; int4: ceil(nnz / 2) (one packed stream)
    mask        bitmask     out · ceil(in / 16) · 2 (int16 words: 1 bit per weight)
    row_offsets bitmask     (out + 1) · 8 (int64)
                csr16       (out + 1) · 8 (int64)
    col_indices csr         nnz · 4 (int32; int64 = 8 if max(out, in, nnz) > 2³¹ − 1)
                csr16       nnz · 2 (uint16)
    crow_indices csr        (out + 1) · 4 (same index dtype as col_indices)
    scales      quantized   out · groups · elsize(dtype); groups = in / group_size (1 for int8 / per row)
    zeros       int4        out · groups · 1 (uint8; absent for symmetric int8)
    ======================  ==============================================================================

    Scales and zeros stay a dense (row, group) grid under every format: the sparse formats index only the
    values. The fp formats match `weight_bytes()` of `DenseLinear`, `BitmaskLinear`, `CSRLinear` and
    `CSR16Linear`; int8/int4 "dense" matches `QuantizedLinear.weight_bytes()`.
    """
    if format not in STORAGE_FORMATS:
        raise PrunescopeError(
            f"no byte count for format {format!r}; choose one of {', '.join(STORAGE_FORMATS)}"
        )
    out, in_features = (int(s) for s in shape)
    if not 0 <= nnz <= out * in_features:
        raise PrunescopeError(f"nnz {nnz} is outside [0, {out * in_features}] for shape {tuple(shape)}")
    elsize = torch.empty(0, dtype=dtype).element_size()
    parts: dict[str, int] = {}
    if options is None:
        parts["values"] = (out * in_features if format == "dense" else nnz) * elsize
    else:
        quantizer = get_quantizer(options.name)
        if format == "dense":
            parts["values"] = out * quantizer.packed_bytes(in_features)
        else:
            parts["values"] = quantizer.packed_bytes(nnz)
    if format == "bitmask":
        parts["mask"] = out * ((in_features + 15) // 16) * 2
        parts["row_offsets"] = (out + 1) * 8
    elif format == "csr":
        index = 4 if max(out, in_features, nnz) <= _INT32_MAX else 8
        parts["col_indices"] = nnz * index
        parts["crow_indices"] = (out + 1) * index
    elif format == "csr16":
        parts["col_indices"] = nnz * 2
        parts["row_offsets"] = (out + 1) * 8
    if options is not None:
        groups = in_features // options.group_for(in_features)
        parts["scales"] = out * groups * elsize
        if not quantizer.symmetric:
            parts["zeros"] = out * groups
    return parts


def bits_per_weight(parts: dict[str, int], shape: tuple[int, int]) -> float:
    """Stored bits per weight position (zeros included) of a `quantized_storage_bytes` result."""
    return 8 * sum(parts.values()) / (int(shape[0]) * int(shape[1]))
