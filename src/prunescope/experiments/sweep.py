"""Sparsity sweeps: many (method, pattern, sparsity) points on one model copy, resumable point by point.

The output folder is the live result: `points.jsonl` gets one line per finished (point, variant), appended
and fsynced as soon as the point completes, so a killed sweep loses at most the point in flight. A rerun
of the same command skips every point already on disk and never rewrites a finished line. `config.json`
pins the configuration; another configuration in the same folder is refused unless `--overwrite`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import PrunescopeError
from ..formats import FORMATS
from ..pruning import Pattern
from ..pruning.spec import ALLOCATIONS, REFINES
from ..report.run_text import method_label
from ..report.sweep_points import (
    POINTS_FILE,
    append_point,
    read_points,
    results_table,
    save_point_allocation,
    start_folder,
)
from ..util.memory import peak_rss_bytes
from ..util.progress import make_progress
from .config import SWEEP_VARIANTS
from .quantize import check_twins, split_variant, with_twins
from .study import StudyConfig, Workbench, parse_list, seed_dependent


def parse_sparsities(text: str | list[float]) -> list[float]:
    """'0.1:0.9:0.1' (start:stop:step, stop included) or '0.3,0.5' -> sorted unique values in [0, 1)."""
    if isinstance(text, list):
        values = [float(v) for v in text]
    elif ":" in text:
        try:
            start, stop, step = (float(part) for part in text.split(":"))
        except ValueError:
            raise PrunescopeError(f"sparsity range must be start:stop:step, got {text!r}") from None
        if step <= 0 or stop < start:
            raise PrunescopeError(f"sparsity range {text!r} needs step > 0 and stop >= start")
        count = math.floor((stop - start) / step + 1e-9) + 1
        values = [round(start + i * step, 10) for i in range(count)]
    else:
        try:
            values = [float(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise PrunescopeError(f"sparsity list must be numbers, got {text!r}") from None
    bad = [v for v in values if not 0.0 <= v < 1.0]
    if bad or not values:
        raise PrunescopeError(f"every sparsity must be in [0, 1); got {bad or text!r}")
    return sorted(set(values))


@dataclass
class SweepConfig:
    sparsities: list[float] = field(default_factory=lambda: parse_sparsities("0.1:0.9:0.1"))
    methods: list[str] = field(default_factory=lambda: ["magnitude"])
    patterns: list[str] = field(default_factory=lambda: ["unstructured"])
    variants: list[str] = field(default_factory=lambda: list(SWEEP_VARIANTS))
    thresholds: list[float] = field(default_factory=lambda: [0.9, 0.5])
    base: StudyConfig = field(default_factory=StudyConfig)
    latency: bool = False  # per point: measured layer speedup of each variant at n = 1 and 64 tokens
    # Axes on top of every method: OWL allocation and DSnoT refinement. A point's method label names them,
    # e.g. "wanda+owl+dsnot" (`method_label`); the defaults keep plain method names.
    allocations: list[str] = field(default_factory=lambda: ["uniform"])
    refines: list[str] = field(default_factory=lambda: ["none"])

    def __post_init__(self) -> None:
        self.sparsities = parse_sparsities(self.sparsities)
        self.methods, self.patterns = parse_list(self.methods), parse_list(self.patterns)
        self.allocations, self.refines = parse_list(self.allocations), parse_list(self.refines)
        if not self.allocations or not self.refines:
            raise PrunescopeError("a sweep needs at least one allocation and one refinement (or none)")
        self.variants = parse_list(self.variants)
        bad = [v for v in self.variants if v != "masked" and v not in FORMATS]
        if bad or not self.variants:
            raise PrunescopeError(f"sweep variants are masked and formats ({', '.join(FORMATS)}); got {bad}")
        if not self.methods or not self.patterns:
            raise PrunescopeError("a sweep needs at least one method and one pattern")
        for point in self.points():  # validates every method / pattern / sparsity combination up front
            self.spec(point, 256)

    def points(self) -> list[tuple[str, str, float]]:
        """(method, pattern, sparsity); an N:M pattern has exactly one sparsity, 1 - N/M."""
        points = []
        axes = [(m, a, r) for m in self.methods for a in self.allocations for r in self.refines]
        labels = [(method_label(m, a, r), a) for m, a, r in axes]
        for method, allocation in labels:
            for pattern in self.patterns:
                parsed = Pattern.parse(pattern)
                if parsed.structured and allocation != "uniform":
                    continue  # OWL allocates unstructured sparsity only (PruneSpec refuses N:M)
                sparsities = [parsed.sparsity] if parsed.structured else self.sparsities
                points += [(method, str(parsed), s) for s in sparsities]
        return points

    def spec(self, point: tuple[str, str, float], seqlen: int):
        method, pattern, sparsity = point
        method, extensions = parse_method_label(method)
        config = self.base.replace(
            **extensions, method=method, pattern=pattern, sparsity=sparsity, variants=["dense"]
        )
        return config.prune_spec(seqlen)

    def asdict(self) -> dict:
        return {**asdict(self), "base": self.base.asdict()}

    def fingerprint(self) -> str:
        described = self.asdict()
        if not self.base.quant.quantize:  # without --quantize: the fingerprint of sweeps made before it
            described["base"].pop("quant", None)
        data = json.dumps(described, sort_keys=True, default=str)
        return hashlib.sha256(data.encode()).hexdigest()[:16]


def parse_method_label(label: str) -> tuple[str, dict]:
    """(method, {allocation, refine}) of a `method_label`."""
    method, *parts = label.split("+")
    extensions: dict = {}
    for part in parts:
        key = "allocation" if part in ALLOCATIONS else "refine" if part in REFINES else None
        if key is None:
            raise PrunescopeError(f"unknown modifier {part!r} in {label!r}: not an allocation or refinement")
        extensions[key] = part
    return method, extensions


def point_key(method: str, pattern: str, sparsity: float, variant: str, seed: int | None = None) -> str:
    """One finished row; `seed` only under --seeds, so a single-seed sweep keeps its keys."""
    return f"{method}|{pattern}|{sparsity:.6f}|{variant}" + (f"|seed{seed}" if seed is not None else "")


def point_seeds(config: SweepConfig, point: tuple[str, str, float]) -> list[int | None]:
    """The seeds a point runs under: every --seeds seed for a seed-dependent method, else just one."""
    seeds = config.base.run.seeds
    if len(seeds) > 1 and seed_dependent(config.spec(point, 256)):
        return list(seeds)
    return [None]


def prepare_folder(out: Path, config: SweepConfig, overwrite: bool) -> bool:
    """True when `out` holds this very sweep (resume it); raises when `out` must not be touched.

    Nothing is written here: `start_folder` (re)creates the folder once the model and corpus have loaded,
    so a bad input leaves no folder behind and an --overwrite that fails leaves the old one intact.
    """
    marker = out / "config.json"
    if out.exists() and not out.is_dir():
        raise PrunescopeError(f"output path {str(out)!r} exists and is not a folder")
    if out.exists() and not marker.exists() and any(out.iterdir()):
        if not overwrite:
            raise PrunescopeError(
                f"{str(out)!r} exists and is not a sweep folder; pass --overwrite to replace it"
            )
    if marker.exists():
        stored = json.loads(marker.read_text())
        if stored.get("fingerprint") == config.fingerprint() and not overwrite:
            return True
        if not overwrite:
            raise PrunescopeError(
                f"{str(out)!r} holds a sweep with another configuration; pass --overwrite or another --out"
            )
    return False


def run_sweep(
    config: SweepConfig,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    before_tasks: Callable[[], None] | None = None,
) -> pd.DataFrame:
    """Run (or resume) the sweep into `out`; returns the full results table. `before_tasks` runs once just
    before lm-eval first runs (`Workbench`)."""
    out = Path(out)
    resume = prepare_folder(out, config, overwrite)
    points_path = out / POINTS_FILE
    done = {row["key"] for row in read_points(points_path)} if resume else set()
    # --quantize none,int8,int4: every variant and its quantized twins (masked+int8, ...) are rows.
    all_variants = with_twins(config.variants, config.base.quant.quantize)
    check_twins(all_variants, config.base.quant.quantize)
    todo = [
        (p, seed)
        for p in config.points()
        for seed in point_seeds(config, p)
        if any(point_key(*p, v, seed) not in done for v in all_variants)
    ]
    # Scratch (the spilled dense reference) lives beside OUT, so that OUT is only created once the model
    # and the corpus have loaded: a bad input leaves nothing behind.
    work = out.parent / f".{out.name}.work"
    bench = None
    if todo:
        try:
            bench = Workbench(
                config.base,
                work_dir=work,
                progress=False,
                formats=[v for v in config.variants if v != "masked"],
                measure_lossless=False,  # a lossless format's behaviour is masked's; its size is its own
                before_tasks=before_tasks,
            )
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    if not resume:
        start_folder(out, config)
    if bench is not None:
        try:
            dense_tasks = bench.dense().task_columns if bench.tasks is not None else {}
            with make_progress() if progress else _NoProgress() as bar:
                task = bar.add_task("sweep", total=len(todo))
                for point, seed in todo:
                    spec = config.spec(point, bench.seqlen)
                    if seed is not None:
                        spec = dataclasses.replace(spec, seed=seed)
                    variants = [v for v in all_variants if point_key(*point, v, seed) not in done]
                    start = time.perf_counter()
                    speedups: dict[str, dict] = {}

                    def measure(record, variants=variants, speedups=speedups) -> None:
                        plain = [v for v in variants if split_variant(v)[1] is None]
                        speedups.update(layer_speedups(bench, record, plain))

                    evaluated = bench.evaluate(spec, variants, measure if config.latency else None)
                    results, timings = evaluated.variants, evaluated.timings
                    seconds = time.perf_counter() - start
                    if evaluated.details.get("allocation"):  # this point's sparsities, for the heatmaps
                        save_point_allocation(out, point, evaluated.details["allocation"], list(bench.layers))
                    for variant in variants:
                        result = results[variant]
                        append_point(
                            points_path,
                            {
                                "key": point_key(*point, variant, seed),
                                "method": point[0],
                                "pattern": point[1],
                                "target_sparsity": point[2],
                                "variant": variant,
                                "base_variant": split_variant(variant)[0],
                                "scope": spec.effective_scope,
                                "seed": spec.seed,
                                **result.summary,
                                **result.behaviour.as_dict(),
                                **result.perplexity,
                                "dense_perplexity": bench.dense_behaviour.perplexity,
                                **result.task_columns,  # --tasks: task:<name>:<metric>, and dense's
                                **{f"dense_{k}": v for k, v in dense_tasks.items()},
                                "prune_seconds": timings["prune"],
                                "point_seconds": seconds,
                                "peak_rss_bytes": peak_rss_bytes(),
                                **speedups.get(variant, {}),
                            },
                        )
                    bar.advance(task)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        run = bench.run_info()
    else:
        run = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    table = results_table(out)
    from ..report.sweep import write_sweep_report

    write_sweep_report(table, config, out, run)
    return table


def layer_speedups(bench: Workbench, record, variants: list[str]) -> dict[str, dict]:
    """Measured speedup of all pruned layers together per variant: sum of dense medians over the format's.

    Layers of one shape are timed once and weighted by how many layers have that shape.
    """
    from ..latency import LatencyConfig, TimingPolicy
    from .latency import latency_section

    config = LatencyConfig(
        tokens=[1, 64],
        model_level=False,
        policy=TimingPolicy(warmup=1, min_time=0.05, min_repeats=5, max_time=0.5),
    )
    rows = latency_section(
        bench.model, record=record, pruned=list(bench.layers), formats=variants, config=config
    )["rows"]
    speedups: dict[str, dict] = {}
    for variant in variants:
        for n in (1, 64):
            chosen = [r for r in rows if r["format"] == variant and r["n"] == n and r["status"] == "ok"]
            if chosen:
                dense = sum(r["dense_median_s"] * r["layers_of_shape"] for r in chosen)
                measured = sum(r["median_s"] * r["layers_of_shape"] for r in chosen)
                speedups.setdefault(variant, {})[f"layer_speedup_n{n}"] = dense / measured
    return speedups


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def advance(self, *args) -> None:
        return None
