"""One model copy, its prunable layers and one evaluation set: prune in place, evaluate variants, restore.

    bench = Workbench(StudyConfig(model="demo"))
    outcome = bench.evaluate(PruneSpec.create("wanda", 0.5), ["masked", "csr"])
    outcome.variants["masked"].behaviour.kl_mean

`evaluate` returns everything it measured (variants, timings, the restore record's size, the method's
details); nothing is left on the workbench for a later read.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ..evaluation.behaviour import Behaviour
from ..formats import check_format_support, convert
from ..layers import linear_shape, prunable_layers
from ..models import LoadedModel, load_model
from ..pruning import PruneRecord, PruneSpec, prune, restore
from ..structure import attention_score_flops, global_summary, layer_table
from .config import StudyConfig
from .evaluation_set import EvaluationSet
from .quantize import is_twin
from .versions import versions


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
class Evaluated:
    """What one `Workbench.evaluate` measured."""

    variants: dict[str, VariantResult]
    timings: dict[str, float]
    record_bytes: int  # memory the restore record held (what was removed, packed)
    details: dict  # the method's report: allocation, refinement summaries (run.json)


def _variant_row(
    model, pruned: list[str], behaviour: Behaviour, name: str, context: int, quantized: dict | None = None
) -> VariantResult:
    layers = layer_table(model, quantized)
    summary = global_summary(layers, pruned)
    summary["attention_score_flops_per_token"] = attention_score_flops(model, context)
    summary["context_length"] = context
    return VariantResult(name, behaviour, layers, summary)


class Workbench:
    """One loaded model with its prunable layers and evaluation set (dense reference computed once).

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
        torch.manual_seed(config.run.seed)
        self.tasks = None
        if config.lm_eval.tasks:  # lm-eval and every task are checked before the model loads
            from ..evaluation.tasks import TaskSuite

            options = config.lm_eval
            self.tasks = TaskSuite.prepare(
                options.tasks,
                options.tasks_path,
                options.tasks_limit,
                options.num_fewshot,
                config.evaluation.batch_size,
            )
        self.task_seconds: dict[str, float] = {}
        self._dense_tasks: dict[str, list[dict]] = {}
        start = time.perf_counter()
        self.loaded = loaded or load_model(config.load.model, config.load.dtype, config.load.device)
        self.timings["load"] = time.perf_counter() - start
        self.model = self.loaded.model
        self.layers = prunable_layers(self.model, config.prune.include, config.prune.exclude)
        for fmt in formats if formats is not None else config.formats:
            check_format_support(fmt, self.loaded.dtype, self.loaded.device)
        self._calibration: dict[tuple[int, int, int], list[torch.Tensor]] = {}
        self.work_dir = Path(work_dir) if work_dir is not None else None
        spill = self.work_dir / "dense_reference" if self.work_dir is not None else None
        self.evaluation = EvaluationSet.build(
            self.loaded, config.evaluation, config.load.model, spill, progress=progress
        )
        self.timings["dense_reference"] = self.evaluation.seconds

    @property
    def seqlen(self) -> int:
        return self.evaluation.seqlen

    @property
    def dense_behaviour(self) -> Behaviour:
        return self.evaluation.dense

    def calibration(self, spec: PruneSpec) -> list[torch.Tensor] | None:
        """Calibration samples for a calibrated method, drawn once per (samples, seqlen, seed)."""
        if not spec.needs_calibration:
            return None
        key = (spec.calib_samples, spec.calib_seqlen, spec.seed)
        if key not in self._calibration:
            from ..pruning.calibration import calibration_samples

            self._calibration[key] = calibration_samples(
                self.loaded.tokenizer,
                self.config.calib.calibration,
                self.config.load.model,
                spec.calib_samples,
                spec.calib_seqlen,
                seed=spec.seed,
                text_column=self.config.evaluation.text_column,
            )
        return self._calibration[key]

    def dense(self) -> VariantResult:
        row = _variant_row(self.model, list(self.layers), self.dense_behaviour, "dense", self.seqlen)
        return self.score_tasks(self.with_protocol(row))

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
        result.perplexity = self.evaluation.perplexity_columns(result.behaviour)
        return result

    def _measure(self, variant: str, pruned: list[str], quantized: dict | None = None) -> VariantResult:
        behaviour = self.evaluation.compare(self.model, variant, self.progress)
        return self.score_tasks(_variant_row(self.model, pruned, behaviour, variant, self.seqlen, quantized))

    # -- quantized twins (issue 25): `<variant>+<bits>` ---------------------------------------------------

    def _quant_samples(self, spec: PruneSpec) -> list[torch.Tensor]:
        """GPTQ's calibration windows: the method's own when it has them, else drawn as a calibrated one's."""
        from ..pruning.calibration import calibration_samples

        if spec.needs_calibration:  # the very windows the method pruned with
            samples, seqlen = spec.calib_samples, spec.calib_seqlen
        else:  # a method without calibration: the study's calibration options
            samples, seqlen = self.config.calib.calib_samples, self.config.calib.calib_seqlen or self.seqlen
        key = (samples, seqlen, spec.seed)
        if key not in self._calibration:
            self._calibration[key] = calibration_samples(
                self.loaded.tokenizer,
                self.config.calib.calibration,
                self.config.load.model,
                samples,
                seqlen,
                seed=spec.seed,
                text_column=self.config.evaluation.text_column,
            )
        return self._calibration[key]

    def _twin_options(self, twins: list[str], pruned: list[str]) -> dict:
        """The quantizer of each twin's `+<bits>`, validated against the twins' formats and layer shapes."""
        from ..quantization import QuantOptions
        from .quantize import check_groups, check_twins, split_variant

        check_twins(twins, [split_variant(t)[1] for t in twins])
        quant = self.config.quant
        options = {
            name: QuantOptions(name, quant.group_size, quant.quant_method)
            for name in dict.fromkeys(split_variant(t)[1] for t in twins)
        }
        check_groups({n: linear_shape(self.model.get_submodule(n)) for n in pruned}, list(options.values()))
        return options

    def _measure_quantized(
        self, twin: str, pruned: list[str], quantized: dict, records: dict
    ) -> VariantResult:
        """The model holds `twin`'s quantized values now: measure it, in its format if it has one (the format
        then stores the quantized values). `records` (file name -> record with `spill`) go to the work
        folder while a format's copy of the weights exists."""
        from .quantize import split_variant

        base = split_variant(twin)[0]
        if base in ("dense", "masked"):
            return self._measure(twin, pruned, quantized)
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            for file_name, record in records.items():
                record.spill(self.work_dir / file_name)
        conversion = convert(self.model, pruned, base)
        try:
            return self._measure(twin, pruned, quantized)
        finally:
            conversion.revert()

    def quantized_twins(
        self,
        twins: list[str],
        spec: PruneSpec,
        pruned: list[str],
        record: PruneRecord | None = None,
        timings: dict[str, float] | None = None,
    ) -> dict[str, VariantResult]:
        """Measure each twin `<variant>+<bits>` on the model as it is now (pruned, or dense for `dense+`):
        quantize `pruned` in place, convert to the twin's format if it has one, measure every metric,
        revert the format and restore the exact weights before the next twin."""
        from ..quantization import collect_hessians, quantize_model
        from .quantize import split_variant

        results: dict[str, VariantResult] = {}
        if not twins:
            return results
        options = self._twin_options(twins, pruned)
        hessians = None
        if self.config.quant.quant_method == "gptq":  # one-shot Hessians of the model as pruned
            start = time.perf_counter()
            samples = [s.to(self.loaded.device) for s in self._quant_samples(spec)]
            hessians = collect_hessians(self.model, pruned, samples)
            if timings is not None:
                timings["quant_hessians"] = time.perf_counter() - start
        for twin in twins:
            name = split_variant(twin)[1]
            start = time.perf_counter()
            qrecord = quantize_model(self.model, pruned, options[name], hessians)
            records = {
                "quant_record.pt": qrecord,
                **({"prune_record.pt": record} if record is not None else {}),
            }
            try:
                results[twin] = self._measure_quantized(
                    twin, pruned, dict.fromkeys(pruned, options[name]), records
                )
            finally:
                qrecord.restore(self.model)  # bit-exact: the pruned (or dense) weights again
            self.with_protocol(results[twin])
            results[twin].summary["quant_seconds"] = qrecord.seconds
            results[twin].summary["quant_pass"] = "after pruning" if record is not None else "dense"
            if timings is not None:
                timings[f"variant_{twin}"] = time.perf_counter() - start
        return results

    def joint_twins(
        self, twins: list[str], spec: PruneSpec, timings: dict[str, float] | None = None
    ) -> dict[str, VariantResult]:
        """Twins of a method that prunes and quantizes in one pass (SparseGPT with GPTQ, as the SparseGPT
        reference's `--wbits`): per quantizer the dense model is pruned again with `spec.quantize` set, so
        each kept column is quantized inside the pruning loop and its error propagated; the twins of that
        quantizer are measured, then the dense weights restored. The mask may differ from the plain pass's."""
        from .quantize import split_variant

        results: dict[str, VariantResult] = {}
        pruned = list(self.layers)
        for name, options in self._twin_options(twins, pruned).items():
            joint = dataclasses.replace(spec, quantize=options)
            record = prune(self.model, self.layers, joint, self.calibration(joint), progress=self.progress)
            try:
                for twin in [t for t in twins if split_variant(t)[1] == name]:
                    start = time.perf_counter()
                    quantized = dict.fromkeys(pruned, options)
                    results[twin] = self._measure_quantized(
                        twin, pruned, quantized, {"joint_record.pt": record}
                    )
                    record.unspill()
                    self.with_protocol(results[twin])
                    results[twin].summary["quant_seconds"] = record.seconds
                    results[twin].summary["quant_pass"] = "joint"
                    if timings is not None:
                        timings[f"variant_{twin}"] = time.perf_counter() - start + record.seconds
            finally:
                record.unspill()
                restore(self.model, record)
        return results

    def joint_quantization(self, spec: PruneSpec) -> bool:
        """GPTQ twins come from the method's own joint pass (SparseGPT) rather than after pruning."""
        return (
            self.config.quant.quant_method == "gptq"
            and spec.method_plugin.quantizes
            and spec.refinement_plugin.refine is None
        )

    def dense_twins(self, quantizers: list[str]) -> dict[str, VariantResult]:
        """`dense+<bits>`: every prunable layer of the dense model quantized, measured, restored."""
        from .quantize import twin_name

        twins = [twin_name("dense", q) for q in quantizers]
        return self.quantized_twins(twins, self.config.prune_spec(self.seqlen), list(self.layers))

    def evaluate(
        self, spec: PruneSpec, variants: list[str], while_pruned: Callable[[PruneRecord], None] | None = None
    ) -> Evaluated:
        """Prune by `spec`, evaluate the non-dense `variants`, restore.

        `while_pruned(record)` runs after the variants, while the model is still pruned in place.
        """
        pruned = list(self.layers)
        results: dict[str, VariantResult] = {}
        timings: dict[str, float] = {}
        record: PruneRecord | None = None
        try:
            record = prune(self.model, self.layers, spec, self.calibration(spec), progress=self.progress)
            timings["prune"] = record.seconds
            for variant in [v for v in variants if not is_twin(v)]:
                start = time.perf_counter()
                if variant == "masked":
                    results[variant] = self._measure(variant, pruned)
                else:
                    if self.work_dir is not None:
                        self.work_dir.mkdir(parents=True, exist_ok=True)
                        record.spill(self.work_dir / "prune_record.pt")
                    conversion = convert(self.model, pruned, variant)
                    try:
                        results[variant] = self._measure(variant, pruned)  # sparse modules swapped in
                    finally:
                        conversion.revert()
                self.with_protocol(results[variant])
                timings[f"variant_{variant}"] = time.perf_counter() - start
            twins = [v for v in variants if is_twin(v)]
            joint = bool(twins) and self.joint_quantization(spec)
            if not joint:
                results.update(self.quantized_twins(twins, spec, pruned, record, timings))
            if while_pruned is not None:
                record.unspill()
                while_pruned(record)
        finally:
            if record is not None:
                record.unspill()
                restore(self.model, record)
        if joint:
            results.update(self.joint_twins(twins, spec, timings))
        results = {v: results[v] for v in variants}
        return Evaluated(results, timings, record.nbytes, record.details)

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
            "evaluation": self.evaluation.describe(),
            "prunable_layers": len(self.layers),
            "device": str(self.loaded.device),
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "dtype_reason": self.loaded.dtype_reason,
            "threads": torch.get_num_threads(),
            "versions": {**versions(), **({"lm_eval": self.tasks.lm_eval_version} if self.tasks else {})},
            **({"tasks": {**self.tasks.describe(), "seconds": self.task_seconds}} if self.tasks else {}),
        }
