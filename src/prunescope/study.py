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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from . import __version__
from .behaviour import Behaviour, compare, compute_reference
from .corpus import load_texts, make_batches, tokenize_windows
from .errors import PrunescopeError
from .formats import FORMATS, check_format_support, convert
from .layers import prunable_layers
from .models import LoadedModel, load_model
from .pruning import PruneRecord, PruneSpec, prune, restore
from .structure import attention_score_flops, global_summary, group_table, layer_table

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


def _variant_row(model, pruned: list[str], behaviour: Behaviour, name: str, context: int) -> VariantResult:
    layers = layer_table(model)
    summary = global_summary(layers, pruned)
    summary["attention_score_flops_per_token"] = attention_score_flops(model, context)
    summary["context_length"] = context
    return VariantResult(name, behaviour, layers, summary)


def run_study(
    config: StudyConfig,
    loaded: LoadedModel | None = None,
    work_dir: str | Path | None = None,
    progress: bool = True,
) -> StudyResult:
    """Run the study; `loaded` reuses an already-loaded model (left dense on return).

    `work_dir` receives the spilled dense reference (deleted by the caller); None keeps it in memory.
    """
    timings: dict[str, float] = {}
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    if loaded is None:
        loaded = load_model(config.model, config.dtype, config.device)
    timings["load"] = time.perf_counter() - start
    model = loaded.model
    seqlen = config.seqlen or min(256, loaded.context_length)
    if seqlen > loaded.context_length:
        raise PrunescopeError(
            f"seqlen {seqlen} exceeds the model's context of {loaded.context_length} tokens"
        )
    spec = config.prune_spec(seqlen)
    layers = prunable_layers(model, config.include, config.exclude)
    for fmt in config.formats:
        check_format_support(fmt, loaded.dtype, loaded.device)

    texts = load_texts(config.corpus, config.model)
    windows = tokenize_windows(loaded.tokenizer, texts, seqlen, config.max_tokens)
    batches = make_batches(windows, config.batch_size, loaded.tokenizer.pad_token_id)
    calibration = None
    if spec.needs_calibration:
        from .pruning.calibration import calibration_samples

        calibration = calibration_samples(
            loaded.tokenizer,
            config.calibration,
            config.model,
            spec.calib_samples,
            spec.calib_seqlen,
            config.seed,
        )

    t = time.perf_counter()
    spill = Path(work_dir) / "dense_reference" if work_dir is not None else None
    reference, dense_behaviour = compute_reference(model, batches, spill, progress=progress)
    timings["dense_reference"] = time.perf_counter() - t

    pruned = list(layers)
    results: dict[str, VariantResult] = {}
    if "dense" in config.variants:
        results["dense"] = _variant_row(model, pruned, dense_behaviour, "dense", seqlen)

    record: PruneRecord | None = None
    try:
        record = prune(model, layers, spec, calibration, progress=progress)
        timings["prune"] = record.seconds
        for variant in config.variants:
            if variant == "dense":
                continue
            t = time.perf_counter()
            if variant == "masked":
                behaviour = compare(model, batches, reference, "masked", progress)
                results[variant] = _variant_row(model, pruned, behaviour, variant, seqlen)
            else:
                conversion = convert(model, pruned, variant)
                try:
                    behaviour = compare(model, batches, reference, variant, progress)
                    results[variant] = _variant_row(model, pruned, behaviour, variant, seqlen)
                finally:
                    conversion.revert()
            timings[f"variant_{variant}"] = time.perf_counter() - t
    finally:
        if record is not None:
            restore(model, record)

    run = {
        "config": asdict(config),
        "prune_spec": spec.describe(),
        "model": {
            "name": loaded.name,
            "source": loaded.source,
            "class": type(model).__name__,
            "model_type": getattr(model.config, "model_type", None),
            "context_length": loaded.context_length,
        },
        "evaluation": {
            "seqlen": seqlen,
            "documents": len(texts),
            "windows": len(windows),
            "tokens": sum(len(w) for w in windows),
            "batches": len(batches),
        },
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "timings_s": timings,
        "restore_record_bytes": record.nbytes if record is not None else 0,
        "peak_rss_bytes": peak_rss_bytes(),
    }
    return StudyResult(config, spec, pruned, results, run)
