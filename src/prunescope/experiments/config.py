"""What a study depends on, as option groups: every option, its default and its help text defined once.

    StudyConfig(model="demo", method="wanda", sparsity=0.5)            # flat names, routed to their group
    StudyConfig(prune=PruneRequest(method="wanda"), variants=["dense", "masked"])   # or the groups

The command line builds its options from these dataclasses (`commands/options.py`), so a default changed
here changes every command; a study's run.json records `config.asdict()` and `--config run.json` rebuilds
the same config from it (`StudyConfig.from_dict`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import PrunescopeError
from ..evaluation import datasets as corpus_sources
from ..evaluation import protocols
from ..formats import FORMATS
from ..pruning import PruneSpec
from ..pruning.spec import DEFAULT_SPARSITY, Pattern, resolve_sparsity
from ..util.seeds import parse_seeds

BASE_VARIANTS = ("dense", "masked")
# A sweep's variants (dense runs anyway): csr's size and FLOPs move with sparsity, so the cost curves do; its
# behaviour and task scores are masked's (a lossless format), reused rather than measured again.
SWEEP_VARIANTS = ["masked", "csr"]
TASKS_VARIANTS = ("distinct", "all")  # --tasks-variants: see TaskOptions
# A placeholder window length that only validates a request before the model (and its context) is known.
VALIDATION_SEQLEN = 256


def option(default: Any = None, help: str | Callable[[], str] = "", *, flags: tuple[str, ...] = (), **cli):
    """A dataclass field that is also a command-line option: `help` (text, or a function of the registries),
    `flags` (default: --field-name) and `cli` overrides such as {"type": str} for a comma list."""
    metadata = {"help": help, "flags": flags, **cli}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def parse_list(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return list(value)


def _method_help() -> str:
    from ..pruning import registry

    return f"{', '.join(registry.METHODS.names())}."


@dataclass
class LoadOptions:
    model: str = option(
        "demo", "'demo', a local model folder (save_pretrained) or a hub id.", flags=("--model", "-m")
    )
    dtype: str = option(
        "auto",
        "auto (the checkpoint's dtype where the device computes it natively, float32 on CPU), float32, "
        "float16, bfloat16.",
    )
    device: str = option("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, mps.")


@dataclass
class PruneRequest:
    """What to prune and how, as the user says it; `spec()` validates it into a PruneSpec."""

    method: str = option("magnitude", _method_help)
    # None resolves to DEFAULT_SPARSITY, or to an N:M pattern's own 1 - N/M (`resolve_sparsity`).
    sparsity: float | None = option(
        None,
        "Fraction of prunable weights set to zero [0, 1); an N:M --pattern sets its own, 1 - N/M.",
        shown_default=f"{DEFAULT_SPARSITY:g}",
    )
    scope: str | None = option(None, "global, layer or row (default: the method's own).")
    pattern: str = option("unstructured", "unstructured or N:M, e.g. 2:4.")
    include: list[str] = option([], "Glob on module names to prune (repeatable).", type=list[str] | None)
    exclude: list[str] = option([], "Glob on module names to keep dense (repeatable).", type=list[str] | None)
    allocation: str = option("uniform", "Per-block sparsity: uniform, or owl (outlier-weighted).")
    refine: str = option("none", "Mask refinement after each layer: none or dsnot.")
    # The plug-ins' own options by their flat names (ria_alpha, owl_m, ...): see pruning/registry.py.
    options: dict[str, Any] = option({}, cli=False)

    def __post_init__(self) -> None:
        self.include, self.exclude = parse_list(self.include), parse_list(self.exclude)

    @property
    def resolved_sparsity(self) -> float:
        """The sparsity the spec prunes at: the one given, else the pattern's own or DEFAULT_SPARSITY."""
        return resolve_sparsity(self.sparsity, Pattern.parse(self.pattern))

    def spec(self, seed: int, calib: CalibrationOptions, default_seqlen: int) -> PruneSpec:
        return PruneSpec.create(
            self.method,
            self.sparsity,
            self.pattern,
            scope=self.scope,
            seed=seed,
            calib_samples=calib.calib_samples,
            calib_seqlen=calib.calib_seqlen or default_seqlen,
            allocation=self.allocation,
            refine=self.refine,
            **self.options,
        )


@dataclass
class EvaluationOptions:
    """The evaluation corpus, its perplexity protocol and how it is batched."""

    corpus: str | None = option(
        None,
        ".txt/.jsonl, wikitext2, c4, ptb, hf:NAME[:CONFIG][:SPLIT], .parquet, .arrow or a save_to_disk "
        "folder (default: the demo's held-out text, else the bundled English set).",
    )
    text_column: str | None = option(
        None, "Text column of a dataset source (default 'text'; ptb: 'sentence')."
    )
    ppl_protocol: str | None = option(
        None, "Perplexity protocol: document, joined (Wanda/SparseGPT) or rolling (lm-eval)."
    )
    seqlen: int | None = option(
        None, "Window length (default: document min(256, context); joined/rolling context capped at 4096)."
    )
    max_tokens: int | None = option(
        None, "Evaluation token budget (default: 4096 for document, the whole split otherwise)."
    )
    batch_size: int = option(8, "Windows per forward pass (cut to fit a logits budget).")

    def __post_init__(self) -> None:
        if (self.max_tokens is not None and self.max_tokens < 2) or self.batch_size < 1:
            raise PrunescopeError("max_tokens must be >= 2 and batch_size >= 1")
        if self.seqlen is not None and self.seqlen < 2:
            raise PrunescopeError("seqlen must be at least 2")
        corpus_sources.check_source(self.corpus)
        protocols.check(self.ppl_protocol)

    @property
    def protocol(self) -> str:
        return self.ppl_protocol or protocols.default_protocol(self.corpus)


@dataclass
class CalibrationOptions:
    calibration: str | None = option(
        None, "Calibration source: 'builtin', or any --corpus source (aliases: their train split)."
    )
    calib_samples: int = option(128, "Calibration windows (the papers use 128).")
    calib_seqlen: int | None = option(None, "Calibration window length (default: the evaluation seqlen).")

    def __post_init__(self) -> None:
        corpus_sources.check_source(self.calibration, "calibration")


@dataclass
class TaskOptions:
    """Zero-shot tasks through lm-evaluation-harness (evaluation/tasks.py)."""

    tasks: list[str] = option(
        [],
        "Comma list of lm-eval tasks scored on every variant, e.g. stdlib_identifier (bundled, offline) "
        "or arc_easy,hellaswag (hub data). Needs lm-eval: the optional 'tasks' extra of prunescope.",
        type=str | None,
    )
    tasks_path: str | None = option(None, "Folder of local lm-eval task YAMLs (lm-eval's include path).")
    tasks_limit: int | None = option(None, "At most this many documents per task (quick checks).")
    num_fewshot: int | None = option(None, "Few-shot examples per task (default: the task's own, else 0).")
    tasks_variants: str = option(
        "distinct",
        "distinct: lm-eval runs on dense, masked and quantized twins; a lossless format (csr, bitmask, ...) "
        "reports masked's task rows, labelled, as it gives masked's predictions up to float rounding. "
        "all: lm-eval runs on every variant.",
    )

    def __post_init__(self) -> None:
        self.tasks = parse_list(self.tasks)
        if self.tasks_variants not in TASKS_VARIANTS:
            raise PrunescopeError(
                f"--tasks-variants must be one of {', '.join(TASKS_VARIANTS)}, got {self.tasks_variants!r}"
            )
        if self.tasks_limit is not None and self.tasks_limit < 1:
            raise PrunescopeError("tasks_limit must be at least 1")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise PrunescopeError("num_fewshot must be >= 0")
        if (self.tasks_path or self.tasks_limit or self.num_fewshot is not None) and not self.tasks:
            raise PrunescopeError("--tasks-path, --tasks-limit and --num-fewshot need --tasks")


@dataclass
class RunOptions:
    """What a study compares and repeats."""

    variants: list[str] = option(
        ["dense", "masked", "csr"], "Comma list of dense, masked and formats (csr, bitmask, ...).", type=str
    )
    seed: int = option(0, "Seed of every random choice (pruning, sampling).")
    seeds: list[int] = option(
        [],
        "Comma list of seeds: repeat seed-dependent methods per seed, report mean and std.",
        type=str | None,
    )
    latency: bool = option(False, "Also measure layer/model latency per format.")
    per_token: bool = option(False, "Write tokens.parquet: one row per variant and compared position.")

    def __post_init__(self) -> None:
        self.variants = parse_list(self.variants)
        unknown = [v for v in self.variants if v not in BASE_VARIANTS and v not in FORMATS]
        if unknown or not self.variants:
            choices = ", ".join((*BASE_VARIANTS, *FORMATS))
            raise PrunescopeError(
                f"unknown variant {unknown[0] if unknown else '(none)'!r}; choose from {choices}"
            )
        if len(set(self.variants)) != len(self.variants):
            raise PrunescopeError("each variant may be listed once")
        self.seeds = parse_seeds(self.seeds)


@dataclass
class QuantizeOptions:
    """Quantized twins of every variant (issue 25, `prunescope.quantization`)."""

    quantize: list[str] = option(
        [],
        "Comma list of int8, int4: each variant also runs quantized, as <variant>+<bits> (dense+int8, "
        "masked+int4, csr+int8, ...); 'none' (a sweep axis) names the unquantized variants, always run.",
        type=str | None,
    )
    group_size: int = option(128, "int4: consecutive input columns sharing one scale and zero.")
    quant_method: str = option(
        "rtn", "rtn (round to nearest) or gptq (GPTQ on the kept weights, calibration Hessians)."
    )

    def __post_init__(self) -> None:
        from ..quantization import parse_quantizers

        self.quantize = [q for q in parse_list(self.quantize) if q != "none"]
        # The registry's one-line errors (unknown name, method, group size), with or without --quantize.
        parse_quantizers(",".join(self.quantize) or "int8", self.group_size, self.quant_method)

    def quantizers(self) -> list:
        """One `QuantOptions` per --quantize name, in order (empty without --quantize)."""
        from ..quantization import parse_quantizers

        if not self.quantize:
            return []
        return parse_quantizers(",".join(self.quantize), self.group_size, self.quant_method)


# The groups a study is made of, by the attribute that holds each.
GROUPS: dict[str, type] = {
    "load": LoadOptions,
    "prune": PruneRequest,
    "evaluation": EvaluationOptions,
    "calib": CalibrationOptions,
    "lm_eval": TaskOptions,
    "run": RunOptions,
    "quant": QuantizeOptions,
}


def group_of(name: str) -> str | None:
    """The group that defines the flat option `name`, or None."""
    for group, cls in GROUPS.items():
        if name in {f.name for f in dataclasses.fields(cls)} and name != "options":
            return group
    return None


class StudyConfig:
    """Everything a study depends on (saved in run.json so any result can be reproduced): the groups above."""

    load: LoadOptions
    prune: PruneRequest
    evaluation: EvaluationOptions
    calib: CalibrationOptions
    lm_eval: TaskOptions
    run: RunOptions
    quant: QuantizeOptions

    def __init__(self, **options: Any) -> None:
        """Groups by their attribute (`prune=PruneRequest(...)`) and/or options by their flat names
        (`method="wanda"`); a flat name that no group defines is a plug-in option (`ria_alpha=0.5`)."""
        flat: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
        plugin_options: dict[str, Any] = {}
        for name, value in options.items():
            if name in GROUPS:
                continue
            group = group_of(name)
            if group is None:
                plugin_options[name] = value
            else:
                flat[group][name] = value
        for group, cls in GROUPS.items():
            given = options.get(group)
            if isinstance(given, dict):
                given = cls(**given)
            base = given if given is not None else cls()
            setattr(self, group, dataclasses.replace(base, **flat[group]) if flat[group] else base)
        if plugin_options:
            self.prune = dataclasses.replace(self.prune, options={**self.prune.options, **plugin_options})
        self.prune_spec(VALIDATION_SEQLEN)  # validates method / sparsity / scope / options before any loading

    @classmethod
    def from_dict(cls, data: dict) -> StudyConfig:
        """The inverse of `asdict()`: a run.json "config" (groups) or a flat dict of options."""
        return cls(**data)

    def asdict(self) -> dict:
        """The groups as run.json records them; the sparsity resolved (0.3, or N:M's), never null."""
        groups = {group: asdict(getattr(self, group)) for group in GROUPS}
        groups["prune"]["sparsity"] = self.prune.resolved_sparsity
        return groups

    def replace(self, **options: Any) -> StudyConfig:
        """A copy with some options changed (flat names or groups)."""
        return StudyConfig(**{**{group: getattr(self, group) for group in GROUPS}, **options})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StudyConfig) and self.asdict() == other.asdict()

    def __repr__(self) -> str:
        return f"StudyConfig({self.asdict()!r})"

    def prune_spec(self, default_seqlen: int) -> PruneSpec:
        return self.prune.spec(self.run.seed, self.calib, default_seqlen)

    @property
    def model(self) -> str:
        return self.load.model

    @property
    def variants(self) -> list[str]:
        return self.run.variants

    @property
    def formats(self) -> list[str]:
        return [v for v in self.run.variants if v in FORMATS]

    @property
    def protocol(self) -> str:
        return self.evaluation.protocol
