"""Charts of a study: bars with one colour per variant (every bar labelled), per-layer heatmaps."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import LogFormatter  # noqa: E402

COLOURS = {
    "dense": "#4c72b0",
    "masked": "#dd8452",
    "csr": "#55a868",
    "bitmask": "#c44e52",
    "csr16": "#8172b3",
    "auto": "#937860",
}


class PlainLogFormatter(LogFormatter):
    """Log-axis tick labels as plain numbers ('60', '0.5', '512') where matplotlib writes 6×10^1: matplotlib
    still picks which ticks are labelled (every decade; between decades, as many as fit), the label is the
    number itself."""

    def __call__(self, x, pos=None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def plain_log_scale(ax, axis: str, base: float = 10, scale: str = "log", **scale_options) -> None:
    """Put `ax`'s `axis` ("x" or "y") on a `scale` ("log", or "symlog" with its `linthresh`) of `base` whose
    ticks read as plain numbers: how every report figure draws a log axis."""
    getattr(ax, f"set_{axis}scale")(scale, base=base, **scale_options)
    plain_log_ticks(ax.xaxis if axis == "x" else ax.yaxis, base)


def plain_log_ticks(axis, base: float = 10) -> None:
    """Plain-number labels on a log-scaled matplotlib `axis` (of a plot, or of a LogNorm colour bar)."""
    axis.set_major_formatter(PlainLogFormatter(base, labelOnlyBase=False))
    axis.set_minor_formatter(PlainLogFormatter(base, labelOnlyBase=False))


def save_figure(fig, path: str | Path) -> None:
    """Lay out, write (110 dpi, the format from the suffix) and close: how every report figure ends."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    save_figure(fig, path)


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
    save_figure(fig, path)


# Module names of a decoder stack: `<stack>.<block index>.<path inside the block>`, e.g.
# model.decoder.layers.3.self_attn.q_proj -> block 3, projection self_attn.q_proj.
_BLOCK_NAME = re.compile(r"^.*?\.(\d+)\.(.+)$")
_BLOCK_GROUPS = ("attention_linear", "mlp_linear")


def block_grid(layers: pd.DataFrame, values: pd.Series) -> pd.DataFrame:
    """`values` (aligned with `layers`) as a block x projection table; rows are the blocks' linear layers.

    The projection is the module path inside its block (GPT-2's attn.c_proj and mlp.c_proj stay apart);
    columns keep the model's order. Layers outside the numbered blocks (embeddings, lm_head) are left out.
    """
    cells = []
    for name, group, value in zip(layers["module"], layers["group"], values, strict=True):
        match = _BLOCK_NAME.match(name)
        if match and group in _BLOCK_GROUPS:
            cells.append((int(match.group(1)), match.group(2), value))
    if not cells:
        return pd.DataFrame()
    frame = pd.DataFrame(cells, columns=["block", "projection", "value"])
    columns = list(dict.fromkeys(frame["projection"]))
    grid = frame.pivot_table(index="block", columns="projection", values="value", aggfunc="first")
    return grid.reindex(columns=columns).sort_index()


def layer_panels(layers: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, block x projection grid) pairs: the pruned variant's sparsity, then for each sparse format
    its stored bytes over the dense bytes of the same weights (1.0: no saving; above 1: the format costs)."""
    variants = list(dict.fromkeys(layers["variant"]))
    pruned = next((v for v in variants if v != "dense"), variants[0])
    rows = layers[layers["variant"] == pruned]
    panels = [(f"sparsity ({pruned})", block_grid(rows, rows["sparsity"]))]
    reference = next((v for v in ("dense", "masked") if v in variants), None)
    if reference is not None:
        dense_bytes = layers[layers["variant"] == reference].set_index("module")["stored_bytes"]
        for variant in variants:
            rows = layers[layers["variant"] == variant]
            if variant in ("dense", "masked") or (rows["format"] == "dense").all():
                continue
            ratio = rows["stored_bytes"] / rows["module"].map(dense_bytes)  # 0/0 (tied lm_head) is NaN
            panels.append((f"{variant} stored bytes / dense", block_grid(rows, ratio)))
    return [(title, grid) for title, grid in panels if not grid.empty]


def plot_layers(layers: pd.DataFrame, path: str | Path) -> bool:
    """Heatmaps, block x projection type: sparsity, and stored bytes vs dense for each sparse format.

    Returns False (and writes nothing) when the model has no numbered blocks of linear layers.
    """
    panels = layer_panels(layers)
    if not panels:
        return False
    blocks, projections = panels[0][1].shape
    annotate = blocks * projections <= 400  # beyond that the numbers would not be legible
    # Byte ratios are centred on 1.0 (no saving), on one scale for every format, so gains and costs
    # read alike across panels; sparsity is on [0, 1].
    ratios = [grid for title, grid in panels if "stored bytes" in title]
    spread = max([float((g.stack() - 1.0).abs().max()) for g in ratios] + [0.05])
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    width = max(3.2, 0.75 * projections + 1.6)
    height = max(2.6, 0.32 * blocks + 1.6)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, grid) in zip(axes.flat, panels, strict=False):
        ratio = "stored bytes" in title
        limits = dict(vmin=0.0, vmax=1.0, cmap="viridis")
        if ratio:
            limits = dict(vmin=1.0 - spread, vmax=1.0 + spread, cmap="RdBu_r")
        image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", **limits)
        ax.set_xticks(range(grid.shape[1]), list(grid.columns), rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(grid.shape[0]), [str(b) for b in grid.index], fontsize=8)
        ax.set_ylabel("block", fontsize=9)
        ax.set_title(title, fontsize=10)
        if annotate:
            for (row, column), value in pd.DataFrame(grid.to_numpy()).stack().items():
                # Dark text on the light middle of either colour map, light text on its dark ends.
                light = abs(value - 1.0) < 0.6 * (limits["vmax"] - 1.0) if ratio else value > 0.6
                colour = "black" if light else "white"
                ax.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7, color=colour)
        fig.colorbar(image, ax=ax, shrink=0.85)
    save_figure(fig, path)
    return True


def plot_kl_by_confidence(buckets: pd.DataFrame, path: str | Path) -> None:
    """Mean KL(dense ‖ variant) per decile of the dense max-probability, one line per variant."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for index, (variant, rows) in enumerate(buckets.groupby("variant", sort=False)):
        rows = rows.sort_values("decile")
        ax.plot(
            rows["decile"], rows["mean_kl"], "o-", color=_colour(variant, index), label=variant, markersize=4
        )
    first = buckets[buckets["variant"] == buckets["variant"].iloc[0]].sort_values("decile")
    labels = [
        f"{d}\n{lo:.2f}–{hi:.2f}"
        for d, lo, hi in zip(first["decile"], first["p_low"], first["p_high"], strict=True)
    ]
    ax.set_xticks(list(first["decile"]), labels, fontsize=6.5)
    ax.set_xlabel("decile of the dense model's top probability (range)")
    ax.set_ylabel("mean KL(dense ‖ variant), nats")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
