"""Latency results as tables: CSV/JSON files, plots, markdown, and the section `prunescope study` embeds."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
from torch import nn

from ..errors import PrunescopeError
from ..report.output import write_json
from .benchmark import LatencyConfig, LatencyResult, _context_length, dense_copy, prune_copy, run_latency
from .machine import machine_line
from .variants import MASKED, parse_formats

LAYER_COLUMNS = [
    "shape",
    "n",
    "format",
    "status",
    "median_s",
    "min_s",
    "max_s",
    "repeats",
    "speedup",
    "flop_theory",
    "byte_theory",
    "measured_over_flop",
    "measured_over_bytes",
]
MODEL_COLUMNS = [
    "kind",
    "batch",
    "seqlen",
    "format",
    "status",
    "median_s",
    "min_s",
    "max_s",
    "repeats",
    "tokens_per_s",
    "speedup",
    "flop_theory",
    "byte_theory",
    "measured_over_flop",
    "measured_over_bytes",
]
PLOTS = {
    "speedup_vs_tokens": "latency_speedup_vs_tokens.png",
    "measured_vs_theory": "latency_measured_vs_theory.png",
    "model_speedup": "latency_model_speedup.png",
}


def json_rows(rows: list[dict]) -> list[dict]:
    """NaN (a variant that did not run) becomes null, so the JSON stays strict."""
    return [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()} for row in rows
    ]


def frames(result: LatencyResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.DataFrame(result.layers), pd.DataFrame(result.model)


def _shown(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    shown = frame[[c for c in columns if c in frame.columns]].copy()
    seconds = [c for c in ("median_s", "min_s", "max_s") if c in shown]
    shown[seconds] = shown[seconds] * 1e3
    return shown.rename(columns={c: c.replace("_s", "_ms") for c in seconds})


def environment_line(environment: dict) -> str:
    line = (
        f"device {environment['device']} ({environment.get('gpu') or environment['cpu']}), "
        f"dtype {environment['dtype']}, {environment['threads']} threads, BLAS {environment['blas']}, "
        f"MKL {'yes' if environment['mkl_available'] else 'no'}, "
        f"oneDNN {'on' if environment['mkldnn_enabled'] and environment['mkldnn_available'] else 'off'}, "
        f"torch {environment['torch']}, "
        f"huge pages {'on' if environment.get('thp_mem_alloc') else 'off'}"
    )
    if environment.get("machine"):  # results written before issue 17 have no machine facts
        line += f"; machine: {machine_line(environment['machine'])}"
    return line


def render_markdown(result: LatencyResult, plots: bool = False) -> str:
    """The latency section: environment, method, layer and model tables, and plots when written."""
    layers, model = frames(result)
    policy = result.config.get("policy", {})
    lines = [
        f"- {environment_line(result.environment)}",
        f"- timing: {policy.get('warmup')} warm-up calls, then interleaved rounds until every variant has "
        f">= {policy.get('min_repeats')} samples and >= {policy.get('min_time')} s; medians shown. "
        "Outputs checked against the masked model before timing.",
        "- speedup = dense median / variant median (same run). flop_theory = 2·in·out / executed FLOPs; "
        "byte_theory = dense bytes / stored bytes; measured_over_* = speedup / theory.",
        "",
    ]
    if not layers.empty:
        lines += [
            "### Layers",
            "",
            _shown(layers, LAYER_COLUMNS).to_markdown(index=False, floatfmt=".4g"),
            "",
        ]
        if plots:
            lines += [f"![speedup vs tokens]({PLOTS['speedup_vs_tokens']})", ""]
            lines += [f"![measured vs theory]({PLOTS['measured_vs_theory']})", ""]
    if not model.empty:
        lines += ["### Model", "", _shown(model, MODEL_COLUMNS).to_markdown(index=False, floatfmt=".4g"), ""]
        if plots:
            lines += [f"![model speedup]({PLOTS['model_speedup']})", ""]
    return "\n".join(lines)


def write_plots(result: LatencyResult, directory: str | Path) -> list[Path]:
    from ..report.plots_latency import plot_measured_vs_theory, plot_model_speedup, plot_speedup_vs_tokens

    directory = Path(directory)
    layers, model = frames(result)
    written = []
    if not layers.empty:
        plot_speedup_vs_tokens(layers, directory / PLOTS["speedup_vs_tokens"])
        plot_measured_vs_theory(layers, directory / PLOTS["measured_vs_theory"])
        written += [directory / PLOTS["speedup_vs_tokens"], directory / PLOTS["measured_vs_theory"]]
    if not model.empty:
        plot_model_speedup(model, directory / PLOTS["model_speedup"])
        written.append(directory / PLOTS["model_speedup"])
    return written


def write_latency(result: LatencyResult, directory: str | Path) -> list[Path]:
    """layers.csv, model.csv, latency.json, plots and report.md into an existing (temporary) folder."""
    directory = Path(directory)
    layers, model = frames(result)
    paths = [directory / "layers.csv", directory / "model.csv", directory / "latency.json"]
    layers.to_csv(paths[0], index=False)
    model.to_csv(paths[1], index=False)
    data = result.as_dict()
    data["layers"], data["model"] = json_rows(result.layers), json_rows(result.model)
    write_json(paths[2], data)
    paths += write_plots(result, directory)
    report = directory / "report.md"
    title = result.info.get("title", "latency")
    report.write_text(
        f"# prunescope bench: {title}\n\n{render_markdown(result, plots=True)}", encoding="utf-8"
    )
    return [*paths, report]


def _unwrap_model(source) -> nn.Module:
    # A LoadedModel carries the module in `.model`; an HF model's own `.model` is its inner decoder.
    return source if isinstance(source, nn.Module) else source.model


def latency_section(
    result_or_model,
    *,
    model: nn.Module | None = None,
    record=None,
    spec=None,
    pruned: list[str] | None = None,
    calibration=None,
    formats: list[str] | str | None = None,
    config: LatencyConfig | None = None,
    plot_dir: str | Path | None = None,
    on_step=None,
) -> dict:
    """Latency figures for a study report: {"markdown": str, "rows": [...], "model_rows": [...], ...}.

    Three ways to call it:
    - `latency_section(result, model=loaded.model)` after `run_study` (the model is dense again): the
      study's spec, pruned layers and variants are reused and a pruned copy is made (`calibration` is
      needed again for wanda/sparsegpt);
    - `latency_section(model, record=record, pruned=names)` while the model is pruned in place (inside
      `run_study`, before `restore`): the dense baseline is a restored copy, nothing is pruned twice;
    - `latency_section(model, spec=spec, pruned=names)` on a dense model.
    `plot_dir` (the study's results folder) receives the plots, which the markdown then embeds.
    """
    from ..layers import prunable_layers

    if hasattr(result_or_model, "spec") and hasattr(result_or_model, "pruned_layers"):
        if model is None:
            raise PrunescopeError("latency_section(result, model=...) needs the study's (dense) model")
        spec = spec or result_or_model.spec
        pruned = pruned or list(result_or_model.pruned_layers)
        if formats is None:
            formats = list(result_or_model.config.variants)
        source = _unwrap_model(model)
    else:
        source = _unwrap_model(result_or_model)
    pruned = pruned or list(prunable_layers(source))
    config = config or study_latency_config()
    if formats is not None:
        # A study's base variants are dense and masked; latency adds masked when the study had it not.
        chosen = parse_formats(formats)
        config = replace(config, formats=chosen if MASKED in chosen else [chosen[0], MASKED, *chosen[1:]])
    if record is not None:
        pruned_model, dense_model = source, dense_copy(source, record)
    elif spec is not None:
        if spec.needs_calibration and not calibration:
            raise PrunescopeError(f"latency of a {spec.method} model needs its calibration data again")
        dense_model, pruned_model = source, prune_copy(source, pruned, spec, calibration)
    else:
        raise PrunescopeError("latency_section needs a study result, a prune record or a prune spec")
    # A study's report uses the default grid: fit its prefill lengths to a short-context model.
    context = _context_length(source)
    config = replace(config, prefill_grid=[(b, min(s, context)) for b, s in config.prefill_grid])
    result = run_latency(dense_model, pruned_model, pruned, config, on_step=on_step)
    if plot_dir is not None:
        write_plots(result, plot_dir)
    return {
        "markdown": render_markdown(result, plots=plot_dir is not None),
        "rows": json_rows(result.layers),
        "model_rows": json_rows(result.model),
        "environment": {k: v for k, v in result.environment.items() if k != "torch_config"},
        "config": result.config,
    }


def study_latency_config() -> LatencyConfig:
    """Smaller than `prunescope bench`'s defaults: a study's report should not take minutes more."""
    from .timing import TimingPolicy

    return LatencyConfig(
        tokens=[1, 64],
        prefill_grid=[(1, 128)],
        decode_batches=[1],
        decode_tokens=8,
        policy=TimingPolicy(min_time=0.1, min_repeats=5, max_time=1.0),
    )
