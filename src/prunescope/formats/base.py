"""What every sparse-weight Linear replacement provides, so structure, study and bench treat them alike."""

from __future__ import annotations

import torch
from torch import nn


class SparseLinear(nn.Module):
    """Base class of the Linear replacements in `prunescope.formats`.

    A subclass stores the weight of an `nn.Linear` (out_features x in_features, already pruned) in its own
    format and computes `y = x @ W.T + bias` for any leading batch dims. It must implement:

    - `from_dense(weight, bias) -> Self` (classmethod): build from a dense (out, in) weight.
    - `forward(x)`.
    - `to_dense() -> Tensor`: the (out, in) weight it represents, zeros included.
    - `nnz` (property): number of stored non-zero weights.
    - `weight_bytes() -> dict[str, int]`: bytes per stored buffer of the weight, at their real dtypes
      (e.g. {"values": ..., "col_indices": ..., "crow_indices": ...}); the bias is accounted separately.
    """

    format_name: str = "sparse"

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> SparseLinear:
        raise NotImplementedError

    def to_dense(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def nnz(self) -> int:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        raise NotImplementedError

    def weight_bytes(self) -> dict[str, int]:
        raise NotImplementedError

    def flops_per_token(self) -> int:
        """Multiply-add FLOPs the kernel executes per input token (2 per stored non-zero by default)."""
        return 2 * self.nnz

    def stored_bytes(self) -> int:
        """Weight buffers plus bias, the figure the structure table reports."""
        bias = self.bias.numel() * self.bias.element_size() if self.bias is not None else 0
        return sum(self.weight_bytes().values()) + bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}"
