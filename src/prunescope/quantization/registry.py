"""Quantizer registry and the options of one quantization request.

A quantizer is a small class (one file: `int8.py`, `int4.py`) that turns a slice of a weight into per-row
parameters and integer codes; everything else (RTN, GPTQ, the joint SparseGPT pass, `QuantizedLinear`,
byte counts) is written against that interface, so a new one is one file plus one line in `QUANTIZERS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PrunescopeError
from .base import Quantizer
from .int4 import Int4Quantizer
from .int8 import Int8Quantizer

METHODS = ("rtn", "gptq")


# One entry per quantizer: a new one is a file implementing `Quantizer` and a line here.
QUANTIZERS: dict[str, Quantizer] = {"int8": Int8Quantizer(), "int4": Int4Quantizer()}


def get_quantizer(name: str) -> Quantizer:
    if name not in QUANTIZERS:
        raise PrunescopeError(f"unknown quantizer {name!r}; choose one of {', '.join(QUANTIZERS)}")
    return QUANTIZERS[name]


@dataclass(frozen=True)
class QuantOptions:
    """One quantization request.

    name        registry key: "int8" (symmetric, per output row) or "int4" (asymmetric, per group).
    group_size  consecutive input columns sharing one scale/zero (quantizers with `grouped`; int8 ignores
                it); None = one group per row. Must divide in_features (checked per layer).
    method      "rtn" (round to nearest) or "gptq" (needs a layer Hessian).
    act_order   GPTQ: process columns by decreasing Hessian diagonal; with groups this uses the
                reference's static groups (parameters fixed per consecutive group before the loop).
    blocksize, percdamp   GPTQ's column block and dampening (fraction of mean diag H).
    """

    name: str = "int8"
    group_size: int | None = 128
    method: str = "rtn"
    act_order: bool = False
    blocksize: int = 128
    percdamp: float = 0.01

    def __post_init__(self) -> None:
        get_quantizer(self.name)
        if self.method not in METHODS:
            raise PrunescopeError(f"unknown quantization method {self.method!r}; choose rtn or gptq")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise PrunescopeError(f"group size must be a positive integer or None, got {self.group_size!r}")
        if not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise PrunescopeError(f"GPTQ block size must be a positive integer, got {self.blocksize!r}")
        if not 0 <= self.percdamp < 1:
            raise PrunescopeError(f"GPTQ dampening must be in [0, 1), got {self.percdamp}")

    @property
    def quantizer(self) -> Quantizer:
        return get_quantizer(self.name)

    @property
    def bits(self) -> int:
        return self.quantizer.bits

    def group_for(self, in_features: int) -> int:
        """Columns per group for a layer with `in_features` inputs (the whole row when ungrouped)."""
        if not self.quantizer.grouped or self.group_size is None:
            return in_features
        if in_features % self.group_size:
            raise PrunescopeError(
                f"{self.name}: group size {self.group_size} does not divide in_features {in_features}"
            )
        return self.group_size

    @property
    def label(self) -> str:
        """Short name for tables: "int8", "int4" (default group), "int4-g64", "int4-gptq"..."""
        parts = [self.name]
        if self.quantizer.grouped and self.group_size != 128:
            parts.append("row" if self.group_size is None else f"g{self.group_size}")
        if self.method != "rtn":
            parts.append(self.method)
        return "-".join(parts)


def parse_quantizers(text: str, group_size: int | None = 128, method: str = "rtn") -> list[QuantOptions]:
    """ "int8,int4" (as --quantize takes it) -> one QuantOptions per name, in order, duplicates dropped."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise PrunescopeError("--quantize needs at least one of " + ", ".join(QUANTIZERS))
    return [QuantOptions(name, group_size, method) for name in dict.fromkeys(names)]
