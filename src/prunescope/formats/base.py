"""The contract every sparse format keeps, so convert, structure, study and bench treat them alike.

A format is one file that defines a `SparseFormat` (usually a `SparseLinear` subclass) and one line in
`prunescope.formats.FORMATS`.  Its contract:

- `format_name`: the registry name.
- `Options`: a small frozen dataclass of the keyword options `from_dense` takes (BSR's `block_size`,
  auto's token counts); `NoOptions` when there are none.  `options(...)` validates a dict or an instance.
- `check_support(dtype, device)` (classmethod): raise a one-line `PrunescopeError` naming the reason when
  the format cannot run there; the default accepts everything.
- `from_dense(weight, bias, **options) -> SparseLinear` (classmethod): build from a dense (out, in)
  weight; it runs `check_support` first, so a module that is built can run.
- `lossless`: True when `to_dense()` gives the pruned weight back bit for bit (every format but a
  quantizing one); `convert` keeps the dense weights of a lossy format so that `revert` stays exact.
- `clone()` (on the module): an independent copy with its own weight storage, what cold-cache timing
  rotates; `SparseLinear` gives it to every format, sparse compressed and subclass tensors included.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import PrunescopeError


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a format that takes none."""


def option_values(options: Any) -> dict[str, Any]:
    """The fields of an options dataclass as keyword arguments (not deep-copied, unlike `asdict`)."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


class SparseFormat:
    """The factory protocol of a `FORMATS` entry (see the module docstring)."""

    format_name: ClassVar[str] = "sparse"
    Options: ClassVar[type] = NoOptions
    lossless: ClassVar[bool] = True

    @classmethod
    def check_support(cls, dtype: torch.dtype, device: torch.device | str) -> None:
        """Raise a one-line PrunescopeError when this format cannot run on `device` in `dtype`."""
        return None

    @classmethod
    def options(cls, options: Any = None) -> Any:
        """`options` (None, a mapping, or an instance of `cls.Options`) as a validated `cls.Options`."""
        if options is None:
            return cls.Options()
        if isinstance(options, cls.Options):
            return options
        if not isinstance(options, Mapping):
            raise PrunescopeError(
                f"options of format {cls.format_name!r} must be a {cls.Options.__name__} or a dict, "
                f"not {type(options).__name__}"
            )
        known = [f.name for f in dataclasses.fields(cls.Options)]
        unknown = [k for k in options if k not in known]
        if unknown:
            choices = ", ".join(known) or "none"
            raise PrunescopeError(
                f"format {cls.format_name!r} has no option {unknown[0]!r}; its options: {choices}"
            )
        return cls.Options(**options)

    @classmethod
    def options_from(cls, settings: Mapping[str, Any]) -> Any:
        """The options this format declares, taken from a flat `settings` mapping (others ignored): how a
        benchmark hands `block_size`, `n_tokens` or `cache` to whichever format declares them."""
        known = {f.name for f in dataclasses.fields(cls.Options)}
        return cls.options({k: v for k, v in settings.items() if k in known})

    @classmethod
    def from_dense(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None, **options: Any
    ) -> SparseLinear:
        raise NotImplementedError

    @classmethod
    def build(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None, options: Any = None
    ) -> SparseLinear:
        """`from_dense` with validated options (a dict, an `Options` instance or None)."""
        return cls.from_dense(weight, bias, **option_values(cls.options(options)))


class SparseLinear(SparseFormat, nn.Module):
    """Base class of the Linear replacements in `prunescope.formats`.

    A subclass stores the weight of an `nn.Linear` (out_features x in_features, already pruned) in its own
    format and computes `y = x @ W.T + bias` for any leading batch dims. Besides `SparseFormat`'s
    classmethods it implements:

    - `forward(x)`.
    - `to_dense() -> Tensor`: the (out, in) weight it represents, zeros included.
    - `nnz` (property): number of stored non-zero weights.
    - `weight_bytes() -> dict[str, int]`: bytes per stored buffer of the weight, at their real dtypes
      (e.g. {"values": ..., "col_indices": ..., "crow_indices": ...}); the bias is accounted separately.
    """

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

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

    def rows_forward(self, x: torch.Tensor, run) -> torch.Tensor:
        """`run` on x as (n, in) rows; the result back in x's dtype and leading dims."""
        if x.shape[-1] != self.in_features:
            raise PrunescopeError(
                f"expected last dim {self.in_features}, got input of shape {tuple(x.shape)}"
            )
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        y = run(x2)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def buffer_bytes(self, *names: str) -> dict[str, int]:
        """{name: bytes} of the named buffers, at their real dtypes: a `weight_bytes` made of buffers."""
        return {name: self._buffers[name].numel() * self._buffers[name].element_size() for name in names}

    def flops_per_token(self) -> int:
        """Multiply-add FLOPs the kernel executes per input token (2 per stored non-zero by default)."""
        return 2 * self.nnz

    def stored_bytes(self) -> int:
        """Weight buffers plus bias, the figure the structure table reports."""
        bias = self.bias.numel() * self.bias.element_size() if self.bias is not None else 0
        return sum(self.weight_bytes().values()) + bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}"

    def clone(self) -> SparseLinear:
        """An independent copy: the same format, options and attributes, with its own copy of every
        weight tensor (cold-cache timing rotates such copies: no timed call finds its weight cached)."""
        # deepcopy copies a tensor through its storage, which torch's sparse compressed tensors (CSR, BSR)
        # lack and a tensor subclass (2:4 semi-structured) keeps inside: those are cloned here, and deepcopy
        # takes the clones from its memo.
        tensors = [t for t in [*self._buffers.values(), *vars(self).values()] if isinstance(t, torch.Tensor)]
        memo = {id(t): t.clone() for t in tensors if not _has_plain_storage(t)}
        return copy.deepcopy(self, memo)


def _has_plain_storage(tensor: torch.Tensor) -> bool:
    return tensor.layout == torch.strided and type(tensor) in (torch.Tensor, nn.Parameter)


def clone_module(module: nn.Module) -> nn.Module:
    """An independent copy of a format's module (`SparseLinear.clone`) or of a dense one (deepcopy)."""
    return module.clone() if isinstance(module, SparseLinear) else copy.deepcopy(module)
