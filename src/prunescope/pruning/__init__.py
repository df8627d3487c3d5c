"""Prune a model in place and undo it exactly.

    record = prune(model, layers, PruneSpec.create("magnitude", 0.5))
    ...evaluate...
    restore(model, record)

Methods: magnitude and random (no calibration), wanda, sparsegpt and ria (calibrated, sequential block by
block). On top of any method: OWL per-block sparsity (`allocation="owl"`) and DSnoT mask refinement
(`refine="dsnot"`), both of which run the sequential pass; their details land in `PruneRecord.details`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import PrunescopeError
from ..layers import linear_shape
from ..util.heap import trim_heap
from .magnitude import prune_by_score
from .record import LayerChange, PruneRecord, restore_layer
from .spec import METHODS, NATURAL_SCOPE, Pattern, PruneSpec

__all__ = [
    "METHODS",
    "NATURAL_SCOPE",
    "LayerChange",
    "Pattern",
    "PruneRecord",
    "PruneSpec",
    "prune",
    "restore",
]


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
        from .calibrated import prune_calibrated

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
