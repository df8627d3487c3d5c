"""The dense -> variants study on one model copy.

    result = prunescope.study(StudyConfig(model="demo", sparsity=0.3))

1. load the model once; compute the dense reference once (`EvaluationSet`);
2. prune in place (the record keeps only what was removed);
3. evaluate each variant: `masked` (zeros in dense tensors) and each sparse format (pruned projections
   swapped for sparse modules, then swapped back);
4. restore the pruned layers, so the caller gets the dense model back.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..models import LoadedModel
from ..pruning import PruneRecord, PruneSpec
from ..structure import group_table
from ..util.memory import peak_memory
from ..util.seeds import aggregate_seeds
from .config import StudyConfig, parse_list
from .evaluation_set import fit_batch_size
from .quantize import check_twins, with_twins
from .workbench import VariantResult, Workbench

__all__ = [
    "StudyConfig",
    "StudyResult",
    "VariantResult",
    "Workbench",
    "fit_batch_size",
    "parse_list",
    "run_study",
    "seed_dependent",
]


@dataclass
class StudyResult:
    config: StudyConfig
    spec: PruneSpec
    pruned_layers: list[str]
    variants: dict[str, VariantResult]
    run: dict
    # --seeds: every seed's variants (the first seed's are also `variants`); empty for a single seed.
    seed_results: dict[int, dict[str, VariantResult]] = field(default_factory=dict)
    tokenizer: object = None  # the model's, to decode the largest-KL positions in report.md

    @property
    def seed_table(self) -> pd.DataFrame | None:
        """One row per (seed, variant) when the study ran several seeds, else None."""
        if len(self.seed_results) < 2:
            return None
        frames = [variant_rows(results).assign(seed=seed) for seed, results in self.seed_results.items()]
        return pd.concat(frames, ignore_index=True)

    @property
    def summary(self) -> pd.DataFrame:
        """One row per variant: structure and behaviour side by side; over several seeds, their mean and
        `<metric>_std` columns."""
        table = self.seed_table
        if table is None:
            return variant_rows(self.variants)
        return aggregate_seeds(table, ["variant"])

    @property
    def tasks(self) -> pd.DataFrame:
        """Long-form task rows: variant, task, metric, value, stderr, n (and seed); empty without tasks."""
        from ..evaluation.tasks import TASK_COLUMNS

        groups = self.seed_results or {None: self.variants}
        rows = [
            {**row, "variant": name, **({"seed": seed} if seed is not None else {})}
            for seed, variants in groups.items()
            for name, variant in variants.items()
            for row in variant.tasks
        ]
        return pd.DataFrame(rows, columns=TASK_COLUMNS + (["seed"] if self.seed_results else []))

    @property
    def layers(self) -> pd.DataFrame:
        return pd.concat([v.layers.assign(variant=v.name) for v in self.variants.values()], ignore_index=True)

    @property
    def groups(self) -> pd.DataFrame:
        return pd.concat(
            [group_table(v.layers).assign(variant=v.name) for v in self.variants.values()], ignore_index=True
        )


def variant_rows(variants: dict[str, VariantResult]) -> pd.DataFrame:
    rows = []
    for variant in variants.values():
        rows.append(
            {
                "variant": variant.name,
                **variant.summary,
                **variant.behaviour.as_dict(),
                **variant.perplexity,
                **variant.task_columns,
            }
        )
    return pd.DataFrame(rows)


def run_study(
    config: StudyConfig,
    loaded: LoadedModel | None = None,
    work_dir: str | Path | None = None,
    progress: bool = True,
    results_dir: str | Path | None = None,
    before_tasks: Callable[[], None] | None = None,
) -> StudyResult:
    """Run the study; `loaded` reuses an already-loaded model (left dense on return).

    `work_dir` receives the spilled dense reference (deleted by the caller); None keeps it in memory.
    `results_dir` receives the latency plots when `config.latency` is set. `before_tasks` runs once just
    before lm-eval first runs (`Workbench`).
    """
    quantizers = config.quant.quantize  # --quantize: twins <variant>+<bits> of every variant
    check_twins(config.variants, quantizers)
    bench = Workbench(config, loaded, work_dir, progress, before_tasks=before_tasks)
    spec = config.prune_spec(bench.seqlen)
    seeds = config.run.seeds
    if seeds:
        spec = dataclasses.replace(spec, seed=seeds[0])
    results: dict[str, VariantResult] = {}
    if "dense" in config.variants:
        results["dense"] = bench.dense()
        results.update(bench.dense_twins(quantizers))
    latency: dict = {}

    def measure_latency(record: PruneRecord) -> None:
        from .latency import latency_section

        start = time.perf_counter()
        latency.update(
            latency_section(
                bench.model,
                record=record,
                pruned=list(bench.layers),
                formats=config.variants,
                plot_dir=results_dir,
            )
        )
        latency["seconds"] = time.perf_counter() - start

    pruned_variants = with_twins([v for v in config.variants if v != "dense"], quantizers)
    first = bench.evaluate(spec, pruned_variants, measure_latency if config.run.latency else None)
    results.update(first.variants)
    timings = dict(first.timings)
    seed_results: dict[int, dict[str, VariantResult]] = {}
    if len(seeds) > 1 and seed_dependent(spec):
        # The first seed is the study's own spec; the others re-prune the one copy against the one reference.
        seed_results[seeds[0]] = results
        for seed in seeds[1:]:
            other = bench.evaluate(dataclasses.replace(spec, seed=seed), pruned_variants)
            seed_results[seed] = {
                **({"dense": results["dense"]} if "dense" in results else {}),
                **other.variants,
            }
            timings[f"prune_seed{seed}"] = other.timings["prune"]
    run = {
        "config": config.asdict(),
        "prune_spec": spec.describe(),
        **bench.run_info(),
        "timings_s": {**bench.timings, **timings},
        "restore_record_bytes": first.record_bytes,
        **first.details,
        **peak_memory(),
        **({"latency": latency} if latency else {}),
        **({"seeds": list(seed_results)} if seed_results else {}),
    }
    return StudyResult(config, spec, list(bench.layers), results, run, seed_results, bench.loaded.tokenizer)


def seed_dependent(spec: PruneSpec) -> bool:
    """Methods whose result moves with the seed: calibrated ones (samples) and random (the draw)."""
    return spec.needs_calibration or spec.method == "random"
