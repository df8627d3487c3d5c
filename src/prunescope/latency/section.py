"""The latency a study (or sweep) embeds: a smaller grid than `prunescope bench`, fitted to the model.

    result = study_latency(dense_model.get_submodule, pruned_model, names, formats=["dense", "masked", "csr"])
    section = prunescope.report.latency.latency_report(result, plot_dir=results_dir)

The caller owns the pruned model and says where its dense layers are (a dense model's `get_submodule`, or
layers rebuilt from its prune record: latency does not prune), and `report.latency` turns the result into
the section's markdown, rows and plots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from torch import nn

from ..hardware.timing import TimingPolicy
from .benchmark import LatencyConfig, LatencyResult, _context_length, run_latency
from .variants import MASKED, parse_formats


def study_latency_config() -> LatencyConfig:
    """Smaller than `prunescope bench`'s defaults: a study's report should not take minutes more."""
    return LatencyConfig(
        tokens=[1, 64],
        prefill_grid=[(1, 128)],
        decode_batches=[1],
        decode_tokens=8,
        policy=TimingPolicy(min_time=0.1, min_repeats=5, max_time=1.0),
    )


def section_config(
    model: nn.Module, formats: list[str] | str | None = None, config: LatencyConfig | None = None
) -> LatencyConfig:
    """`config` (default `study_latency_config()`) for `formats`, with masked added when missing (a
    study's base variants are dense and masked) and prefill lengths cut to the model's context."""
    config = config or study_latency_config()
    if formats is not None:
        chosen = parse_formats(formats)
        config = replace(config, formats=chosen if MASKED in chosen else [chosen[0], MASKED, *chosen[1:]])
    context = _context_length(model)
    return replace(config, prefill_grid=[(b, min(s, context)) for b, s in config.prefill_grid])


def study_latency(
    dense_layer: Callable[[str], nn.Module],
    pruned_model: nn.Module,
    pruned: list[str],
    *,
    formats: list[str] | str | None = None,
    config: LatencyConfig | None = None,
    on_step: Callable[[str], None] | None = None,
) -> LatencyResult:
    """`run_latency` of the `pruned` layers with a study's grid (see `section_config`); the caller's
    config is left alone."""
    config = section_config(pruned_model, formats, config)
    return run_latency(dense_layer, pruned_model, pruned, config, on_step=on_step)
