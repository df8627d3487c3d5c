"""Block Sparse Row weights executed with torch's BSR kernels (MKL on CPU, cuSPARSE/Triton on CUDA).

A block of `block_size` x `block_size` weights is stored whole as soon as one of its weights is non-zero,
so the kernel multiplies (and the memory system moves) the explicit zeros inside kept blocks too. At
unstructured sparsity almost every 16x16 block keeps a non-zero until s is very high; the format pays off
only when pruning left whole blocks empty.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..errors import PrunescopeError
from .csr import INT32_MAX, CompressedRowLinear, check_matmul, quiet_sparse

DEFAULT_BLOCK_SIZE = 16


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise PrunescopeError(f"BSR block size must be an integer >= 1, got {block_size!r}")


@dataclass(frozen=True)
class BSROptions:
    """Square blocks of `block_size` x `block_size` weights; it must divide both weight dimensions."""

    block_size: int = DEFAULT_BLOCK_SIZE

    def __post_init__(self) -> None:
        _check_block_size(self.block_size)


def _check_blocks(shape: tuple[int, int], block_size: int) -> None:
    _check_block_size(block_size)
    out_features, in_features = shape
    if out_features % block_size or in_features % block_size:
        raise PrunescopeError(
            f"BSR block size {block_size} does not divide the weight shape {out_features}x{in_features}"
        )


class BSRLinear(CompressedRowLinear):
    """A Linear whose (out, in) weight is a torch sparse BSR tensor."""

    format_name = "bsr"
    Options = BSROptions

    @classmethod
    def check_support(cls, dtype: torch.dtype, device: torch.device | str) -> None:
        """Raise a clear error when this backend cannot multiply a BSR matrix of `dtype`."""
        device = torch.device(device)
        probe = quiet_sparse(
            torch.sparse_bsr_tensor,
            torch.tensor([0, 1], dtype=torch.int32),
            torch.tensor([0], dtype=torch.int32),
            torch.ones(1, 16, 16, dtype=dtype),
            (16, 16),
            device=device,
        )
        check_matmul("BSR", probe, torch.ones(16, 1, dtype=dtype, device=device))

    @classmethod
    def from_dense(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None, block_size: int = DEFAULT_BLOCK_SIZE
    ) -> BSRLinear:
        if weight.dim() != 2:
            raise PrunescopeError(f"expected a 2-D (out, in) weight, got shape {tuple(weight.shape)}")
        _check_blocks(tuple(weight.shape), block_size)
        cls.check_support(weight.dtype, weight.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Sparse BSR tensor support is in beta.*")
            bsr = weight.detach().to_sparse_bsr((block_size, block_size))
        # int32 indices, as for CSR: smaller and, on CPU, faster; int64 only when a count would overflow.
        index_dtype = torch.int32 if max(weight.shape + (bsr.values().numel(),)) <= INT32_MAX else torch.int64
        weight_bsr = quiet_sparse(
            torch.sparse_bsr_tensor,
            bsr.crow_indices().to(index_dtype),
            bsr.col_indices().to(index_dtype),
            bsr.values(),
            weight.shape,
            device=weight.device,
        )
        return cls(weight_bsr, bias)

    @property
    def block_size(self) -> int:
        return int(self.weight.values().shape[-1])

    @property
    def blocks(self) -> int:
        return int(self.weight.col_indices().numel())

    def to_dense(self) -> torch.Tensor:
        return self.weight.to_dense()

    @property
    def nnz(self) -> int:
        """True non-zeros; the explicit zeros inside stored blocks are not counted here."""
        return int(torch.count_nonzero(self.weight.values()))

    def flops_per_token(self) -> int:
        # The block kernel multiplies every stored value, explicit zeros included.
        return 2 * int(self.weight.values().numel())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block_size={self.block_size}, blocks={self.blocks}"
