"""Sensitivity map: prune one unit at a time at sparsity S, the rest of the model dense; measure the drift.

    result = run_sensitivity(SensitivityConfig(base=StudyConfig(model="demo", method="wanda"), by="block"))

A unit is a decoder block (all its pruned projections), a projection type (e.g. `self_attn.q_proj` in every
block) or a single module. Everything runs on one model copy (`Workbench`): the dense reference is computed
once, and each unit is pruned in place, compared with it (KL, top-1, top-5, perplexity on the same tokens)
and restored before the next. Calibrated methods run their sequential pass over the dense blocks in front
of the unit, so the unit sees the dense model's activations.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import PrunescopeError
from ..pruning import prune, restore
from ..util.memory import peak_memory
from .study import StudyConfig, Workbench

UNITS = ("block", "projection", "module")
ALL = "all"  # the projection (or block) column of a unit that spans every projection (or block)
# `<stack>.<block index>.<path inside the block>`, e.g. model.decoder.layers.3.fc1 -> (3, fc1).
_BLOCK_NAME = re.compile(r"^.*?\.(\d+)\.(.+)$")


@dataclass
class SensitivityConfig:
    base: StudyConfig = field(default_factory=lambda: StudyConfig(method="wanda", sparsity=0.5))
    by: str = "block"

    def __post_init__(self) -> None:
        if self.by not in UNITS:
            raise PrunescopeError(f"unknown unit {self.by!r}; choose one of {', '.join(UNITS)}")
        spec = self.base.prune_spec(256)
        if spec.allocation != "uniform":
            raise PrunescopeError(
                "sensitivity prunes one unit at a time with the rest dense: a per-block allocation "
                "(--allocation owl) does not apply"
            )


@dataclass
class Unit:
    name: str
    block: int | str  # a block index, or ALL
    projection: str  # a projection path inside the block, or ALL
    layers: list[str]


def block_and_projection(name: str) -> tuple[int | None, str]:
    match = _BLOCK_NAME.match(name)
    return (int(match.group(1)), match.group(2)) if match else (None, name)


def make_units(layer_names: list[str], by: str) -> list[Unit]:
    """The units of `by` over the prunable layers, in model order."""
    units: dict[str, Unit] = {}
    for name in layer_names:
        block, projection = block_and_projection(name)
        if by == "module":
            key, unit = name, Unit(name, ALL if block is None else block, projection, [])
        elif by == "block":
            label = ALL if block is None else block
            key = f"block {label}" if block is not None else name
            unit = Unit(key, label, ALL if block is not None else projection, [])
        else:
            key, unit = projection, Unit(projection, ALL, projection, [])
        units.setdefault(key, unit).layers.append(name)
    return list(units.values())


@dataclass
class SensitivityResult:
    config: SensitivityConfig
    table: pd.DataFrame  # one row per unit
    run: dict

    def ranked(self) -> pd.DataFrame:
        """Units from the most to the least sensitive (mean KL against the dense model)."""
        return self.table.sort_values("kl_mean", ascending=False, kind="stable")


def run_sensitivity(
    config: SensitivityConfig, work_dir: str | Path | None = None, progress: bool = True
) -> SensitivityResult:
    """Prune each unit alone at the configured method and sparsity; one row per unit."""
    bench = Workbench(config.base, work_dir=work_dir, progress=progress, formats=[])
    spec = config.base.prune_spec(bench.seqlen)
    units = make_units(list(bench.layers), config.by)
    dense = bench.dense_behaviour
    rows = []
    start_all = time.perf_counter()
    for index, unit in enumerate(units):
        layers = {name: bench.layers[name] for name in unit.layers}
        record = prune(bench.model, layers, spec, bench.calibration(spec), progress=False)
        try:
            start = time.perf_counter()
            label = f"unit {index + 1}/{len(units)}: {unit.name}"
            behaviour = bench.evaluation.compare(bench.model, label, progress)
            seconds = time.perf_counter() - start
        finally:
            restore(bench.model, record)
        weights = record.total_count()
        rows.append(
            {
                "unit": unit.name,
                "block": str(unit.block),
                "projection": unit.projection,
                "layers": len(unit.layers),
                "weights": weights,
                "pruned": record.pruned_count(),
                "sparsity": record.pruned_count() / weights if weights else 0.0,
                "kl_mean": behaviour.kl_mean,
                "top1_agreement": behaviour.top1_agreement,
                "top5_overlap": behaviour.top5_overlap,
                "perplexity": behaviour.perplexity,
                "perplexity_ratio": behaviour.perplexity / dense.perplexity,
                "prune_seconds": record.seconds,
                "eval_seconds": seconds,
            }
        )
    table = pd.DataFrame(rows)
    table["rank"] = table["kl_mean"].rank(ascending=False, method="first").astype(int)
    run = {
        "config": {"base": config.base.asdict(), "by": config.by},
        "prune_spec": spec.describe(),
        **bench.run_info(),
        "dense": dense.as_dict(),
        "units": len(units),
        "timings_s": {**bench.timings, "units": time.perf_counter() - start_all},
        **peak_memory(),
    }
    return SensitivityResult(config, table, run)
