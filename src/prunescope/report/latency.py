"""Latency results as files and text: CSV/JSON, plots, markdown, and the section a study embeds.

The only place latency results are written (issue 26: only `report/` writes result files); `latency/`
measures and returns a `LatencyResult`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..hardware.machine import machine_line
from ..latency.benchmark import LatencyResult
from .output import write_json

# Columns of every timed variant, and its speed against dense and against the two theoretical bounds.
_TIMED = ["format", "status", "median_s", "min_s", "max_s", "repeats"]
_VS_THEORY = ["speedup", "flop_theory", "byte_theory", "measured_over_flop", "measured_over_bytes"]
LAYER_COLUMNS = ["shape", "n", *_TIMED, *_VS_THEORY]
MODEL_COLUMNS = ["kind", "batch", "seqlen", *_TIMED, "tokens_per_s", *_VS_THEORY]
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
        f">= {policy.get('min_repeats')} samples and >= {policy.get('min_time')} s "
        f"({result.environment.get('timer', 'host clock')}); medians shown. "
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
    from .plots_latency import plot_measured_vs_theory, plot_model_speedup, plot_speedup_vs_tokens

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


def latency_report(result: LatencyResult, plot_dir: str | Path | None = None) -> dict:
    """The latency section of a study report: {"markdown", "rows", "model_rows", "environment",
    "config"}, rows as strict JSON.  `plot_dir` (the study's results folder) receives the plots, which
    the markdown then embeds."""
    if plot_dir is not None:
        write_plots(result, plot_dir)
    return {
        "markdown": render_markdown(result, plots=plot_dir is not None),
        "rows": json_rows(result.layers),
        "model_rows": json_rows(result.model),
        "environment": {k: v for k, v in result.environment.items() if k != "torch_config"},
        "config": result.config,
    }
