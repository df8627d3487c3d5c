"""`prunescope bench`: measured latency of each format next to the FLOP- and byte-ratio predictions."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import PrunescopeError
from ..experiments.config import option
from . import options
from .common import (
    OutOpt,
    OverwriteOpt,
    ProgressOpt,
    at_least,
    console,
    err_console,
    print_table,
    user_errors,
)

if TYPE_CHECKING:  # pandas costs half a second that `prunescope bench --help` need not pay
    import pandas as pd


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


def _print_table(frame: pd.DataFrame, title: str, columns: list[tuple[str, str, str]], legend: str) -> None:
    """One line per row, `legend` (what the short headers mean) under it; the reasons of rows that did not
    run are listed once below."""
    rows = []
    for _, row in frame.iterrows():
        ok = row["status"] == "ok"
        cells = []
        for key, _, fmt in columns:
            if key == "status":
                cells.append("ok" if ok else f"[yellow]{_short_status(row['status'])}[/]")
            else:
                cells.append(_cell(row[key], fmt) if ok or key in _KEYS else "-")
        rows.append(cells)
    leading_text = next(i for i, (key, _, _) in enumerate(columns) if key not in _TEXT)
    print_table(title, [header for _, header, _ in columns], rows, left=leading_text, legend=legend)
    reasons = dict.fromkeys(f"{r.format}: {r.status}" for r in frame.itertuples() if r.status != "ok")
    for reason in reasons:
        console.print(f"  [yellow]{reason}[/]", highlight=False, soft_wrap=True)


# Identify a row; shown even when the variant did not run.
_KEYS = {"shape", "n", "format", "kind", "batch", "seqlen", "flop_theory", "byte_theory"}
_TEXT = {"shape", "n", "format", "kind", "batch", "seqlen"}  # the leading ones are left-aligned
# Short headers keep each table within 80 columns; the legends say what they mean, and the CSV files hold
# the columns left out (min and max ms, measured over predicted).
_RATIOS = [
    ("speedup", "speed", "{:.2f}x"),
    ("flop_theory", "FLOP", "{:.2f}x"),
    ("byte_theory", "byte", "{:.2f}x"),
]
_RATIOS_LEGEND = "FLOP, byte: the speedup the FLOP ratio, the byte (memory traffic) ratio predict"
_LAYER_TABLE = [
    ("shape", "shape", "{}"),
    ("n", "n", "{}"),
    ("format", "format", "{}"),
    ("median_s", "ms", "{:.4g}"),
    *_RATIOS,
    ("status", "status", "{}"),
]
_LAYER_LEGEND = (
    "n: tokens; ms: median per call (min, max and measured/predicted: layers.csv); speed: measured speedup "
    f"vs dense F.linear; {_RATIOS_LEGEND}"
)
_MODEL_TABLE = [
    ("kind", "kind", "{}"),
    ("batch", "batch", "{}"),
    ("seqlen", "seq", "{}"),
    ("format", "format", "{}"),
    ("tokens_per_s", "tok/s", "{:,.1f}"),
    *_RATIOS,
    ("status", "status", "{}"),
]
_MODEL_LEGEND = (
    "seq: prefill length or tokens decoded; tok/s: tokens per second (median ms, measured/predicted: "
    f"model.csv); speed: measured speedup vs the dense model; {_RATIOS_LEGEND}"
)


def print_latency(result) -> None:
    from ..report.latency import environment_line, frames

    layers, model = frames(result)
    if not layers.empty:
        shown = layers.assign(median_s=layers.median_s * 1e3)
        _print_table(shown, "layer latency (speedup vs dense F.linear)", _LAYER_TABLE, _LAYER_LEGEND)
    if not model.empty:
        _print_table(model, "model latency (speedup vs dense)", _MODEL_TABLE, _MODEL_LEGEND)
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
    return options.group_options(BenchOptions) + chosen


@options.with_options(_bench_options)
@user_errors
def bench(
    out: OutOpt = Path("results/bench"),
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
    **values,
) -> None:
    """Time the sparse forward of every pruned layer shape and of the whole model against dense."""
    from ..experiments.config import VALIDATION_SEQLEN, StudyConfig
    from ..experiments.latency import dense_layers, pruned_in_place
    from ..latency import run_latency
    from ..layers import prunable_layers
    from ..models import load_model
    from ..report.latency import write_latency
    from ..report.output import atomic_directory, check_output

    own = BenchOptions(**{f.name: values.pop(f.name) for f in fields(BenchOptions)})
    if own.threads is not None:
        import torch

        torch.set_num_threads(own.threads)
    config = own.latency_config(values["seed"])
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
    step(f"pruning in place: {spec.method} {spec.sparsity:g} ({spec.pattern}), {len(names)} layers")
    info = {
        "title": f"{study.load.model} {spec.method} {spec.sparsity:g} ({spec.pattern})",
        "prune_spec": spec.describe(),
    }
    # One model copy: the dense baseline's layers are rebuilt from the prune record, never the whole model.
    with pruned_in_place(loaded.model, names, spec, calibration) as record:
        result = run_latency(
            dense_layers(loaded.model, record),
            loaded.model,
            names,
            config,
            on_step=lambda s: step(f"timing {s}"),
            info=info,
        )
    with atomic_directory(out, overwrite) as tmp:
        write_latency(result, tmp)
    print_latency(result)
    console.print(f"results: {out}/ (layers.csv, model.csv, latency.json, report.md, plots)")
