"""Bar charts of a study: one colour per variant, every bar labelled with its value."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

COLOURS = {
    "dense": "#4c72b0",
    "masked": "#dd8452",
    "csr": "#55a868",
    "bitmask": "#c44e52",
    "csr16": "#8172b3",
    "auto": "#937860",
}


def _colour(variant: str, index: int) -> str:
    return COLOURS.get(variant, plt.get_cmap("tab10")(index % 10))


def _label(ax, bars, fmt: str, vertical: bool = False) -> None:
    # Grouped bars are narrow: vertical labels do not run into each other; zero bars stay unlabelled.
    labels = [fmt.format(b.get_height()) if b.get_height() else "" for b in bars]
    ax.bar_label(bars, labels=labels, fontsize=7, padding=2, rotation=90 if vertical else 0)
    ax.margins(y=0.25 if vertical else 0.15)


def plot_variants(summary: pd.DataFrame, path: str | Path) -> None:
    """Stored size, sparsity and top-1 agreement per variant."""
    panels = [
        ("stored_bytes", "stored size (MB)", 1e-6, "{:.2f}"),
        ("pruned_layer_sparsity", "sparsity of pruned layers", 1.0, "{:.3f}"),
        ("top1_agreement", "top-1 agreement with dense", 1.0, "{:.3f}"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    variants = list(summary["variant"])
    colours = [_colour(v, i) for i, v in enumerate(variants)]
    for ax, (column, title, scale, fmt) in zip(axes, panels, strict=True):
        bars = ax.bar(variants, summary[column] * scale, color=colours)
        _label(ax, bars, fmt)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_groups(groups: pd.DataFrame, path: str | Path) -> None:
    """Per-group sparsity, parameter share and FLOPs per token, grouped bars per variant."""
    panels = [
        ("sparsity", "sparsity", 1.0, "{:.2f}"),
        ("param_share", "parameter share", 1.0, "{:.2f}"),
        ("flops_per_token", "executed MFLOPs / token", 1e-6, "{:.2f}"),
    ]
    variants = list(dict.fromkeys(groups["variant"]))
    names = list(dict.fromkeys(groups["group"]))
    width = 0.8 / max(len(variants), 1)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    for ax, (column, title, scale, fmt) in zip(axes, panels, strict=True):
        for i, variant in enumerate(variants):
            rows = groups[groups["variant"] == variant].set_index("group").reindex(names)
            positions = [x + (i - (len(variants) - 1) / 2) * width for x in range(len(names))]
            bars = ax.bar(
                positions, rows[column].fillna(0) * scale, width, label=variant, color=_colour(variant, i)
            )
            _label(ax, bars, fmt, vertical=True)
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
