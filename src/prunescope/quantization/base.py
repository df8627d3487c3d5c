"""The interface every quantizer implements (one file per quantizer: `int8.py`, `int4.py`)."""

from __future__ import annotations

from typing import ClassVar

import torch


class Quantizer:
    """Per-row affine quantizer of a (rows, cols) fp32 slice: w ≈ scale · (code − zero).

    Subclasses set the class attributes and implement `params`, `codes`, `dequantize`, `pack`, `unpack`.
    `zero` is None for symmetric quantizers (code 0 means 0).
    """

    name: ClassVar[str]
    bits: ClassVar[int]
    qmin: ClassVar[int]
    qmax: ClassVar[int]
    symmetric: ClassVar[bool]
    grouped: ClassVar[bool]  # whether `group_size` applies (else one scale per output row)
    code_dtype: ClassVar[torch.dtype]  # dtype of the packed storage

    def params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(rows, cols) fp32 -> per-row scale (rows,) fp32 and zero (rows,) fp32 (or None)."""
        raise NotImplementedError

    def codes(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
        """Integer codes (fp32 holding integers) of `w` (rows, k); `scale`/`zero` are (rows, 1)."""
        raise NotImplementedError

    def dequantize(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def fake(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
        """Quantize then dequantize (what GPTQ's `quantize(x, scale, zero, maxq)` returns)."""
        return self.dequantize(self.codes(w, scale, zero), scale, zero)

    def pack(self, codes: torch.Tensor) -> torch.Tensor:
        """(out, in) integer codes -> storage tensor."""
        raise NotImplementedError

    def unpack(self, packed: torch.Tensor, in_features: int) -> torch.Tensor:
        """Storage tensor -> (out, in) int32 codes."""
        raise NotImplementedError

    def packed_bytes(self, count: int) -> int:
        """Bytes of `count` codes packed back to back (`bits` each, rounded up to whole bytes)."""
        return -(-count * self.bits // 8)
