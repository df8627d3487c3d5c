"""int8: symmetric, one scale per output row (issue 25's RTN int8).

scale = max|w_row| / 127, code = clamp(round(w / scale), −127, 127), w ≈ scale · code. A row that is all
zero gets scale 1 (any positive scale keeps it exactly zero). Zero always maps to code 0, so a pruned weight
dequantizes to exactly 0. Storage: one int8 per code, row-major (out, in) — the layout
`torch.ops.aten._weight_int8pack_mm` takes.
"""

from __future__ import annotations

import torch

from .base import Quantizer


class Int8Quantizer(Quantizer):
    name = "int8"
    bits = 8
    qmin = -127
    qmax = 127
    symmetric = True
    grouped = False
    code_dtype = torch.int8

    def params(self, w: torch.Tensor) -> tuple[torch.Tensor, None]:
        scale = w.abs().amax(dim=1) / self.qmax
        return torch.where(scale == 0, torch.ones_like(scale), scale), None

    def codes(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
        return torch.clamp(torch.round(w / scale), self.qmin, self.qmax)

    def dequantize(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
        return scale * codes

    def pack(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.to(torch.int8).contiguous()

    def unpack(self, packed: torch.Tensor, in_features: int) -> torch.Tensor:
        return packed.to(torch.int32)
