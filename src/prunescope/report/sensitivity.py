"""A sensitivity map's folder: sensitivity.csv, run.json, a heatmap (blocks x projection type), report.md."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from .output import write_json  # noqa: E402
from .plots import plain_log_ticks  # noqa: E402
from .run_text import METRICS_REFERENCE  # noqa: E402

HEATMAP = "sensitivity.png"


def grid(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """`column` as a block x projection table (rows and columns in model order)."""
    frame = table.pivot_table(index="block", columns="projection", values=column, aggfunc="first", sort=False)
    return frame.reindex(
        index=list(dict.fromkeys(table["block"])), columns=list(dict.fromkeys(table["projection"]))
    )


def plot_heatmap(table: pd.DataFrame, path: str | Path, title: str) -> None:
    """Two panels, blocks x projection type: mean KL (log colour scale) and 1 - top-1 agreement."""
    panels = [
        ("KL(dense || pruned), nats/token", grid(table, "kl_mean"), True),
        ("1 - top-1 agreement", 1.0 - grid(table, "top1_agreement"), False),
    ]
    blocks, projections = panels[0][1].shape
    width = max(3.6, 0.8 * projections + 2.0)
    height = max(2.6, 0.34 * blocks + 1.8)
    fig, axes = plt.subplots(1, 2, figsize=(2 * width, height), squeeze=False)
    for ax, (name, values, log) in zip(axes.flat, panels, strict=True):
        data = values.to_numpy(dtype=float)
        finite = data[np.isfinite(data)]
        positive = finite[finite > 0]
        norm = None
        if log and positive.size and positive.max() > positive.min():
            norm = LogNorm(vmin=positive.min(), vmax=positive.max())
        image = ax.imshow(
            np.where(data > 0, data, np.nan) if norm else data, aspect="auto", norm=norm, cmap="magma_r"
        )
        ax.set_xticks(
            range(values.shape[1]), [str(c) for c in values.columns], rotation=35, ha="right", fontsize=8
        )
        ax.set_yticks(range(values.shape[0]), [str(b) for b in values.index], fontsize=8)
        ax.set_ylabel("block", fontsize=9)
        ax.set_title(name, fontsize=10)
        if blocks * projections <= 400:  # beyond that the numbers would not be legible
            top = np.nanmax(finite) if finite.size else 0.0
            for (row, column), value in np.ndenumerate(data):
                if np.isfinite(value):
                    # Light text on the dark end of the colour map (its position, log or linear).
                    position = float(norm(value)) if norm is not None and value > 0 else value / (top or 1.0)
                    colour = "white" if position > 0.6 else "black"
                    ax.text(column, row, f"{value:.3g}", ha="center", va="center", fontsize=7, color=colour)
        bar = fig.colorbar(image, ax=ax, shrink=0.85)
        if norm is not None:
            plain_log_ticks(bar.ax.yaxis)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def extremes(table: pd.DataFrame) -> dict:
    """Most and least sensitive unit (by mean KL), and, over blocks, the block sums of KL."""
    ranked = table.sort_values("kl_mean", ascending=False, kind="stable")
    blocks = table[table["block"] != "all"].groupby("block", sort=False)["kl_mean"].sum()
    return {
        "most": ranked.iloc[0]["unit"],
        "least": ranked.iloc[-1]["unit"],
        "most_block": str(blocks.idxmax()) if len(blocks) else None,
        "least_block": str(blocks.idxmin()) if len(blocks) else None,
    }


def render_report(result) -> str:
    run, table = result.run, result.table
    spec, model, dense = run["prune_spec"], run["model"], run["dense"]
    by = result.config.by
    ends = extremes(table)
    shown = result.ranked()[
        [
            "rank",
            "unit",
            "layers",
            "weights",
            "sparsity",
            "kl_mean",
            "top1_agreement",
            "perplexity",
            "perplexity_ratio",
        ]
    ]
    lines = [
        f"# prunescope sensitivity: {model['name']}",
        "",
        f"- **model**: `{model['name']}` ({model['class']}), {run['dtype']} on {run['device']}",
        f"- **method**: {spec['method']} at sparsity {spec['sparsity']:g} (scope {spec['scope']}, pattern "
        f"{spec['pattern']}), one {by} at a time, everything else dense; {run['units']} units",
        f"- **evaluation**: {run['evaluation']['windows']} windows, {run['evaluation']['tokens']} tokens; "
        f"dense perplexity {dense['perplexity']:.3f}. Every unit is compared with the one dense reference.",
        "",
        f"Metrics as in {METRICS_REFERENCE}; every column is in `sensitivity.csv`.",
        "",
        f"- most sensitive {by}: **{ends['most']}**; least sensitive: **{ends['least']}** (mean KL)",
    ]
    if by == "module" and ends["most_block"] is not None:
        lines.append(
            f"- over blocks (sum of their modules' KL): most sensitive block {ends['most_block']}, "
            f"least sensitive block {ends['least_block']}"
        )
    lines += [
        "",
        f"![sensitivity]({HEATMAP})",
        "",
        "## Units, most sensitive first",
        "",
        shown.to_markdown(index=False, floatfmt=".4g"),
        "",
    ]
    return "\n".join(lines)


def write_sensitivity(result, directory: str | Path) -> list[Path]:
    """Every file of a sensitivity map into `directory` (an existing, empty folder); returns the paths."""
    directory = Path(directory)
    paths = [
        directory / "sensitivity.csv",
        directory / "run.json",
        directory / HEATMAP,
        directory / "report.md",
    ]
    result.table.to_csv(paths[0], index=False)
    write_json(paths[1], result.run)
    spec = result.run["prune_spec"]
    name, by = result.run["model"]["name"], result.config.by
    title = f"{name}: {spec['method']} {spec['sparsity']:g}, one {by} at a time"
    plot_heatmap(result.table, paths[2], title)
    paths[3].write_text(render_report(result), encoding="utf-8")
    return paths
