"""The dense -> variants study on one model copy.

    result = prunescope.study(StudyConfig(model="demo", sparsity=0.3))

1. load the model once; compute the dense reference log-probabilities once;
2. prune in place (the record keeps only what was removed);
3. evaluate each variant: `masked` (zeros in dense tensors) and each sparse format (pruned projections
   swapped for sparse modules, then swapped back);
4. restore the pruned layers, so the caller gets the dense model back.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ..errors import PrunescopeError
from ..evaluation.behaviour import Behaviour, compare, compute_reference
from ..evaluation.corpus import load_texts, make_batches, tokenize_windows
from ..formats import FORMATS, check_format_support, convert
from ..layers import prunable_layers
from ..models import LoadedModel, load_model
from ..pruning import PruneRecord, PruneSpec, prune, restore
from ..structure import attention_score_flops, global_summary, group_table, layer_table
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
    seqlen: int | None = None  # None: min(256, model context)
    max_tokens: int = 4096
    batch_size: int = 8
    calibration: str | None = None  # None/"builtin": see pruning.calibration
    calib_samples: int = 128
    calib_seqlen: int | None = None  # None: the evaluation seqlen
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0
    latency: bool = False  # also measure layer and model latency of each format (prunescope bench)

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
        if self.max_tokens < 2 or self.batch_size < 1:
            raise PrunescopeError("max_tokens must be >= 2 and batch_size >= 1")
        if self.seqlen is not None and self.seqlen < 2:
            raise PrunescopeError("seqlen must be at least 2")
        if self.corpus not in (None, "builtin") and not Path(self.corpus).is_file():
            raise PrunescopeError(f"corpus file {self.corpus!r} does not exist")
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
        )

    @property
    def formats(self) -> list[str]:
        return [v for v in self.variants if v in FORMATS]


@dataclass
class VariantResult:
    name: str
    behaviour: Behaviour
    layers: pd.DataFrame
    summary: dict


@dataclass
class StudyResult:
    config: StudyConfig
    spec: PruneSpec
    pruned_layers: list[str]
    variants: dict[str, VariantResult]
    run: dict

    @property
    def summary(self) -> pd.DataFrame:
        """One row per variant: structure and behaviour side by side."""
        rows = []
        for variant in self.variants.values():
            rows.append({"variant": variant.name, **variant.summary, **variant.behaviour.as_dict()})
        return pd.DataFrame(rows)

    @property
    def layers(self) -> pd.DataFrame:
        return pd.concat([v.layers.assign(variant=v.name) for v in self.variants.values()], ignore_index=True)

    @property
    def groups(self) -> pd.DataFrame:
        return pd.concat(
            [group_table(v.layers).assign(variant=v.name) for v in self.variants.values()], ignore_index=True
        )


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
        start = time.perf_counter()
        self.loaded = loaded or load_model(config.model, config.dtype, config.device)
        self.timings["load"] = time.perf_counter() - start
        self.model = self.loaded.model
        self.seqlen = config.seqlen or min(256, self.loaded.context_length)
        if self.seqlen > self.loaded.context_length:
            raise PrunescopeError(
                f"seqlen {self.seqlen} exceeds the model's context of {self.loaded.context_length} tokens"
            )
        self.layers = prunable_layers(self.model, config.include, config.exclude)
        for fmt in formats if formats is not None else config.formats:
            check_format_support(fmt, self.loaded.dtype, self.loaded.device)
        self.last_record_bytes = 0
        self.texts = load_texts(config.corpus, config.model)
        self.windows = tokenize_windows(self.loaded.tokenizer, self.texts, self.seqlen, config.max_tokens)
        self.batch_size = fit_batch_size(config.batch_size, self.seqlen, logits_width(self.model))
        self.batches = make_batches(self.windows, self.batch_size, self.loaded.tokenizer.pad_token_id)
        self._calibration: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.work_dir = Path(work_dir) if work_dir is not None else None
        start = time.perf_counter()
        spill = self.work_dir / "dense_reference" if self.work_dir is not None else None
        self.reference, self.dense_behaviour = compute_reference(
            self.model, self.batches, spill, progress=progress
        )
        self.timings["dense_reference"] = time.perf_counter() - start

    def calibration(self, spec: PruneSpec) -> list[torch.Tensor] | None:
        """Calibration samples for a calibrated method, drawn once per (samples, seqlen)."""
        if not spec.needs_calibration:
            return None
        key = (spec.calib_samples, spec.calib_seqlen)
        if key not in self._calibration:
            from ..pruning.calibration import calibration_samples

            self._calibration[key] = calibration_samples(
                self.loaded.tokenizer,
                self.config.calibration,
                self.config.model,
                spec.calib_samples,
                spec.calib_seqlen,
                seed=self.config.seed,
            )
        return self._calibration[key]

    def dense(self) -> VariantResult:
        return _variant_row(self.model, list(self.layers), self.dense_behaviour, "dense", self.seqlen)

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
            for variant in variants:
                start = time.perf_counter()
                if variant == "masked":
                    behaviour = compare(self.model, self.batches, self.reference, "masked", self.progress)
                    results[variant] = _variant_row(self.model, pruned, behaviour, variant, self.seqlen)
                else:
                    if self.work_dir is not None:
                        self.work_dir.mkdir(parents=True, exist_ok=True)
                        record.spill(self.work_dir / "prune_record.pt")
                    conversion = convert(self.model, pruned, variant)
                    try:
                        behaviour = compare(self.model, self.batches, self.reference, variant, self.progress)
                        results[variant] = _variant_row(self.model, pruned, behaviour, variant, self.seqlen)
                    finally:
                        conversion.revert()
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
                "tokens": sum(len(w) for w in self.windows),
                "batches": len(self.batches),
            },
            "prunable_layers": len(self.layers),
            "device": str(self.loaded.device),
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
            "versions": versions(),
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

    evaluated, timings = bench.evaluate(
        spec, [v for v in config.variants if v != "dense"], measure_latency if config.latency else None
    )
    results.update(evaluated)
    run = {
        "config": asdict(config),
        "prune_spec": spec.describe(),
        **bench.run_info(),
        "timings_s": {**bench.timings, **timings},
        "restore_record_bytes": bench.last_record_bytes,
        "peak_rss_bytes": peak_rss_bytes(),
        **({"latency": latency} if latency else {}),
    }
    return StudyResult(config, spec, list(bench.layers), results, run)
