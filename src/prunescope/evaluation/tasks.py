"""Zero-shot task accuracy through lm-evaluation-harness, on the model copy that is in memory.

    suite = TaskSuite.prepare(["stdlib_identifier"], tasks_path=None, limit=None, num_fewshot=None)
    rows = suite.score(model, tokenizer, "masked")     # while that variant is in place

`prepare` imports lm-eval (the optional ``[tasks]`` extra), indexes the tasks and loads each once, so an
unknown task, a task whose data needs the hub while offline, or a broken task YAML fails in one line before
any model is loaded. `score` runs ``lm_eval.simple_evaluate`` with lm-eval's own ``HFLM`` wrapped around the
*in-memory* model (``HFLM(pretrained=<model>, tokenizer=..., batch_size=...)``), so a sparse format is
scored with its swapped modules in place, never a dense copy. The numbers are lm-eval's: ``acc`` (the
choice with the highest summed log-likelihood) and ``acc_norm`` (log-likelihood per byte of the choice),
their stderr and the document count.

The bundled demo task folder (``demo/tasks``) is always on the include path, before ``tasks_path``. The main
metric of a task is the first metric of its ``metric_list`` that lm-eval reports (``acc`` for the standard
multiple-choice tasks); every table names it.

lm-eval logs and draws progress bars on its own; `score` keeps them out of the terminal and leaves the
caller's random generators as they were (``simple_evaluate`` seeds python, numpy and torch itself).

**Flips** (Dutta et al. 2024, "Accuracy is not all you need"): `score` asks lm-eval for its per-document
results (``log_samples=True``) and keeps, per task, whether each document was answered correctly under the
task's main metric. The first variant scored as a baseline (``dense`` in a study or sweep, ``reference`` in
`prunescope evaluate`) is kept; every later variant gets four more rows per task, paired with it on the same
documents: ``flips`` = (b + c)/n, ``correct_to_wrong`` = b and ``wrong_to_correct`` = c (document counts),
and ``mcnemar_p`` (exact two-sided McNemar test on b and c). The baseline's own rows are 0, 0, 0 and 1.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import PrunescopeError, first_line
from ..util.records import pick
from .statistics import flips as paired_flips

EXTRA_HINT = "pip install 'prunescope[tasks]'"
# `note` is empty for rows lm-eval scored; a lossless format's rows reused from masked say so (`reused_rows`).
TASK_COLUMNS = ["variant", "task", "metric", "value", "stderr", "n", "note"]
MAIN_METRICS = ("acc", "acc_norm")  # preferred when a task does not order its metric_list
BASELINES = ("dense", "reference")  # variants every other variant's flips are counted against
FLIP_METRICS = ("flips", "correct_to_wrong", "wrong_to_correct", "mcnemar_p")


def demo_tasks_dir() -> Path:
    from ..demo.identifier_task import TASKS_DIR

    return TASKS_DIR


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError as exc:
        raise PrunescopeError(
            f"--tasks needs lm-evaluation-harness, which is not installed ({exc}); {EXTRA_HINT}"
        ) from None
    return lm_eval


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """lm-eval's log records, tqdm bars and prints go to a buffer; python/numpy/torch RNG state is kept."""
    buffer = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("lm_eval", "datasets", "accelerate")]
    levels = [logger.level for logger in loggers]
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with (
            torch.random.fork_rng(devices=[]),
            contextlib.redirect_stdout(buffer),
            contextlib.redirect_stderr(buffer),
        ):
            yield buffer
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        random.setstate(py_state)
        np.random.set_state(np_state)


def _yaml_problems(paths: list[Path]) -> list[str]:
    """'file: error' for each YAML under `paths` that cannot be parsed (lm-eval's index skips them silently).

    Plain YAML with any tag accepted: lm-eval's own tags (`!function`) are not resolved here.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    problems = []
    for root in paths:
        files = [root] if root.is_file() else sorted(root.rglob("*.yaml"))
        for path in files:
            try:
                config = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)  # noqa: S506 - safe base
                if not isinstance(config, dict):
                    raise ValueError("not a mapping")
            except (OSError, ValueError, yaml.YAMLError) as exc:
                problems.append(f"{path}: {' '.join(str(exc).split())[:160]}")
    return problems


_FULL_MANAGERS: dict[tuple, Any] = {}


def _yaml_stamp(paths: list[Path]) -> tuple:
    """(file, mtime, size) of every YAML under `paths`: a cached index is reused only while they hold."""
    stamp = []
    for root in paths:
        for path in [root] if root.is_file() else sorted(root.rglob("*.yaml")):
            info = path.stat()
            stamp.append((str(path), info.st_mtime_ns, info.st_size))
    return tuple(stamp)


def _offline() -> bool:
    import os

    return any(
        os.environ.get(name, "").strip() not in ("", "0")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


@dataclass
class TaskInfo:
    name: str
    version: Any
    main_metric: str
    metrics: list[str]
    output_type: str
    documents: int


@dataclass
class TaskSuite:
    """Validated tasks and the lm-eval TaskManager that found them; `score` evaluates one variant."""

    names: list[str]
    tasks_path: str | None = None
    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: int = 8
    info: dict[str, TaskInfo] = field(default_factory=dict)
    lm_eval_version: str = ""
    _manager: Any = field(default=None, repr=False)
    _lm: Any = field(default=None, repr=False)
    _model: Any = field(default=None, repr=False)
    # Per task, document id -> correct under the main metric, of the baseline variant (flips).
    baseline: dict[str, dict[Any, bool]] | None = field(default=None, repr=False)
    documents: dict[str, dict[str, dict[Any, bool]]] = field(default_factory=dict, repr=False)

    @classmethod
    def prepare(
        cls,
        names: list[str] | str,
        tasks_path: str | Path | None = None,
        limit: int | None = None,
        num_fewshot: int | None = None,
        batch_size: int = 8,
    ) -> TaskSuite:
        """Import lm-eval, find and load every task once; any problem is a one-line PrunescopeError."""
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        names = list(dict.fromkeys(names))
        if not names:
            raise PrunescopeError("--tasks needs at least one task name")
        if limit is not None and limit < 1:
            raise PrunescopeError("--tasks-limit must be at least 1")
        if num_fewshot is not None and num_fewshot < 0:
            raise PrunescopeError("--num-fewshot must be >= 0")
        if tasks_path is not None and not Path(tasks_path).exists():
            raise PrunescopeError(f"--tasks-path {str(tasks_path)!r} does not exist")
        lm_eval = _lm_eval()
        suite = cls(names, None if tasks_path is None else str(tasks_path), limit, num_fewshot, batch_size)
        suite.lm_eval_version = getattr(lm_eval, "__version__", "unknown")
        with quiet():
            suite._manager = suite._find_manager()
            loaded = suite._load()
        for name, task in loaded.items():
            suite.info[name] = suite._describe(name, task)
        return suite

    @property
    def include_paths(self) -> list[Path]:
        paths = [demo_tasks_dir()]
        if self.tasks_path is not None:
            paths.append(Path(self.tasks_path))
        return paths

    def _find_manager(self):
        from lm_eval.tasks import TaskManager

        include = [str(p) for p in self.include_paths]
        # Indexing lm-eval's ~15k built-in task YAMLs costs many seconds; local tasks do not need it.
        local = TaskManager(include_path=include, include_defaults=False)
        if all(name in local.all_tasks for name in self.names):
            return local
        if self.tasks_path is not None:
            # lm-eval's index skips a YAML it cannot parse without a word: name it rather than "unknown".
            problems = _yaml_problems([Path(self.tasks_path)])
            if problems:
                raise PrunescopeError(f"broken task YAML {problems[0]}")
        key = (tuple(include), _yaml_stamp(self.include_paths))
        if key not in _FULL_MANAGERS:  # one index per process and include path (sweeps, tests)
            _FULL_MANAGERS.clear()
            _FULL_MANAGERS[key] = TaskManager(include_path=include)
        manager = _FULL_MANAGERS[key]
        unknown = [name for name in self.names if name not in manager.all_tasks]
        if unknown:
            where = f" or in {self.tasks_path}" if self.tasks_path else " (local YAMLs: --tasks-path DIR)"
            raise PrunescopeError(f"unknown task {unknown[0]!r}: not an lm-eval task{where}")
        return manager

    def _load(self) -> dict[str, Any]:
        """name -> lm-eval Task, each loaded (its dataset read) once, or a one-line error naming it."""
        loaded: dict[str, Any] = {}
        for name in self.names:
            try:
                result = self._manager.load([name])
            except Exception as exc:  # noqa: BLE001 - lm-eval and datasets raise many kinds
                message = first_line(exc)
                if isinstance(exc, ConnectionError) or ("offline" in message.lower() and _offline()):
                    raise PrunescopeError(
                        f"task {name!r} needs its data from the Hugging Face hub, which is offline here "
                        f"({message}); use a local task YAML with --tasks-path"
                    ) from None
                raise PrunescopeError(
                    f"task {name!r} cannot be loaded: {type(exc).__name__}: {message}"
                ) from None
            tasks = result.get("tasks", {}) if isinstance(result, dict) else {}
            if not tasks:
                raise PrunescopeError(f"task {name!r} names no task")
            for sub, task in tasks.items():
                loaded[str(getattr(task, "task_name", None) or getattr(sub, "task_name", sub))] = task
        return loaded

    def _describe(self, name: str, task: Any) -> TaskInfo:
        config = task.config
        metrics = [m["metric"] for m in (config.metric_list or []) if isinstance(m.get("metric"), str)]
        if not metrics:
            metrics = list(task.aggregation().keys())
        main = metrics[0] if metrics else MAIN_METRICS[0]
        try:
            docs = task.eval_docs
            documents = len(docs)
        except Exception:  # noqa: BLE001 - a task without eval docs fails later, in lm-eval's words
            documents = 0
        if self.limit is not None:
            documents = min(documents, self.limit)
        version = (config.metadata or {}).get("version") if isinstance(config.metadata, dict) else None
        return TaskInfo(name, version, main, metrics, str(config.output_type), documents)

    def main_metrics(self) -> dict[str, str]:
        return {name: info.main_metric for name, info in self.info.items()}

    def describe(self) -> dict:
        """What run.json records: lm-eval's version, each task's version, main metric and documents."""
        return {
            "lm_eval": self.lm_eval_version,
            **pick(self, "tasks_path", "limit", "num_fewshot", "batch_size"),
            "tasks": {
                name: pick(info, "version", "main_metric", "metrics", "output_type", "documents")
                for name, info in self.info.items()
            },
        }

    def _wrap(self, model: Any, tokenizer: Any):
        from lm_eval.models.huggingface import HFLM

        # One HFLM per model object: it holds the model by reference, so in-place pruning and swapped
        # sparse modules are what it runs.
        if self._lm is None or self._model is not model:
            self._lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size)
            self._model = model
            if self._lm.device.type == "meta":
                # A disk-offloaded model's first weight sits on meta; accelerate's hooks move inputs from
                # the CPU to each module's execution device.
                self._lm._device = torch.device("cpu")
        return self._lm

    def release(self) -> None:
        """Drop the wrapper and with it the reference to the model (before loading another one)."""
        self._lm = self._model = None

    def evaluate(self, model: Any, tokenizer: Any) -> dict:
        """lm-eval's raw results dict for the model as it is now."""
        import lm_eval

        was_training = model.training
        model.eval()
        try:
            with quiet():
                lm = self._wrap(model, tokenizer)
                results = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=list(self.names),
                    num_fewshot=self.num_fewshot,
                    limit=self.limit,
                    task_manager=self._manager,
                    log_samples=True,  # per-document correctness, for flips
                )
        except PrunescopeError:
            raise
        except Exception as exc:  # noqa: BLE001 - a task that loads but cannot run is still bad input
            raise PrunescopeError(f"lm-eval failed on {', '.join(self.names)}: {first_line(exc)}") from None
        finally:
            model.train(was_training)
        if results is None:
            raise PrunescopeError("lm-eval returned no results")
        return results

    def score(self, model: Any, tokenizer: Any, variant: str) -> list[dict]:
        """Long-form rows (variant, task, metric, value, stderr, n) for the model as it is now, and flip rows
        against the baseline variant (see the module docstring)."""
        results = self.evaluate(model, tokenizer)
        rows = result_rows(results, variant)
        correct = document_correctness(results, self.main_metrics())
        self.documents[variant] = correct
        if variant in BASELINES:
            self.baseline = correct
        if self.baseline is not None:
            rows += flip_rows(self.baseline, correct, variant)
        return rows


def lossless_stand_ins(variants: list[str], lossless_formats: set[str]) -> dict[str, str]:
    """Lossless format -> the variant whose predictions it reproduces: masked, or without masked the first
    lossless format listed (which itself is measured); other variants have none. `lossless_formats`: the
    variants that are lossless formats (`formats.lossless_formats`)."""
    lossless = [v for v in variants if v in lossless_formats]
    source = "masked" if "masked" in variants else (lossless[0] if lossless else None)
    return {v: source for v in lossless if v != source}


def reused_note(source: str) -> str:
    return f"= {source} (lossless format)"


def reused_rows(rows: list[dict], variant: str, source: str) -> list[dict]:
    """`source`'s task rows (flips included) reported for the lossless format `variant`, labelled."""
    return [{**row, "variant": variant, "note": reused_note(source)} for row in rows]


def plan_line(variants: list[str], mode: str, lossless_formats: set[str]) -> str:
    """The one line said before lm-eval starts: the variants it runs on and why the others are skipped."""
    reused = lossless_stand_ins(variants, lossless_formats) if mode == "distinct" else {}
    scored = [v for v in variants if v not in reused]
    line = f"lm-eval runs on {', '.join(scored)}"
    if not reused:
        return line
    by_source: dict[str, list[str]] = {}
    for variant, source in reused.items():
        by_source.setdefault(source, []).append(variant)
    skipped = "; ".join(f"{', '.join(names)} report {src}'s task rows" for src, names in by_source.items())
    return (
        f"{line}; {skipped} (lossless formats: the same predictions up to float rounding; "
        "--tasks-variants all runs lm-eval on them too)"
    )


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" when it has no stderr
    return None if np.isnan(number) else number


def result_rows(results: dict, variant: str) -> list[dict]:
    """lm-eval's ``results`` dict -> one row per (task, metric); ``metric,filter`` keys, stderr beside."""
    rows = []
    samples = results.get("n-samples", {})
    for task, values in results.get("results", {}).items():
        n = samples.get(task, {}).get("effective")
        for key, value in values.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            if _number(value) is None:
                continue
            rows.append(
                {
                    "variant": variant,
                    "task": task,
                    "metric": metric if filt == "none" else f"{metric},{filt}",
                    "value": _number(value),
                    "stderr": _number(values.get(f"{metric}_stderr,{filt}")),
                    "n": n,
                }
            )
    return rows


def summary_columns(rows: list[dict], main_metrics: dict[str, str]) -> dict[str, float]:
    """``task:<name>:<metric>`` -> value for the main metric of each task (one variant's rows), and
    ``task:<name>:flips`` against the baseline when it was counted."""
    return {
        f"task:{row['task']}:{row['metric']}": row["value"]
        for row in rows
        if main_metrics.get(row["task"]) == row["metric"] or row["metric"] == "flips"
    }


def _correct(value: Any) -> bool | None:
    """A per-document value of a 0/1 metric as a bool; None for anything else (e.g. a perplexity)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    number = _number(value)
    if number is None or number not in (0.0, 1.0):
        return None
    return number == 1.0


def document_correctness(results: dict, main_metrics: dict[str, str]) -> dict[str, dict[Any, bool]]:
    """Per task, lm-eval's per-document result of its main metric (``log_samples``): doc_id -> correct.

    The samples of filter ``none`` are used (the one every multiple-choice task has), else the first filter
    lm-eval logged. A task whose main metric is not 0/1 per document (e.g. a perplexity) has no entry.
    """
    correctness: dict[str, dict[Any, bool]] = {}
    for task, samples in (results.get("samples") or {}).items():
        metric = main_metrics.get(task)
        if metric is None or not samples:
            continue
        filters = [sample.get("filter", "none") for sample in samples]
        chosen = "none" if "none" in filters else filters[0]
        documents: dict[Any, bool] = {}
        for sample in samples:
            if sample.get("filter", "none") != chosen or metric not in sample:
                continue
            value = _correct(sample[metric])
            if value is None:
                documents = {}
                break
            documents[sample.get("doc_id", len(documents))] = value
        if documents:
            correctness[task] = documents
    return correctness


def flip_rows(
    baseline: dict[str, dict[Any, bool]], variant: dict[str, dict[Any, bool]], name: str
) -> list[dict]:
    """flips, correct_to_wrong, wrong_to_correct and mcnemar_p per task, on the documents both scored."""
    rows = []
    for task, documents in variant.items():
        if task not in baseline:
            continue
        paired = paired_flips(baseline[task], documents)
        values = {
            "flips": paired.flips,
            "correct_to_wrong": paired.correct_to_wrong,
            "wrong_to_correct": paired.wrong_to_correct,
            "mcnemar_p": paired.mcnemar_p,
        }
        rows += [
            {"variant": name, "task": task, "metric": metric, "value": value, "stderr": None, "n": paired.n}
            for metric, value in values.items()
        ]
    return rows
