"""The dense -> variants study on one model copy.

    result = prunescope.study(StudyConfig(model="demo", sparsity=0.3))

1. load the model once; compute the dense reference log-probabilities once;
2. prune in place (the record keeps only what was removed);
3. evaluate each variant: `masked` (zeros in dense tensors) and each sparse format (pruned projections
   swapped for sparse modules, then swapped back);
4. restore the pruned layers, so the caller gets the dense model back.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ..errors import PrunescopeError
from ..evaluation import datasets as corpus_sources
from ..evaluation import protocols
from ..evaluation.behaviour import Behaviour, compare, compute_reference
from ..evaluation.corpus import make_batches
from ..formats import FORMATS, check_format_support, convert
from ..layers import prunable_layers
from ..models import LoadedModel, load_model
from ..pruning import PruneRecord, PruneSpec, prune, restore
from ..structure import attention_score_flops, global_summary, group_table, layer_table
from ..util.seeds import aggregate_seeds, parse_seeds
from ..version import __version__

BASE_VARIANTS = ("dense", "masked")


def parse_list(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return list(value)


@dataclass
class StudyConfig:
    """Everything a study depends on; saved in run.json so any result can be reproduced."""

    model: str = "demo"
    sparsity: float | None = None  # None: 0.3, or what an N:M pattern implies
    method: str = "magnitude"
    scope: str | None = None
    pattern: str = "unstructured"
    variants: list[str] = field(default_factory=lambda: ["dense", "masked", "csr"])
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    corpus: str | None = None  # None/"builtin": held-out stdlib for demo, the English set otherwise
    seqlen: int | None = None  # None: the protocol's default (document: min(256, context), else context)
    max_tokens: int | None = None  # None: 4096 for the document protocol, the whole split otherwise
    batch_size: int = 8
    calibration: str | None = None  # None/"builtin": see pruning.calibration
    calib_samples: int = 128
    calib_seqlen: int | None = None  # None: the evaluation seqlen
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0
    # OWL allocation, RIA, DSnoT refinement (pruning/allocation.py, ria.py, dsnot.py).
    allocation: str = "uniform"
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    ria_alpha: float = 0.5
    refine: str = "none"
    refine_cycles: int = 50
    refine_threshold: float = 0.1
    latency: bool = False  # also measure layer and model latency of each format (prunescope bench)
    text_column: str | None = None  # column of a datasets source (default: 'text', the alias's own)
    ppl_protocol: str | None = None  # document | joined | rolling; None: joined for paper aliases
    seeds: list[int] = field(default_factory=list)  # repeat seed-dependent methods per seed (mean, std)
    # Zero-shot tasks through lm-eval (evaluation/tasks.py): names, include path, documents per task, shots.
    tasks: list[str] = field(default_factory=list)
    tasks_path: str | None = None
    tasks_limit: int | None = None
    num_fewshot: int | None = None

    def __post_init__(self) -> None:
        self.variants = parse_list(self.variants)
        self.include, self.exclude = parse_list(self.include), parse_list(self.exclude)
        unknown = [v for v in self.variants if v not in BASE_VARIANTS and v not in FORMATS]
        if unknown or not self.variants:
            choices = ", ".join((*BASE_VARIANTS, *FORMATS))
            raise PrunescopeError(
                f"unknown variant {unknown[0] if unknown else '(none)'!r}; choose from {choices}"
            )
        if len(set(self.variants)) != len(self.variants):
            raise PrunescopeError("each variant may be listed once")
        self.seeds = parse_seeds(self.seeds)
        if (self.max_tokens is not None and self.max_tokens < 2) or self.batch_size < 1:
            raise PrunescopeError("max_tokens must be >= 2 and batch_size >= 1")
        if self.seqlen is not None and self.seqlen < 2:
            raise PrunescopeError("seqlen must be at least 2")
        corpus_sources.check_source(self.corpus)
        corpus_sources.check_source(self.calibration, "calibration")
        protocols.check(self.ppl_protocol)
        self.tasks = parse_list(self.tasks)
        if self.tasks_limit is not None and self.tasks_limit < 1:
            raise PrunescopeError("tasks_limit must be at least 1")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise PrunescopeError("num_fewshot must be >= 0")
        if (self.tasks_path or self.tasks_limit or self.num_fewshot is not None) and not self.tasks:
            raise PrunescopeError("--tasks-path, --tasks-limit and --num-fewshot need --tasks")
        self.prune_spec(256)  # validates method / sparsity / scope / pattern now, before any loading

    def prune_spec(self, default_seqlen: int) -> PruneSpec:
        return PruneSpec.create(
            self.method,
            self.sparsity,
            self.pattern,
            scope=self.scope,
            seed=self.seed,
            calib_samples=self.calib_samples,
            calib_seqlen=self.calib_seqlen or default_seqlen,
            allocation=self.allocation,
            owl_m=self.owl_m,
            owl_lambda=self.owl_lambda,
            ria_alpha=self.ria_alpha,
            refine=self.refine,
            refine_cycles=self.refine_cycles,
            refine_threshold=self.refine_threshold,
        )

    @property
    def formats(self) -> list[str]:
        return [v for v in self.variants if v in FORMATS]

    @property
    def protocol(self) -> str:
        return self.ppl_protocol or protocols.default_protocol(self.corpus)


@dataclass
class VariantResult:
    name: str
    behaviour: Behaviour
    layers: pd.DataFrame
    summary: dict
    perplexity: dict = field(default_factory=dict)  # protocol facts and protocol-specific perplexities
    tasks: list[dict] = field(default_factory=list)  # lm-eval rows: task, metric, value, stderr, n
    task_columns: dict = field(default_factory=dict)  # summary columns task:<name>:<main metric>


@dataclass
class StudyResult:
    config: StudyConfig
    spec: PruneSpec
    pruned_layers: list[str]
    variants: dict[str, VariantResult]
    run: dict
    # --seeds: every seed's variants (the first seed's are also `variants`); empty for a single seed.
    seed_results: dict[int, dict[str, VariantResult]] = field(default_factory=dict)

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


def versions() -> dict:
    import transformers

    return {
        "prunescope": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }


def peak_rss_bytes() -> int:
    import resource

    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# A forward pass returns (batch, seqlen, vocab) float32 logits: with a 50k vocabulary a batch of 8 x 256
# would be 400 MB, as much as a 100M-parameter model. Batches are cut to stay within this budget.
LOGITS_BUDGET_BYTES = 64 * 2**20


def logits_width(model) -> int:
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return getattr(output, "out_features", None) or model.config.vocab_size


def fit_batch_size(requested: int, seqlen: int, vocab: int) -> int:
    """The requested batch size, reduced so one batch's logits fit LOGITS_BUDGET_BYTES (at least 1)."""
    return max(1, min(requested, LOGITS_BUDGET_BYTES // (seqlen * vocab * 4)))


def _variant_row(model, pruned: list[str], behaviour: Behaviour, name: str, context: int) -> VariantResult:
    layers = layer_table(model)
    summary = global_summary(layers, pruned)
    summary["attention_score_flops_per_token"] = attention_score_flops(model, context)
    summary["context_length"] = context
    return VariantResult(name, behaviour, layers, summary)


class Workbench:
    """One loaded model with its prunable layers, evaluation batches and dense reference (computed once).

    `evaluate(spec, variants)` prunes in place, evaluates each variant, and restores the pruned layers, so any
    number of points (a study, a sweep) share the one model copy and the one dense pass.
    """

    def __init__(
        self,
        config: StudyConfig,
        loaded: LoadedModel | None = None,
        work_dir: str | Path | None = None,
        progress: bool = True,
        formats: list[str] | None = None,
    ) -> None:
        """`formats` (default: the config's) are checked against the device and dtype before any work."""
        self.config, self.progress, self.timings = config, progress, {}
        torch.manual_seed(config.seed)
        self.tasks = None
        if config.tasks:  # lm-eval and every task are checked before the model loads
            from ..evaluation.tasks import TaskSuite

            self.tasks = TaskSuite.prepare(
                config.tasks, config.tasks_path, config.tasks_limit, config.num_fewshot, config.batch_size
            )
        self.task_seconds: dict[str, float] = {}
        self._dense_tasks: dict[str, list[dict]] = {}
        start = time.perf_counter()
        self.loaded = loaded or load_model(config.model, config.dtype, config.device)
        self.timings["load"] = time.perf_counter() - start
        self.model = self.loaded.model
        protocol = protocols.get(config.protocol)
        self.seqlen = config.seqlen or protocol.default_seqlen(self.loaded.context_length)[0]
        if self.seqlen > self.loaded.context_length:
            raise PrunescopeError(
                f"seqlen {self.seqlen} exceeds the model's context of {self.loaded.context_length} tokens"
            )
        self.layers = prunable_layers(self.model, config.include, config.exclude)
        for fmt in formats if formats is not None else config.formats:
            check_format_support(fmt, self.loaded.dtype, self.loaded.device)
        self.last_record_bytes = 0
        self.last_details: dict = {}
        corpus = corpus_sources.resolve(config.corpus, config.model, "evaluation", config.text_column)
        self.texts = corpus.documents
        self.evaluation = protocols.build(
            self.loaded.tokenizer,
            corpus,
            config.protocol,
            self.loaded.context_length,
            config.seqlen,
            config.max_tokens,
        )
        self.windows = self.evaluation.windows
        self.batch_size = fit_batch_size(config.batch_size, self.seqlen, logits_width(self.model))
        self.batches = make_batches(self.windows, self.batch_size, self.loaded.tokenizer.pad_token_id)
        self._calibration: dict[tuple[int, int, int], list[torch.Tensor]] = {}
        self.work_dir = Path(work_dir) if work_dir is not None else None
        start = time.perf_counter()
        spill = self.work_dir / "dense_reference" if self.work_dir is not None else None
        self.reference, self.dense_behaviour = compute_reference(
            self.model, self.batches, spill, progress=progress
        )
        self.timings["dense_reference"] = time.perf_counter() - start

    def calibration(self, spec: PruneSpec) -> list[torch.Tensor] | None:
        """Calibration samples for a calibrated method, drawn once per (samples, seqlen, seed)."""
        if not spec.needs_calibration:
            return None
        key = (spec.calib_samples, spec.calib_seqlen, spec.seed)
        if key not in self._calibration:
            from ..pruning.calibration import calibration_samples

            self._calibration[key] = calibration_samples(
                self.loaded.tokenizer,
                self.config.calibration,
                self.config.model,
                spec.calib_samples,
                spec.calib_seqlen,
                seed=spec.seed,
                text_column=self.config.text_column,
            )
        return self._calibration[key]

    def dense(self) -> VariantResult:
        return self.score_tasks(
            self.with_protocol(
                _variant_row(self.model, list(self.layers), self.dense_behaviour, "dense", self.seqlen)
            )
        )

    def score_tasks(self, result: VariantResult) -> VariantResult:
        """lm-eval task accuracies of the model as it is now, i.e. while `result`'s variant is in place."""
        if self.tasks is None:
            return result
        from ..evaluation.tasks import summary_columns

        start = time.perf_counter()
        if result.name == "dense" and "dense" in self._dense_tasks:
            rows = self._dense_tasks["dense"]  # the dense model never changes: score it once
        else:
            rows = self.tasks.score(self.model, self.loaded.tokenizer, result.name)
            if result.name == "dense":
                self._dense_tasks["dense"] = rows
        result.tasks = rows
        result.task_columns = summary_columns(rows, self.tasks.main_metrics())
        self.task_seconds[result.name] = self.task_seconds.get(result.name, 0.0) + time.perf_counter() - start
        return result

    def with_protocol(self, result: VariantResult) -> VariantResult:
        """Name the perplexity protocol next to the figures (and add its own perplexities)."""
        behaviour = result.behaviour
        result.perplexity = {
            **self.evaluation.columns(),
            **self.evaluation.metrics(behaviour.perplexity, behaviour.predicted_tokens),
        }
        return result

    def evaluate(
        self, spec: PruneSpec, variants: list[str], while_pruned: Callable[[PruneRecord], None] | None = None
    ) -> tuple[dict[str, VariantResult], dict[str, float]]:
        """Prune by `spec`, evaluate the non-dense `variants`, restore. Returns results and timings.

        `while_pruned(record)` runs after the variants, while the model is still pruned in place.
        """
        pruned = list(self.layers)
        results: dict[str, VariantResult] = {}
        timings: dict[str, float] = {}
        record: PruneRecord | None = None
        try:
            record = prune(self.model, self.layers, spec, self.calibration(spec), progress=self.progress)
            timings["prune"] = record.seconds
            self.last_record_bytes = record.nbytes
            self.last_details = record.details  # OWL block sparsities, DSnoT summary (run.json)
            for variant in variants:
                start = time.perf_counter()
                if variant == "masked":
                    behaviour = compare(self.model, self.batches, self.reference, "masked", self.progress)
                    results[variant] = _variant_row(self.model, pruned, behaviour, variant, self.seqlen)
                    self.score_tasks(results[variant])
                else:
                    if self.work_dir is not None:
                        self.work_dir.mkdir(parents=True, exist_ok=True)
                        record.spill(self.work_dir / "prune_record.pt")
                    conversion = convert(self.model, pruned, variant)
                    try:
                        behaviour = compare(self.model, self.batches, self.reference, variant, self.progress)
                        results[variant] = _variant_row(self.model, pruned, behaviour, variant, self.seqlen)
                        self.score_tasks(results[variant])  # with the sparse modules swapped in
                    finally:
                        conversion.revert()
                self.with_protocol(results[variant])
                timings[f"variant_{variant}"] = time.perf_counter() - start
            if while_pruned is not None:
                record.unspill()
                while_pruned(record)
        finally:
            if record is not None:
                record.unspill()
                restore(self.model, record)
        return results, timings

    def run_info(self) -> dict:
        """Model, evaluation set, device, threads and versions: what every results folder records."""
        model = self.model
        return {
            "model": {
                "name": self.loaded.name,
                "source": self.loaded.source,
                "class": type(model).__name__,
                "model_type": getattr(model.config, "model_type", None),
                "context_length": self.loaded.context_length,
            },
            "evaluation": {
                "seqlen": self.seqlen,
                "batch_size": self.batch_size,
                "documents": len(self.texts),
                "windows": len(self.windows),
                "tokens": sum(len(w.ids) for w in self.windows),
                **self.evaluation.facts,
                "protocol": protocols.describe(self.evaluation.facts),
                "batches": len(self.batches),
            },
            "prunable_layers": len(self.layers),
            "device": str(self.loaded.device),
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
            "versions": {**versions(), **({"lm_eval": self.tasks.lm_eval_version} if self.tasks else {})},
            **({"tasks": {**self.tasks.describe(), "seconds": self.task_seconds}} if self.tasks else {}),
        }


def run_study(
    config: StudyConfig,
    loaded: LoadedModel | None = None,
    work_dir: str | Path | None = None,
    progress: bool = True,
    results_dir: str | Path | None = None,
) -> StudyResult:
    """Run the study; `loaded` reuses an already-loaded model (left dense on return).

    `work_dir` receives the spilled dense reference (deleted by the caller); None keeps it in memory.
    `results_dir` receives the latency plots when `config.latency` is set.
    """
    config.prune_spec(256)  # fail on a bad request before loading anything
    bench = Workbench(config, loaded, work_dir, progress)
    spec = config.prune_spec(bench.seqlen)
    if config.seeds:
        spec = dataclasses.replace(spec, seed=config.seeds[0])
    results: dict[str, VariantResult] = {}
    if "dense" in config.variants:
        results["dense"] = bench.dense()
    latency: dict = {}

    def measure_latency(record: PruneRecord) -> None:
        from ..latency import latency_section

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

    pruned_variants = [v for v in config.variants if v != "dense"]
    evaluated, timings = bench.evaluate(spec, pruned_variants, measure_latency if config.latency else None)
    results.update(evaluated)
    seed_results: dict[int, dict[str, VariantResult]] = {}
    seeds = config.seeds if seed_dependent(spec) else []
    if len(seeds) > 1:
        # The first seed is the study's own spec; the others re-prune the one copy against the one reference.
        seed_results[seeds[0]] = results
        for seed in seeds[1:]:
            other, other_timings = bench.evaluate(dataclasses.replace(spec, seed=seed), pruned_variants)
            seed_results[seed] = {**({"dense": results["dense"]} if "dense" in results else {}), **other}
            timings[f"prune_seed{seed}"] = other_timings["prune"]
    run = {
        "config": asdict(config),
        "prune_spec": spec.describe(),
        **bench.run_info(),
        "timings_s": {**bench.timings, **timings},
        "restore_record_bytes": bench.last_record_bytes,
        **bench.last_details,
        "peak_rss_bytes": peak_rss_bytes(),
        **({"latency": latency} if latency else {}),
        **({"seeds": list(seed_results)} if seed_results else {}),
    }
    return StudyResult(config, spec, list(bench.layers), results, run, seed_results)


def seed_dependent(spec: PruneSpec) -> bool:
    """Methods whose result moves with the seed: calibrated ones (samples) and random (the draw)."""
    return spec.needs_calibration or spec.method == "random"
