"""Sparse weight formats and their Linear replacements.

`convert(model, names, "csr")` swaps pruned projections for sparse modules in place, releasing their dense
weights; `Conversion.revert()` puts the dense modules back with identical weights.  `options` are the
format's own (`convert(model, names, "bsr", {"block_size": 32})`, or a `BSROptions`); every format keeps the
contract of `formats.base.SparseFormat`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import PrunescopeError
from ..layers import is_conv1d, linear_weight, set_module
from ..util.heap import trim_heap
from .base import NoOptions, SparseFormat, SparseLinear
from .csr import CSRLinear

__all__ = [
    "lossless_formats",
    "FORMATS",
    "Conversion",
    "CSRLinear",
    "NoOptions",
    "SparseFormat",
    "SparseLinear",
    "check_format_support",
    "convert",
    "format_class",
]

# The registry of sparse formats: name -> "module:SparseFormat", imported on first use.  Each entry builds
# its module with `cls.from_dense(weight, bias, **options)`.  `semi-structured` runs only on CUDA GPUs of
# compute capability >= 8.0: it is selectable, never in a default list.
FORMATS: dict[str, str] = {
    "csr": "prunescope.formats.csr:CSRLinear",
    "bitmask": "prunescope.formats.bitmask:BitmaskLinear",
    "bitmask-int8": "prunescope.formats.bitmask_int8:BitmaskInt8Linear",
    "csr16": "prunescope.formats.csr16:CSR16Linear",
    "auto": "prunescope.formats.auto:AutoFormat",
    "bsr": "prunescope.formats.bsr:BSRLinear",
    "semi-structured": "prunescope.formats.semi_structured:SemiStructuredLinear",
}


def format_class(name: str) -> type[SparseFormat]:
    if name not in FORMATS:
        raise PrunescopeError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    module_name, _, attr = FORMATS[name].partition(":")
    import importlib

    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise PrunescopeError(f"format {name!r} is not available in this installation ({error})") from None


def lossless_formats(variants: list[str]) -> set[str]:
    """The variants that are sparse formats whose `to_dense()` is the pruned weight bit for bit (`lossless`
    in the format contract): their predictions are masked's up to float rounding. Quantized twins
    (`csr+int8`) are not formats here."""
    return {v for v in variants if v in FORMATS and format_class(v).lossless}


def check_format_support(name: str, dtype: torch.dtype, device: torch.device | str) -> None:
    """Fail early, before any work, when a format cannot run on this device and dtype."""
    format_class(name).check_support(dtype, torch.device(device))


@dataclass
class Conversion:
    """Modules swapped for sparse ones; `revert()` restores the originals with their dense weights."""

    model: nn.Module
    format: str
    originals: dict[str, nn.Module] = field(default_factory=dict)
    # The dense weights were released (a lossless format rebuilds them bit for bit from its own storage);
    # a lossy (quantizing) format keeps them, so revert() is exact either way.
    released: bool = True

    def revert(self) -> None:
        for name, original in self.originals.items():
            sparse = self.model.get_submodule(name)
            if self.released:
                dense = sparse.to_dense()
                # Conv1D stores (in, out): give it back its own orientation.
                original.weight.data = dense.T.contiguous() if is_conv1d(original) else dense
            set_module(self.model, name, original)
        self.originals.clear()
        trim_heap()


@torch.no_grad()
def convert(model: nn.Module, names: list[str], format: str, options: object = None) -> Conversion:
    """Replace each named projection by the `format` module built from its current (pruned) weight.

    `options`: the format's options (a dict or its `Options` dataclass), validated before any layer."""
    cls = format_class(format)
    options = cls.options(options)
    conversion = Conversion(model, format, released=cls.lossless)
    for name in names:
        module = model.get_submodule(name)
        sparse = cls.build(linear_weight(module), getattr(module, "bias", None), options)
        set_module(model, name, sparse)
        if cls.lossless:
            # One copy of each weight at a time: the dense storage is rebuilt from the sparse one on revert.
            module.weight.data = torch.empty(0, dtype=module.weight.dtype, device=module.weight.device)
        conversion.originals[name] = module
    trim_heap()  # hand the freed dense weights (and conversion temporaries) back to the OS
    return conversion
