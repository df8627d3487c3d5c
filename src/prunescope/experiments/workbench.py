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
from ..formats import check_format_support, convert, lossless_formats
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
        measure_lossless: bool = True,
        before_tasks: Callable[[], None] | None = None,
    ) -> None:
        """`formats` (default: the config's) are checked against the device and dtype before any work.

        A lossless format gives masked's predictions up to float rounding: with `measure_lossless` False its
        behaviour is masked's (a sweep's cost curves need its size, not another pass), and under
        `--tasks-variants distinct` its task rows are masked's (`evaluation.tasks.lossless_stand_ins`).
        `before_tasks` runs once, just before lm-eval first runs (a command says there what it will score)."""
        self.config, self.progress, self.timings = config, progress, {}
        self.measure_lossless = measure_lossless
        self._before_tasks = before_tasks
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
        return self._windows(spec.calib_samples, spec.calib_seqlen, spec.seed)

    def _windows(self, samples: int, seqlen: int, seed: int) -> list[torch.Tensor]:
        key = (samples, seqlen, seed)
        if key not in self._calibration:
            from ..pruning.calibration import calibration_samples

            self._calibration[key] = calibration_samples(
                self.loaded.tokenizer,
                self.config.calib.calibration,
                self.config.load.model,
                samples,
                seqlen,
                seed=seed,
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
            if self._before_tasks is not None:
                self._before_tasks()
                self._before_tasks = None
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

    def _measure(
        self,
        variant: str,
        pruned: list[str],
        quantized: dict | None = None,
        stand_in: VariantResult | None = None,
    ) -> VariantResult:
        """The model as it is now: its structure, and its behaviour and task scores, or for a lossless format
        those of `stand_in` (masked's result) where the options say not to measure them again."""
        from ..evaluation.tasks import reused_note, reused_rows, summary_columns

        reuse_behaviour = stand_in is not None and not self.measure_lossless
        if reuse_behaviour:
            behaviour = stand_in.behaviour
        else:
            behaviour = self.evaluation.compare(self.model, variant, self.progress)
        result = _variant_row(self.model, pruned, behaviour, variant, self.seqlen, quantized)
        if reuse_behaviour:
            result.summary["behaviour_of"] = reused_note(stand_in.name)
        if stand_in is None or self.tasks is None or self.config.lm_eval.tasks_variants == "all":
            return self.score_tasks(result)
        result.tasks = reused_rows(stand_in.tasks, variant, stand_in.name)
        result.task_columns = summary_columns(result.tasks, self.tasks.main_metrics())
        return result

    # -- quantized twins (issue 25): `<variant>+<bits>` ---------------------------------------------------

    def _gptq_calibration(self, spec: PruneSpec) -> PruneSpec:
        """`spec` sized for GPTQ's calibration: the method's own windows when it has them, else the study's
        calibration options (drawn as a calibrated method's)."""
        if spec.needs_calibration:  # the very windows the method prunes with
            return spec
        calib = self.config.calib
        seqlen = calib.calib_seqlen or self.seqlen
        return dataclasses.replace(spec, calib_samples=calib.calib_samples, calib_seqlen=seqlen)

    def _quant_samples(self, spec: PruneSpec) -> list[torch.Tensor]:
        """GPTQ's calibration windows (`_gptq_calibration`)."""
        sized = self._gptq_calibration(spec)
        return self._windows(sized.calib_samples, sized.calib_seqlen, sized.seed)

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
        if self.config.quant.quant_method == "gptq":  # the dense model's one-shot Hessians (`dense+`)
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

    def gptq_in_pass_twins(
        self, twins: list[str], spec: PruneSpec, timings: dict[str, float] | None = None
    ) -> dict[str, VariantResult]:
        """GPTQ twins of a pruned model, quantized inside the block pass as the references do (each block's
        layers quantized on the inputs the already pruned and quantized blocks give): per quantizer the
        dense model is pruned again with `spec.quantize` set — SparseGPT's one loop that prunes and
        quantizes, else GPTQ on each layer right after it is pruned (`pruning/driver.py`) — its twins
        measured, the dense weights restored. Masks may differ a little from the plain pass's (later blocks
        calibrate on quantized activations; SparseGPT's saliencies see the quantization error)."""
        from .quantize import split_variant

        results: dict[str, VariantResult] = {}
        pruned = list(self.layers)
        for name, options in self._twin_options(twins, pruned).items():
            in_pass = dataclasses.replace(self._gptq_calibration(spec), quantize=options)
            record = prune(
                self.model, self.layers, in_pass, self.calibration(in_pass), progress=self.progress
            )
            quantized = dict.fromkeys(pruned, options)
            if timings is not None:  # one pruning + GPTQ pass per quantizer, shared by its twins
                timings[f"gptq_pass_{name}"] = record.seconds
            try:
                for twin in [t for t in twins if split_variant(t)[1] == name]:
                    start = time.perf_counter()
                    results[twin] = self._measure_quantized(
                        twin, pruned, quantized, {"gptq_record.pt": record}
                    )
                    record.unspill()
                    self.with_protocol(results[twin])
                    results[twin].summary["quant_seconds"] = record.seconds
                    results[twin].summary["quant_pass"] = "joint" if in_pass.joint_quantization else "in pass"
                    if timings is not None:
                        timings[f"variant_{twin}"] = time.perf_counter() - start
            finally:
                record.unspill()
                restore(self.model, record)
        return results

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
        from ..evaluation.tasks import lossless_stand_ins

        pruned = list(self.layers)
        results: dict[str, VariantResult] = {}
        timings: dict[str, float] = {}
        record: PruneRecord | None = None
        stand_ins = lossless_stand_ins(variants, lossless_formats(variants))
        # masked first: the lossless formats that stand on its result come after it in any order given.
        plain = sorted((v for v in variants if not is_twin(v)), key=lambda v: v != "masked")
        try:
            record = prune(self.model, self.layers, spec, self.calibration(spec), progress=self.progress)
            timings["prune"] = record.seconds
            for variant in plain:
                start = time.perf_counter()
                if variant == "masked":
                    results[variant] = self._measure(variant, pruned)
                else:
                    if self.work_dir is not None:
                        self.work_dir.mkdir(parents=True, exist_ok=True)
                        record.spill(self.work_dir / "prune_record.pt")
                    conversion = convert(self.model, pruned, variant)
                    stand_in = results.get(stand_ins.get(variant, ""))
                    try:  # sparse modules swapped in
                        results[variant] = self._measure(variant, pruned, stand_in=stand_in)
                    finally:
                        conversion.revert()
                self.with_protocol(results[variant])
                timings[f"variant_{variant}"] = time.perf_counter() - start
            twins = [v for v in variants if is_twin(v)]
            in_pass = bool(twins) and self.config.quant.quant_method == "gptq"
            if not in_pass:  # RTN rounds the weights as pruned here
                results.update(self.quantized_twins(twins, spec, pruned, record, timings))
            if while_pruned is not None:
                record.unspill()
                while_pruned(record)
        finally:
            if record is not None:
                record.unspill()
                restore(self.model, record)
        if in_pass:
            results.update(self.gptq_in_pass_twins(twins, spec, timings))
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
