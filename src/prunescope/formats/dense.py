"""A dense weight behind the SparseLinear interface: what `auto` keeps where no sparse format is faster."""

from __future__ import annotations

import torch
from torch import nn

from .base import SparseLinear


class DenseLinear(SparseLinear):
    format_name = "dense"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(weight.shape[1], weight.shape[0], bias)
        self.register_buffer("weight", weight.detach().clone())

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> DenseLinear:
        return cls(weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    def to_dense(self) -> torch.Tensor:
        return self.weight

    @property
    def nnz(self) -> int:
        return int(torch.count_nonzero(self.weight))

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    def flops_per_token(self) -> int:
        return 2 * self.in_features * self.out_features

    def weight_bytes(self) -> dict[str, int]:
        return {"values": self.weight.numel() * self.weight.element_size()}
