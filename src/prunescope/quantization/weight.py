"""A quantized (out, in) weight at real storage, and round-to-nearest quantization (RTN).

`QuantizedWeight` is what every path produces (RTN here, GPTQ and the joint SparseGPT pass in `gptq.py`) and
what `QuantizedLinear` stores: the packed codes, one scale per (row, group) at the weight's floating dtype,
and for asymmetric quantizers one integer zero point per (row, group) kept as uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PrunescopeError
from .base import Quantizer
from .registry import QuantOptions, get_quantizer

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype the scales are stored at: the weight's own floating dtype (float64 weights keep float32)."""
    if dtype not in _FLOAT_DTYPES:
        raise PrunescopeError(f"cannot quantize a {dtype} weight; expected a floating-point weight")
    return torch.float32 if dtype == torch.float64 else dtype


@dataclass
class QuantizedWeight:
    """Packed codes + per-(row, group) scales (+ zero points). `group_size` = in_features when per row."""

    quantizer_name: str
    shape: tuple[int, int]
    group_size: int
    packed: torch.Tensor
    scales: torch.Tensor  # (out, groups), floating storage dtype
    zeros: torch.Tensor | None  # (out, groups) uint8, asymmetric quantizers only

    @property
    def quantizer(self) -> Quantizer:
        return get_quantizer(self.quantizer_name)

    @property
    def groups(self) -> int:
        return self.shape[1] // self.group_size

    @classmethod
    def from_codes(
        cls,
        quantizer: Quantizer,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor | None,
        group_size: int,
        dtype: torch.dtype,
    ) -> QuantizedWeight:
        """Pack (out, in) integer-valued codes; scales/zeros (out, groups) fp32 from the algorithm."""
        return cls(
            quantizer.name,
            (int(codes.shape[0]), int(codes.shape[1])),
            group_size,
            quantizer.pack(codes),
            scales.to(storage_dtype(dtype)).contiguous(),
            None if zeros is None else zeros.to(torch.uint8).contiguous(),
        )

    def codes(self) -> torch.Tensor:
        """(out, in) int32 codes."""
        return self.quantizer.unpack(self.packed, self.shape[1])

    def expanded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scales and zeros repeated to (out, in), fp32."""
        scale = self.scales.float().repeat_interleave(self.group_size, dim=1)
        zero = None if self.zeros is None else self.zeros.float().repeat_interleave(self.group_size, dim=1)
        return scale, zero

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The (out, in) weight this represents, computed in fp32, returned at `dtype` (default: scales')."""
        scale, zero = self.expanded()
        dense = self.quantizer.dequantize(self.codes().float(), scale, zero)
        return dense.to(dtype or self.scales.dtype)

    def nonzero(self, codes: torch.Tensor | None = None) -> torch.Tensor:
        """(out, in) bool: weights that dequantize to a non-zero value; `codes`: `self.codes()`, when the
        caller has them already (unpacking is a pass over the weight)."""
        codes = self.codes() if codes is None else codes
        if self.zeros is None:
            return codes != 0
        return codes != self.zeros.to(torch.int32).repeat_interleave(self.group_size, dim=1)

    @property
    def nnz(self) -> int:
        return int(self.nonzero().sum())

    def weight_bytes(self) -> dict[str, int]:
        parts = {"values": self.packed, "scales": self.scales, "zeros": self.zeros}
        return {k: t.numel() * t.element_size() for k, t in parts.items() if t is not None}

    def bits_per_weight(self) -> float:
        return 8 * sum(self.weight_bytes().values()) / (self.shape[0] * self.shape[1])

    def to(self, device: torch.device | str) -> QuantizedWeight:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QuantizedWeight(
            self.quantizer_name,
            self.shape,
            self.group_size,
            move(self.packed),
            move(self.scales),
            move(self.zeros),
        )


def check_weight(weight: torch.Tensor) -> None:
    if weight.dim() != 2:
        raise PrunescopeError(f"expected a 2-D (out, in) weight, got shape {tuple(weight.shape)}")
    storage_dtype(weight.dtype)


@torch.no_grad()
def rtn_quantize(weight: torch.Tensor, options: QuantOptions) -> QuantizedWeight:
    """Round-to-nearest quantization of `weight` (out, in) as it is (pruned zeros stay exactly zero).

    Parameters are computed per (row, group) from the weight itself, in fp32.
    """
    check_weight(weight)
    quantizer = options.quantizer
    rows, cols = weight.shape
    group = options.group_for(cols)
    groups = cols // group
    w = weight.detach().to(torch.float32).reshape(rows * groups, group)
    scale, zero = quantizer.params(w)
    codes = quantizer.codes(w, scale.unsqueeze(1), None if zero is None else zero.unsqueeze(1))
    return QuantizedWeight.from_codes(
        quantizer,
        codes.reshape(rows, cols),
        scale.reshape(rows, groups),
        None if zero is None else zero.reshape(rows, groups),
        group,
        weight.dtype,
    )
