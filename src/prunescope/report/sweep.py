"""Tables, curves and report.md of a sweep; every file is written to a temporary name and renamed."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..util.seeds import aggregate_seeds  # noqa: E402
from . import summary_cells as cells  # noqa: E402
from .output import write_json  # noqa: E402
from .plots import plain_log_scale  # noqa: E402
from .run_text import METRICS_REFERENCE, evaluation_lines  # noqa: E402
from .tasks import SWEEP_PLOT_NAME, plot_task_curves, sweep_tasks_section, task_columns  # noqa: E402

BEHAVIOUR_PANELS = [
    ("top1_agreement", "top-1 agreement"),
    ("top5_overlap", "top-5 overlap"),
    ("kl_mean", "KL(dense || pruned), nats/token"),
    ("perplexity", "perplexity"),
]
# 95 % bootstrap intervals over windows (evaluation/behaviour.py), drawn as bands: (low, high, scale column).
CI_COLUMNS = {
    "top1_agreement": ("top1_ci_low", "top1_ci_high", None),
    "kl_mean": ("kl_mean_ci_low", "kl_mean_ci_high", None),
    "perplexity": ("ppl_ratio_ci_low", "ppl_ratio_ci_high", "dense_perplexity"),  # ratio x dense ppl
}
CI_NOTE = (
    "Shaded bands around the top-1, KL and perplexity curves: 95 % percentile-bootstrap intervals over the "
    "evaluation windows (perplexity: the interval of PPL/dense PPL times the dense perplexity)."
)
COST_PANELS = [
    ("stored_bytes", "stored size (MB)", 1e-6),
    ("flops_per_token", "executed MFLOPs / token", 1e-6),
]


def _replace(path: Path, write) -> None:
    # The temporary name keeps the suffix: matplotlib picks the image format from it.
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    write(tmp)
    tmp.replace(path)


POINT_COLUMNS = ["method", "pattern", "target_sparsity", "variant"]
# Each point's row in the study's units (report.md's "All points"; the console shows fewer of them).
POINT_SECONDS = cells.Column("point_seconds", "s", "point (s)", ".3g")
POINT_TABLE = cells.values_only(
    [cells.PRUNED_SPARSITY, cells.STORED, cells.FLOPS, cells.TOP1, cells.TOP5, cells.KL, cells.PERPLEXITY]
) + [POINT_SECONDS]
CONSOLE_POINTS = cells.values_only([cells.STORED, cells.FLOPS, cells.TOP1, cells.KL, cells.PERPLEXITY])
SEEDS_NOTE = "Under --seeds: summary.csv holds the mean and `<metric>_std` per point; plots show ± 1 std."


def sort_rows(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return table
    keys = POINT_COLUMNS + (["seed"] if "seed" in table.columns else [])
    return table.sort_values(keys, kind="stable").reset_index(drop=True)


def has_seeds(table: pd.DataFrame) -> bool:
    """Whether some point ran under several seeds (--seeds)."""
    if "seed" not in table.columns or table.empty:
        return False
    return bool(table.groupby(POINT_COLUMNS)["seed"].nunique().max() > 1)


def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per point and variant: mean over seeds and `<metric>_std` (one seed: the row itself, std 0)."""
    if not has_seeds(table):
        return table
    return aggregate_seeds(table, POINT_COLUMNS)


def collapse_points(table: pd.DataFrame) -> pd.DataFrame:
    """Behaviour per (method, pattern, sparsity): formats agree within float tolerance, keep the first.
    Under --seeds, the mean over seeds (with `<metric>_std`)."""
    points = seed_summary(table).drop_duplicates(["method", "pattern", "target_sparsity"])
    return points.reset_index(drop=True)


def threshold_crossings(table: pd.DataFrame, thresholds: list[float]) -> pd.DataFrame:
    """Per method and pattern: the lowest swept sparsity whose top-1 agreement is below each threshold."""
    rows = []
    for (method, pattern), points in collapse_points(table).groupby(["method", "pattern"], sort=True):
        row = {"method": method, "pattern": pattern}
        for threshold in thresholds:
            below = points[points["top1_agreement"] < threshold].sort_values("target_sparsity")
            row[f"top1 < {threshold:g} from"] = (
                f"{below['target_sparsity'].iloc[0]:g}" if len(below) else "not reached"
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _sparsity_as_text(points: pd.DataFrame) -> pd.DataFrame:
    """Target sparsities as a table shows them ('0.3', never 0.30000000000000004)."""
    return points.assign(target_sparsity=points["target_sparsity"].map("{:g}".format))


def point_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The console's points: sorted, under --seeds their mean and std."""
    return _sparsity_as_text(seed_summary(sort_rows(table)))


def points_markdown(table: pd.DataFrame) -> str:
    """report.md's "All points": every point (every seed's under --seeds) in the study's units."""
    rows = _sparsity_as_text(sort_rows(table))
    keys = POINT_COLUMNS + (["seed"] if has_seeds(rows) else [])
    return cells.markdown(rows, POINT_TABLE, keys=keys)


def interval(rows: pd.DataFrame, column: str) -> tuple[pd.Series, pd.Series] | None:
    """(low, high) of `column`'s bootstrap interval for these rows, or None when the sweep has none."""
    low, high, scale = CI_COLUMNS.get(column, (None, None, None))
    if low not in rows or high not in rows or rows[low].isna().all():
        return None
    factor = rows[scale] if scale is not None and scale in rows else 1.0
    return rows[low] * factor, rows[high] * factor


def plot_behaviour(table: pd.DataFrame, path: Path) -> None:
    points = collapse_points(table)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (column, label) in zip(axes.flat, BEHAVIOUR_PANELS, strict=True):
        for (method, pattern), rows in points.groupby(["method", "pattern"], sort=True):
            rows = rows.sort_values("target_sparsity")
            style = "o-" if len(rows) > 1 else "s"
            lines = ax.plot(
                rows["target_sparsity"], rows[column], style, label=f"{method} ({pattern})", markersize=5
            )
            bounds = interval(rows, column)
            if bounds is not None:  # the 95 % bootstrap interval over windows
                color = lines[0].get_color()
                if len(rows) > 1:
                    ax.fill_between(rows["target_sparsity"], *bounds, color=color, alpha=0.15, linewidth=0)
                else:
                    low, high = bounds
                    ax.vlines(rows["target_sparsity"], low, high, color=color, linewidth=3, alpha=0.4)
            spread = rows.get(f"{column}_std")
            if spread is not None and (spread > 0).any():
                # --seeds: mean ± one standard deviation over seeds, as a band (a bar for a lone point).
                low, high, color = rows[column] - spread, rows[column] + spread, lines[0].get_color()
                if len(rows) > 1:
                    ax.fill_between(rows["target_sparsity"], low, high, color=color, alpha=0.2)
                else:
                    ax.errorbar(rows["target_sparsity"], rows[column], yerr=spread, color=color)
        ax.set_xlabel("sparsity of pruned layers")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if column == "perplexity":
            plain_log_scale(ax, "y")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost(table: pd.DataFrame, path: Path) -> None:
    """Size and executed FLOPs against sparsity, one line per format (first method, unstructured)."""
    base = table[table["pattern"] == "unstructured"]
    if base.empty:
        base = table
    base = base[base["method"] == base["method"].iloc[0]]
    fig, axes = plt.subplots(1, len(COST_PANELS), figsize=(10, 3.8))
    for ax, (column, label, scale) in zip(axes, COST_PANELS, strict=True):
        for variant, rows in base.groupby("variant", sort=False):
            rows = rows.sort_values("target_sparsity")
            ax.plot(rows["target_sparsity"], rows[column] * scale, "o-", label=variant, markersize=4)
        ax.set_xlabel("sparsity of pruned layers")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_speedup(table: pd.DataFrame, path: Path) -> None:
    """Measured speedup of the pruned layers vs sparsity, per format and token count (first method)."""
    base = table[table["method"] == table["method"].iloc[0]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, rows in base.groupby("variant", sort=False):
        rows = rows[rows["pattern"] == "unstructured"].sort_values("target_sparsity")
        for n, style in (("layer_speedup_n1", "o-"), ("layer_speedup_n64", "s--")):
            if n in rows and rows[n].notna().any():
                ax.plot(rows["target_sparsity"], rows[n], style, label=f"{variant}, n={n.rsplit('n', 1)[1]}")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xlabel("sparsity of pruned layers")
    ax.set_ylabel("measured speedup vs dense (pruned layers)")
    plain_log_scale(ax, "y")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_sweep_report(table: pd.DataFrame, config, out: Path, run: dict) -> None:
    table = sort_rows(table)
    _replace(out / "results.csv", lambda p: table.to_csv(p, index=False))
    _replace(out / "run.json", lambda p: write_json(p, {**run, "sweep": config.asdict()}))
    if table.empty:
        return
    _replace(out / "behaviour.png", lambda p: plot_behaviour(table, p))
    _replace(out / "cost.png", lambda p: plot_cost(table, p))
    has_speed = "layer_speedup_n1" in table.columns
    if has_speed:
        _replace(out / "speedup.png", lambda p: plot_speedup(table, p))
    if has_seeds(table):
        _replace(out / "summary.csv", lambda p: seed_summary(table).to_csv(p, index=False))
    if task_columns(table):  # --tasks: accuracy-vs-sparsity curves
        _replace(out / SWEEP_PLOT_NAME, lambda p: plot_task_curves(collapse_points(table), p))
    crossings = threshold_crossings(table, config.thresholds)
    model = run.get("model", {}).get("name", config.base.model)
    evaluation = sweep_evaluation_lines(run)
    lines = [
        f"# prunescope sweep: {model}",
        "",
        f"{len(collapse_points(table))} points ({', '.join(config.methods)} x {', '.join(config.patterns)}), "
        f"variants {', '.join(config.variants)}; dense perplexity {table['dense_perplexity'].iloc[0]:.4g}.",
        f"Metric definitions: {METRICS_REFERENCE}.",
        *(f"{line[0].upper()}{line[1:]}." for line in evaluation),
        *([SEEDS_NOTE] if has_seeds(table) else []),
        *([CI_NOTE] if "top1_ci_low" in table.columns else []),
        "",
        "## Where top-1 agreement collapses",
        "",
        crossings.to_markdown(index=False),
        "",
        "## Behaviour vs sparsity",
        "",
        "![behaviour](behaviour.png)",
        "",
        "## Size and FLOPs vs sparsity",
        "",
        "![cost](cost.png)",
        "",
        *(["## Measured speedup vs sparsity", "", "![speedup](speedup.png)", ""] if has_speed else []),
        *sweep_tasks_section(collapse_points(table), run),
        "## All points",
        "",
        points_markdown(table),
        "",
    ]
    from .frontier import frontier_report  # issue 25: frontier.png and its section, "" without --quantize

    lines.append(frontier_report(table, out))
    lines += allocations_section(out)
    _replace(out / "report.md", lambda p: p.write_text("\n".join(lines), encoding="utf-8"))


def sweep_evaluation_lines(run: dict) -> list[str]:
    """The study's lines on the perplexity (protocol, tokens, scored) for a sweep's run.json; [] without."""
    if "tokens_scored" not in run.get("evaluation", {}):
        return []
    return evaluation_lines({**run, "config": run.get("sweep", {}).get("base", {})})


def allocations_section(out: Path) -> list[str]:
    """The non-uniform points' allocations side by side (block x projection heatmaps, one colour scale)."""
    from .allocation import plot_allocation_heatmaps
    from .sweep_points import ALLOCATIONS_FOLDER, point_allocations

    mappings = point_allocations(out)
    if not mappings:
        return []
    _replace(out / "allocations.png", lambda p: plot_allocation_heatmaps(mappings, p))
    return [
        "## Allocations",
        "",
        f"Per-matrix sparsity of every non-uniform point ({ALLOCATIONS_FOLDER}/<point>/allocation.json, "
        "re-applicable with `--allocation PATH.json`).",
        "",
        "![allocations](allocations.png)",
        "",
    ]
