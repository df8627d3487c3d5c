"""Latency figures: layer speedup vs token count per format, measured vs theoretical, model-level speedups."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .plots import _colour as _study_colour  # noqa: E402
from .plots import plain_log_scale, save_figure  # noqa: E402

# Formats the study's palette lacks; tab10's fallback would paint bsr the same green as csr.
_COLOURS = {"bsr": "#da8bc3", "semi-structured": "#8c8c8c", "dense": "#4c72b0"}


def _colour(name: str, index: int):
    return _COLOURS.get(name) or _study_colour(name, index)


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["status"] == "ok") & (frame["format"] != "dense")]


def plot_speedup_vs_tokens(layers: pd.DataFrame, path: str | Path) -> None:
    """One panel per layer shape: measured speedup vs dense over n tokens, one line per format."""
    shapes = list(dict.fromkeys(layers["shape"]))
    fig, axes = plt.subplots(1, max(len(shapes), 1), figsize=(4.2 * max(len(shapes), 1), 3.6), squeeze=False)
    formats = list(dict.fromkeys(layers["format"]))
    for ax, shape in zip(axes[0], shapes, strict=False):
        rows = _ok(layers[layers["shape"] == shape])
        for i, name in enumerate(formats):
            line = rows[rows["format"] == name].sort_values("n")
            if not line.empty:
                ax.plot(line["n"], line["speedup"], marker="o", label=name, color=_colour(name, i))
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        plain_log_scale(ax, "x", base=2)
        plain_log_scale(ax, "y")
        ax.set_xlabel("tokens n")
        ax.set_title(f"{shape} (out x in)", fontsize=10)
    axes[0][0].set_ylabel("speedup vs dense F.linear")
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)


def plot_measured_vs_theory(layers: pd.DataFrame, path: str | Path) -> None:
    """Measured speedup against the FLOP-ratio and the byte-ratio predictions; y = x is 'as predicted'."""
    rows = _ok(layers)
    panels = [("flop_theory", "FLOP-ratio theory"), ("byte_theory", "byte-ratio (memory-traffic) theory")]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    formats = list(dict.fromkeys(rows["format"]))
    for ax, (column, title) in zip(axes, panels, strict=True):
        for i, name in enumerate(formats):
            part = rows[rows["format"] == name]
            ax.scatter(part[column], part["speedup"], label=name, color=_colour(name, i), s=18)
        values = pd.concat([rows[column], rows["speedup"]]).dropna()
        if not values.empty:
            low, high = values.min() * 0.8, values.max() * 1.25
            ax.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
        plain_log_scale(ax, "x")
        plain_log_scale(ax, "y")
        ax.set_xlabel(title)
        ax.set_ylabel("measured speedup")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def plot_model_speedup(model: pd.DataFrame, path: str | Path) -> None:
    """Grouped bars: speedup vs dense of each format for every prefill shape and decode batch."""
    rows = _ok(model).copy()
    rows["case"] = [
        f"prefill {b}x{s}" if k == "prefill" else f"decode b{b}"
        for k, b, s in zip(rows["kind"], rows["batch"], rows["seqlen"], strict=True)
    ]
    cases = list(dict.fromkeys(rows["case"]))
    formats = list(dict.fromkeys(rows["format"]))
    width = 0.8 / max(len(formats), 1)
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(cases) + 2), 3.8))
    for i, name in enumerate(formats):
        part = rows[rows["format"] == name].set_index("case").reindex(cases)
        positions = [x + (i - (len(formats) - 1) / 2) * width for x in range(len(cases))]
        bars = ax.bar(positions, part["speedup"].fillna(0), width, label=name, color=_colour(name, i))
        ax.bar_label(bars, labels=[f"{h:.2f}" for h in part["speedup"].fillna(0)], fontsize=7, padding=2)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(cases)), cases, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("speedup vs dense model")
    ax.margins(y=0.15)
    ax.legend(fontsize=8)
    save_figure(fig, path)
