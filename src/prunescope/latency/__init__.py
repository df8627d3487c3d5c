"""Measured latency of pruned models next to what FLOP and byte counts predict.

    result = run_latency(dense_model.get_submodule, pruned_model, names, LatencyConfig(formats=["csr"]))

The measurement core (interleaved rounds, timers, cache flushes) and the machine facts live in
`prunescope.hardware`; `variants` builds each format and says what theory predicts; `benchmark` runs
layer-level and model-level comparisons; `section` sizes them for a study.  The caller prunes (latency
takes the pruned model and where its dense layers are), and `prunescope.report.latency` writes and renders
results.
"""

from __future__ import annotations

from ..hardware.timing import Candidate, Timing, TimingPolicy, measure, measure_interleaved
from .benchmark import (
    BenchSubject,
    LatencyConfig,
    LatencyResult,
    bench_layers,
    bench_model,
    bench_weight,
    environment,
    run_latency,
)
from .section import section_config, study_latency, study_latency_config
from .variants import Unsupported, parse_formats

__all__ = [
    "Candidate",
    "LatencyConfig",
    "LatencyResult",
    "Timing",
    "TimingPolicy",
    "Unsupported",
    "BenchSubject",
    "bench_layers",
    "bench_model",
    "bench_weight",
    "environment",
    "measure",
    "measure_interleaved",
    "parse_formats",
    "run_latency",
    "section_config",
    "study_latency",
    "study_latency_config",
]
