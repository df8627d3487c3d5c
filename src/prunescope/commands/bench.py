"""`prunescope bench`: measured latency of each format next to the FLOP- and byte-ratio predictions."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
from rich.table import Table

from ..errors import PrunescopeError
from ..experiments.config import option
from . import options
from .common import OutOpt, OverwriteOpt, ProgressOpt, at_least, console, err_console, user_errors


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PrunescopeError(f"{what} must be a comma list of integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise PrunescopeError(f"{what} must list integers >= 1, got {text!r}")
    return values


def parse_grid(text: str) -> list[tuple[int, int]]:
    """'1x128,4x128' -> [(1, 128), (4, 128)] (batch x sequence length)."""
    grid = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        match = re.fullmatch(r"(\d+)[xX*](\d+)", item)
        if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
            raise PrunescopeError(f"prefill grid entries are BATCHxSEQLEN such as 4x128, got {item!r}")
        grid.append((int(match.group(1)), int(match.group(2))))
    return grid


def _cell(value, fmt: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return fmt.format(value)


def _short_status(status: str) -> str:
    return status.split(":", 1)[0]


def _print_table(frame: pd.DataFrame, title: str, columns: list[tuple[str, str, str]]) -> None:
    """One line per row; the reasons of rows that did not run are listed once below the table."""
    table = Table(title=title)
    for key, header, _ in columns:
        table.add_column(
            header, justify="left" if key in ("format", "kind", "status") else "right", no_wrap=True
        )
    for _, row in frame.iterrows():
        ok = row["status"] == "ok"
        cells = []
        for key, _, fmt in columns:
            if key == "status":
                cells.append("ok" if ok else f"[yellow]{_short_status(row['status'])}[/]")
            else:
                cells.append(_cell(row[key], fmt) if ok or key in _KEYS else "-")
        table.add_row(*cells)
    console.print(table)
    reasons = dict.fromkeys(f"{r.format}: {r.status}" for r in frame.itertuples() if r.status != "ok")
    for reason in reasons:
        console.print(f"  [yellow]{reason}[/]", highlight=False, soft_wrap=True)


# Identify a row; shown even when the variant did not run.
_KEYS = {"shape", "n", "format", "kind", "batch", "seqlen", "flop_theory", "byte_theory"}
# The measured speedup and what FLOPs and bytes predict, in both tables.
_RATIOS = [
    ("speedup", "speedup", "{:.2f}x"),
    ("flop_theory", "FLOP theory", "{:.2f}x"),
    ("byte_theory", "byte theory", "{:.2f}x"),
]
_MEDIAN = ("median_s", "median ms", "{:.4g}")
_LAYER_TABLE = [
    ("shape", "shape", "{}"),
    ("n", "n", "{}"),
    ("format", "format", "{}"),
    _MEDIAN,
    ("min_s", "min ms", "{:.4g}"),
    ("max_s", "max ms", "{:.4g}"),
    *_RATIOS,
    ("measured_over_flop", "meas/FLOP", "{:.2f}"),
    ("measured_over_bytes", "meas/byte", "{:.2f}"),
    ("status", "status", "{}"),
]
_MODEL_TABLE = [
    ("kind", "kind", "{}"),
    ("batch", "batch", "{}"),
    ("seqlen", "seq/tokens", "{}"),
    ("format", "format", "{}"),
    _MEDIAN,
    ("tokens_per_s", "tokens/s", "{:,.1f}"),
    *_RATIOS,
    ("measured_over_bytes", "meas/byte", "{:.2f}"),
    ("status", "status", "{}"),
]


def print_latency(result) -> None:
    from ..report.latency import environment_line, frames

    layers, model = frames(result)
    if not layers.empty:
        shown = layers.assign(
            median_s=layers.median_s * 1e3, min_s=layers.min_s * 1e3, max_s=layers.max_s * 1e3
        )
        _print_table(shown, "layer latency (speedup vs dense F.linear)", _LAYER_TABLE)
    if not model.empty:
        _print_table(
            model.assign(median_s=model.median_s * 1e3), "model latency (speedup vs dense)", _MODEL_TABLE
        )
    console.print(environment_line(result.environment), highlight=False)


@dataclass
class BenchOptions:
    """The bench's own options (what to time and how); what to prune comes from the study's groups."""

    formats: str = option(
        "dense,masked,csr,bsr",
        "Comma list: dense, masked, csr, bsr, bitmask, csr16, auto, semi-structured (2:4, CUDA compute "
        "capability >= 8.0).",
    )
    tokens: str = option("1,8,64,512", "Layer-level token counts n (decode to prefill).")
    block_size: int = option(16, "BSR block size.")
    prefill_grid: str = option("1x128,4x128", "Model prefill shapes, BATCHxSEQLEN list.")
    decode_batches: str = option("1,8", "Batch sizes of KV-cache decoding.")
    decode_tokens: int = option(16, "Tokens generated per decode measurement.")
    min_time: float = option(0.2, "Seconds of samples per measurement (at least).")
    layers_only: bool = option(False, "Skip the model-level prefill/decode runs.")
    cache: str = option(
        "cold",
        "cold: every timed call reads weights in no cache (rotated copies > 2x the last-level cache, or a "
        "flush), as decode of a large model does; hot: one copy, repeated.",
    )
    auto_tokens: str = option("1,64", "Token counts `auto` times each layer at: decode first, then prefill.")
    threads: int | None = option(None, "torch threads (default: torch's).")

    def __post_init__(self) -> None:
        if self.min_time <= 0:
            raise PrunescopeError("--min-time must be > 0")
        at_least(self.block_size, 1, "--block-size")
        at_least(self.decode_tokens, 1, "--decode-tokens")
        if self.threads is not None and self.threads < 1:
            raise PrunescopeError("--threads must be >= 1")

    def latency_config(self, seed: int):
        from ..latency import LatencyConfig, TimingPolicy, parse_formats

        return LatencyConfig(
            formats=parse_formats(self.formats),
            tokens=parse_ints(self.tokens, "--tokens"),
            block_size=self.block_size,
            prefill_grid=parse_grid(self.prefill_grid),
            decode_batches=parse_ints(self.decode_batches, "--decode-batches"),
            decode_tokens=self.decode_tokens,
            policy=TimingPolicy(min_time=self.min_time, max_time=max(3.0, 15 * self.min_time)),
            model_level=not self.layers_only,
            seed=seed,
            cache=self.cache,
            auto_tokens=tuple(parse_ints(self.auto_tokens, "--auto-tokens")),
        )


def _bench_options() -> list:
    # What to prune (and with which calibration) as in `study`; the timing options are the bench's own.
    chosen = options.study_options(
        groups=("load", "prune", "calib", "run"), skip=("variants", "seeds", "latency", "per_token")
    )
    sparsity = {"help": "Fraction of prunable weights set to zero (default 0.5 here, or what N:M implies)."}
    return options.group_options(BenchOptions) + options.override(chosen, sparsity=sparsity)


@options.with_options(_bench_options)
@user_errors
def bench(
    out: OutOpt = Path("results/bench"),
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
    **values,
) -> None:
    """Time the sparse forward of every pruned layer shape and of the whole model against dense."""
    import copy

    from ..experiments.config import VALIDATION_SEQLEN, StudyConfig
    from ..latency import run_latency
    from ..layers import prunable_layers
    from ..models import load_model
    from ..pruning import prune
    from ..report.latency import write_latency
    from ..report.output import atomic_directory, check_output

    own = BenchOptions(**{f.name: values.pop(f.name) for f in fields(BenchOptions)})
    if own.threads is not None:
        import torch

        torch.set_num_threads(own.threads)
    config = own.latency_config(values["seed"])
    if values["sparsity"] is None and values["pattern"].strip().lower() in ("", "unstructured"):
        values["sparsity"] = 0.5
    study = StudyConfig(**values, variants=["dense"])
    spec = study.prune_spec(VALIDATION_SEQLEN)
    check_output(out, overwrite)
    loaded = load_model(study.load.model, study.load.dtype, study.load.device)
    names = list(prunable_layers(loaded.model, study.prune.include, study.prune.exclude))
    calibration = None
    if spec.needs_calibration:
        from ..pruning.calibration import calibration_samples

        seqlen = min(spec.calib_seqlen, loaded.context_length)
        calibration = calibration_samples(
            loaded.tokenizer, study.calib.calibration, study.load.model, spec.calib_samples, seqlen, spec.seed
        )
    # The steps of a long run are its progress: on stderr, and silenced by --no-progress like any bar.
    step = err_console.print if progress else (lambda *_, **__: None)
    step(f"pruning a copy: {spec.method} {spec.sparsity:g} ({spec.pattern}), {len(names)} layers")
    pruned = copy.deepcopy(loaded.model)  # the dense model stays the baseline
    prune(pruned, {n: pruned.get_submodule(n) for n in names}, spec, calibration, progress=False)
    info = {
        "title": f"{study.load.model} {spec.method} {spec.sparsity:g} ({spec.pattern})",
        "prune_spec": spec.describe(),
    }
    result = run_latency(
        loaded.model, pruned, names, config, on_step=lambda s: step(f"timing {s}"), info=info
    )
    with atomic_directory(out, overwrite) as tmp:
        write_latency(result, tmp)
    print_latency(result)
    console.print(f"results: {out}/ (layers.csv, model.csv, latency.json, report.md, plots)")
