"""Prune a model in place and undo it exactly.

    record = prune(model, layers, PruneSpec.create("magnitude", 0.5))
    ...evaluate...
    restore(model, record)

Methods, allocations and refinements are plug-ins in three registries (`registry.py`; the built-ins in
`methods/`, `allocations/`, `refinements/`). Methods without calibration (magnitude, random) score all
layers at once; calibrated ones (wanda, sparsegpt, ria), and any method with an allocation (`owl`) or a
refinement (`dsnot`), go block by block (`driver.py`); allocation and refinement details land in
`PruneRecord.details`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import PrunescopeError
from ..layers import linear_shape
from ..util.heap import trim_heap

# isort: off
from . import methods, allocations, refinements  # noqa: F401  (registers the built-ins, in this order)

# isort: on
from .record import LayerChange, PruneRecord, restore_layer
from .registry import (
    ALLOCATIONS,
    METHODS,
    REFINEMENTS,
    OptionField,
    option_fields,
    register_allocation,
    register_method,
    register_refinement,
)
from .scoring import prune_by_score
from .spec import Pattern, PruneSpec

__all__ = [
    "ALLOCATIONS",
    "METHODS",
    "NATURAL_SCOPE",
    "REFINEMENTS",
    "LayerChange",
    "OptionField",
    "Pattern",
    "PruneRecord",
    "PruneSpec",
    "option_fields",
    "prune",
    "register_allocation",
    "register_method",
    "register_refinement",
    "restore",
]


def __getattr__(name: str):
    if name == "NATURAL_SCOPE":  # a view of the method registry (see `spec.py`)
        from . import spec

        return spec.NATURAL_SCOPE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_pattern_fits(layers: dict[str, nn.Module], spec: PruneSpec) -> None:
    if spec.pattern.structured:
        bad = [n for n, m in layers.items() if linear_shape(m)[1] % spec.pattern.m]
        if bad:
            raise PrunescopeError(
                f"pattern {spec.pattern} needs in_features divisible by {spec.pattern.m}; not so for {bad[0]}"
            )


@torch.no_grad()
def prune(
    model: nn.Module,
    layers: dict[str, nn.Module],
    spec: PruneSpec,
    calibration: Sequence[torch.Tensor] | None = None,
    progress: bool = True,
) -> PruneRecord:
    """Prune `layers` (name -> projection of `model`) in place; returns the record that `restore` undoes.

    `calibration` is a list of token-id tensors (1, seqlen) for the calibrated methods.
    """
    check_pattern_fits(layers, spec)
    start = time.perf_counter()
    details: dict = {}
    if spec.needs_calibration:
        if not calibration:
            raise PrunescopeError(f"{spec.method} needs calibration data; none was given")
        from .driver import prune_calibrated

        changes = prune_calibrated(model, layers, spec, calibration, progress=progress, report=details)
    else:
        changes = prune_by_score(layers, spec)
    trim_heap()  # selection temporaries: return them to the OS rather than let RSS ratchet
    return PruneRecord(spec=spec, changes=changes, seconds=time.perf_counter() - start, details=details)


@torch.no_grad()
def restore(model: nn.Module, record: PruneRecord) -> None:
    """Undo `record`: only the pruned layers are touched."""
    for name, change in record.changes.items():
        restore_layer(model.get_submodule(name), change)
