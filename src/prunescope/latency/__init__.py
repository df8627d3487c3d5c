"""Measured latency of pruned models next to what FLOP and byte counts predict.

    result = run_latency(dense_model, pruned_model, names, LatencyConfig(formats=["masked", "csr", "bsr"]))

`timing` is the measurement core (interleaved rounds, injectable clock); `variants` builds each format and
says what theory predicts; `benchmark` runs layer-level and model-level comparisons; `report` writes them.
"""

from __future__ import annotations

from .benchmark import (
    LatencyConfig,
    LatencyResult,
    bench_layers,
    bench_model,
    bench_weight,
    dense_copy,
    environment,
    prune_copy,
    run_latency,
)
from .report import latency_section, render_markdown, study_latency_config, write_latency
from .timing import Candidate, Timing, TimingPolicy, measure, measure_interleaved
from .variants import SemiStructuredLinear, Unsupported, parse_formats

__all__ = [
    "Candidate",
    "LatencyConfig",
    "LatencyResult",
    "SemiStructuredLinear",
    "Timing",
    "TimingPolicy",
    "Unsupported",
    "bench_layers",
    "bench_model",
    "bench_weight",
    "dense_copy",
    "environment",
    "latency_section",
    "measure",
    "measure_interleaved",
    "parse_formats",
    "prune_copy",
    "render_markdown",
    "run_latency",
    "study_latency_config",
    "write_latency",
]
