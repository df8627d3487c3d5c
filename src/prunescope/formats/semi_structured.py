"""2:4 semi-structured weights: torch's `to_sparse_semi_structured` (CUTLASS / cuSPARSELt on CUDA).

At most 2 non-zeros in every group of 4 consecutive input weights of a row (prune with `--pattern 2:4`);
the kernels run on CUDA GPUs of compute capability >= 8.0 (Ampere and later) in float16 or bfloat16 only.
Everywhere else `check_support` refuses in one line, so the format is selectable in every list but in no
default one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PrunescopeError, first_line
from ..hardware.gpu import compute_capability
from .base import SparseLinear

MIN_CAPABILITY = (8, 0)
DTYPES = (torch.float16, torch.bfloat16)


def is_two_four(weight: torch.Tensor) -> bool:
    """At most 2 non-zeros in every group of 4 consecutive input weights of each row."""
    if weight.shape[-1] % 4:
        return False
    groups = (weight != 0).reshape(weight.shape[0], -1, 4).sum(-1)
    return bool((groups <= 2).all())


class SemiStructuredLinear(SparseLinear):
    """torch's 2:4 semi-structured weight (`to_sparse_semi_structured`, CUTLASS/cuSPARSELt on CUDA)."""

    format_name = "semi-structured"

    def __init__(self, weight_ss: torch.Tensor, bias: torch.Tensor | None, nnz: int) -> None:
        out_features, in_features = weight_ss.shape
        super().__init__(in_features, out_features, bias)
        # A tensor subclass kept as a plain attribute: this module is built where it runs, never moved.
        self.weight_ss = weight_ss
        self._nnz = nnz

    @classmethod
    def check_support(cls, dtype: torch.dtype, device: torch.device | str) -> None:
        device = torch.device(device)
        if device.type != "cuda":
            raise PrunescopeError(
                f"2:4 semi-structured kernels need CUDA (compute capability >= 8.0), not {device.type}"
            )
        if dtype not in DTYPES:
            raise PrunescopeError(f"2:4 semi-structured kernels need float16 or bfloat16, not {dtype}")
        capability = compute_capability(device)
        if capability < MIN_CAPABILITY:
            raise PrunescopeError(
                "2:4 semi-structured kernels need compute capability >= 8.0; this GPU has "
                f"{capability[0]}.{capability[1]}"
            )

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> SemiStructuredLinear:
        cls.check_support(weight.dtype, weight.device)
        if not is_two_four(weight):
            raise PrunescopeError("weights are not 2:4 (prune with --pattern 2:4)")
        from torch.sparse import to_sparse_semi_structured

        try:
            packed = to_sparse_semi_structured(weight.detach().contiguous())
        except (RuntimeError, NotImplementedError, ValueError) as error:
            raise PrunescopeError(f"to_sparse_semi_structured failed: {first_line(error)}") from None
        return cls(packed, bias, int(torch.count_nonzero(weight)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        out = F.linear(x.reshape(-1, self.in_features), self.weight_ss, self.bias)
        return out.reshape(*leading, self.out_features)

    def to_dense(self) -> torch.Tensor:
        return self.weight_ss.to_dense()

    @property
    def nnz(self) -> int:
        return self._nnz

    @property
    def dtype(self) -> torch.dtype:
        return self.weight_ss.dtype

    def flops_per_token(self) -> int:
        # The kernel multiplies the 2 kept slots of every group of 4, zeros in them included.
        return self.out_features * self.in_features

    def weight_bytes(self) -> dict[str, int]:
        # What the forward reads: packed values (cuSPARSELt folds the metadata into them) and metadata.
        parts = {name: getattr(self.weight_ss, name, None) for name in ("packed", "meta")}
        return {name: t.numel() * t.element_size() for name, t in parts.items() if t is not None}
