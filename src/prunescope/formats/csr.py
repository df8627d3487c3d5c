"""Compressed Sparse Row weights executed with torch's sparse kernels (MKL on CPU, cuSPARSE on CUDA)."""

from __future__ import annotations

import warnings

import torch

from ..errors import PrunescopeError, first_line
from .base import SparseLinear

# Measured here: int32 indices make torch's CPU CSR matmul 2-4x faster than the default int64, and halve
# the index bytes. int64 is kept only when a dimension would overflow int32.
INT32_MAX = 2**31 - 1


def quiet_sparse(constructor, *args, **kwargs) -> torch.Tensor:
    """`constructor` (torch.sparse_csr_tensor, torch.sparse_bsr_tensor) without its beta warnings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse (CSR|BSR) tensor support is in beta.*")
        warnings.filterwarnings("ignore", message=".*Sparse invariant checks.*")
        return constructor(*args, **kwargs)


def check_matmul(label: str, probe: torch.Tensor, rhs: torch.Tensor) -> None:
    """Multiply a tiny sparse `probe` once; an unsupported dtype/device becomes one clear PrunescopeError."""
    try:
        probe @ rhs
    except (RuntimeError, NotImplementedError) as error:
        raise PrunescopeError(
            f"torch {label} matmul does not support {str(probe.dtype).removeprefix('torch.')} on "
            f"{probe.device.type} ({first_line(error, 80)}); use --dtype float32 or another format"
        ) from None


class CompressedRowLinear(SparseLinear):
    """A Linear whose (out, in) weight is a torch compressed-row sparse tensor (CSR or BSR) with
    `crow_indices`, `col_indices` and `values`; forward = W @ x.T (+ bias), any leading batch dims."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        out_features, in_features = weight.shape
        super().__init__(in_features, out_features, bias)
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        out = (self.weight @ flat.T).T
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*leading, self.out_features)

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    def weight_bytes(self) -> dict[str, int]:
        parts = {
            "values": self.weight.values(),
            "col_indices": self.weight.col_indices(),
            "crow_indices": self.weight.crow_indices(),
        }
        return {name: t.numel() * t.element_size() for name, t in parts.items()}


class CSRLinear(CompressedRowLinear):
    """A Linear whose (out, in) weight is a torch sparse CSR tensor."""

    format_name = "csr"

    @classmethod
    def check_support(cls, dtype: torch.dtype, device: torch.device | str) -> None:
        """Raise a clear error when this backend cannot multiply a CSR matrix of `dtype`."""
        device = torch.device(device)
        one = torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32)
        probe = quiet_sparse(torch.sparse_csr_tensor, *one, torch.ones(1, dtype=dtype), (1, 1), device=device)
        check_matmul("CSR", probe, torch.ones(1, 1, dtype=dtype, device=device))

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> CSRLinear:
        cls.check_support(weight.dtype, weight.device)
        weight = weight.detach()
        nnz = int(torch.count_nonzero(weight))
        index_dtype = torch.int32 if max(*weight.shape, nnz) <= INT32_MAX else torch.int64
        # Built by hand rather than with Tensor.to_sparse_csr(), which (torch 2.13, CPU) leaves RSS ~2x the
        # CSR size higher than the CSR itself; this path allocates only the three buffers and a mask.
        nonzero = weight != 0
        crow = torch.zeros(weight.shape[0] + 1, dtype=index_dtype, device=weight.device)
        torch.cumsum(nonzero.sum(1), 0, out=crow[1:])
        columns = torch.arange(weight.shape[1], dtype=index_dtype, device=weight.device)
        col = columns.expand_as(weight)[nonzero]
        values = weight[nonzero]
        return cls(
            quiet_sparse(torch.sparse_csr_tensor, crow, col, values, weight.shape, device=weight.device), bias
        )

    def to_dense(self) -> torch.Tensor:
        # Scattered by hand: one (out, in) tensor plus an nnz-sized row index, nothing else.
        crow, col = self.weight.crow_indices(), self.weight.col_indices()
        rows = torch.repeat_interleave(
            torch.arange(self.out_features, device=crow.device), (crow[1:] - crow[:-1]).long()
        )
        dense = torch.zeros(self.weight.shape, dtype=self.dtype, device=crow.device)
        dense[rows, col.long()] = self.weight.values()
        return dense

    @property
    def nnz(self) -> int:
        return int(self.weight.values().numel())
