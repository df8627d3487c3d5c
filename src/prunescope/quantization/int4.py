"""int4: asymmetric min-max per group of consecutive input columns (GPTQ's `Quantizer`, sym=False, 4 bits).

Per row of a group: lo = min(w, 0), hi = max(w, 0) (the range always holds 0); if lo = hi = 0 the reference
uses lo = −1, hi = +1. scale = (hi − lo) / 15, zero = round(−lo / scale) ∈ [0, 15],
code = clamp(round(w / scale) + zero, 0, 15), w ≈ scale · (code − zero). A weight of 0 gets code = zero and
dequantizes to exactly 0. Storage: two codes per uint8 along each row, column 2k in the low nibble and 2k+1
in the high one (a row with odd in_features ends in a half-used byte); zeros are kept as one uint8 each.
"""

from __future__ import annotations

import torch

from .base import Quantizer


class Int4Quantizer(Quantizer):
    name = "int4"
    bits = 4
    qmin = 0
    qmax = 15
    symmetric = False
    grouped = True
    code_dtype = torch.uint8

    def params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        lo = torch.minimum(w.min(dim=1).values, zeros)
        hi = torch.maximum(w.max(dim=1).values, zeros)
        empty = (lo == 0) & (hi == 0)
        lo = torch.where(empty, -torch.ones_like(lo), lo)
        hi = torch.where(empty, torch.ones_like(hi), hi)
        scale = (hi - lo) / self.qmax
        return scale, torch.round(-lo / scale)

    def codes(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
        return torch.clamp(torch.round(w / scale) + zero, self.qmin, self.qmax)

    def dequantize(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
        return scale * (codes - zero)

    def pack(self, codes: torch.Tensor) -> torch.Tensor:
        c = codes.to(torch.uint8)
        if c.shape[1] % 2:
            c = torch.cat([c, c.new_zeros(c.shape[0], 1)], dim=1)
        return (c[:, 0::2] | (c[:, 1::2] << 4)).contiguous()

    def unpack(self, packed: torch.Tensor, in_features: int) -> torch.Tensor:
        p = packed.to(torch.int32)
        codes = torch.stack([p & 0xF, p >> 4], dim=2).reshape(packed.shape[0], -1)
        return codes[:, :in_features]
