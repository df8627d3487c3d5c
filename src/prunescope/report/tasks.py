"""Zero-shot task results of a study: tasks.csv (long form), a figure, and one report.md section."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .plots import _colour, _label, plt

CSV_NAME = "tasks.csv"
PLOT_NAME = "tasks.png"


def main_rows(tasks: pd.DataFrame, run: dict) -> pd.DataFrame:
    """The rows of each task's main metric (run.json names it), in variant order."""
    mains = {name: info["main_metric"] for name, info in run.get("tasks", {}).get("tasks", {}).items()}
    if tasks.empty or not mains:
        return tasks.iloc[0:0]
    keep = tasks[
        [mains.get(task) == metric for task, metric in zip(tasks["task"], tasks["metric"], strict=True)]
    ]
    return keep.reset_index(drop=True)


FLIP_METRICS = ("flips", "correct_to_wrong", "wrong_to_correct", "mcnemar_p")


def flip_table(tasks: pd.DataFrame) -> pd.DataFrame:
    """Per pruned variant and task: documents, flips, correct→wrong, wrong→correct and McNemar's p."""
    rows = tasks[tasks["metric"].isin(FLIP_METRICS) & (tasks["variant"] != "dense")]
    if "seed" in rows.columns and not rows.empty:
        rows = rows[rows["seed"] == rows["seed"].iloc[0]]
    if rows.empty:
        return pd.DataFrame()
    wide = rows.pivot_table(
        index=["variant", "task"], columns="metric", values="value", aggfunc="first", sort=False
    )
    documents = rows.groupby(["variant", "task"], sort=False)["n"].first()
    table = pd.DataFrame(
        {
            "documents": documents,
            "flips": wide.get("flips"),
            "correct → wrong": wide.get("correct_to_wrong"),
            "wrong → correct": wide.get("wrong_to_correct"),
            "McNemar p": wide.get("mcnemar_p"),
        }
    )
    return table.reset_index()


def plot_tasks(rows: pd.DataFrame, path: str | Path) -> None:
    """One panel per task: its main metric per variant, with lm-eval's stderr as error bars."""
    tasks = list(dict.fromkeys(rows["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        part = rows[rows["task"] == task]
        variants = list(part["variant"])
        errors = part["stderr"].astype(float).fillna(0.0)
        bars = ax.bar(
            variants,
            part["value"],
            yerr=errors,
            capsize=3,
            color=[_colour(v, i) for i, v in enumerate(variants)],
        )
        _label(ax, bars, "{:.3f}")
        ax.set_title(f"{task}: {part['metric'].iloc[0]}", fontsize=10)
        ax.set_ylim(0, max(1.0, float((part["value"] + errors).max()) * 1.1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_tasks(result, directory: str | Path) -> list[Path]:
    """tasks.csv and tasks.png when the study scored tasks; nothing otherwise."""
    tasks = getattr(result, "tasks", None)
    if tasks is None or tasks.empty:
        return []
    directory = Path(directory)
    tasks.to_csv(directory / CSV_NAME, index=False)
    rows = main_rows(tasks, result.run)
    if "seed" in rows.columns:  # --seeds: the figure shows the first seed, the CSV every seed
        rows = rows[rows["seed"] == rows["seed"].iloc[0]]
    if rows.empty:
        return [directory / CSV_NAME]
    plot_tasks(rows, directory / PLOT_NAME)
    return [directory / CSV_NAME, directory / PLOT_NAME]


def tasks_section(result) -> list[str]:
    """'## Zero-shot tasks' for report.md: main metric per task and variant, named; [] without tasks."""
    tasks = getattr(result, "tasks", None)
    info = result.run.get("tasks")
    if tasks is None or tasks.empty or not info:
        return []
    rows = main_rows(tasks, result.run)
    if "seed" in rows.columns:
        rows = rows[rows["seed"] == rows["seed"].iloc[0]]
    shots = info.get("num_fewshot")
    limit = info.get("limit")
    lines = [
        "## Zero-shot tasks",
        "",
        f"Scored by lm-evaluation-harness {info.get('lm_eval')} (`simple_evaluate` with its HFLM wrapper "
        "around the in-memory model: each sparse format runs with its sparse modules in place); "
        f"{'the tasks’ default' if shots is None else shots} few-shot examples"
        f"{f', at most {limit} documents per task' if limit else ''}. `acc`: the choice with the highest "
        "log-likelihood; `acc_norm`: highest log-likelihood per byte of the choice (lm-eval's definitions). "
        f"Every metric of every variant is in `{CSV_NAME}`.",
        "",
    ]
    if not rows.empty:
        table = pd.DataFrame(
            {
                "variant": rows["variant"],
                "task": rows["task"],
                "metric": rows["metric"],
                "value": rows["value"],
                "stderr": rows["stderr"],
                "documents": rows["n"],
            }
        )
        floatfmt: tuple[str, ...] = ("g", "g", "g", ".4f", ".4f", ".0f")
        notes = rows["note"] if "note" in rows else pd.Series(dtype=object)
        if notes.notna().any():  # lossless formats reporting masked's rows (--tasks-variants distinct)
            table["scored"] = notes.fillna("lm-eval").to_numpy()
            floatfmt += ("g",)
        versions = ", ".join(f"{name} v{meta.get('version')}" for name, meta in info.get("tasks", {}).items())
        lines += [
            table.to_markdown(index=False, floatfmt=floatfmt),
            "",
            f"Task versions: {versions}.",
            "",
            f"![tasks]({PLOT_NAME})",
            "",
        ]
    flips = flip_table(tasks)
    if not flips.empty:
        lines += [
            "### Flips against dense",
            "",
            "Per document of each task, whether its main metric is correct for the dense model and for "
            "the pruned one (lm-eval's per-sample results, the same documents): *correct → wrong* (b) and "
            "*wrong → correct* (c) are document counts, *flips* = (b + c) / documents (Dutta et al. 2024), "
            "*McNemar p* the exact two-sided test of b against c. Accuracy can stay flat while many answers "
            "change.",
            "",
            flips.to_markdown(index=False, floatfmt=("g", "g", ".0f", ".4f", ".0f", ".0f", ".3g")),
            "",
        ]
    return lines


# ------------------------------------------------------------------------------------------------- sweeps
SWEEP_PLOT_NAME = "tasks.png"


def task_columns(table: pd.DataFrame) -> list[str]:
    """The sweep's `task:<name>:<metric>` columns (main metric per task), in table order."""
    return [c for c in table.columns if c.startswith("task:")]


def plot_task_curves(points: pd.DataFrame, path: str | Path) -> None:
    """Main metric of each task against sparsity, one line per method (pattern); dense as a dashed line."""
    columns = task_columns(points)
    fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 3.8), squeeze=False)
    for ax, column in zip(axes[0], columns, strict=True):
        _, task, metric = column.split(":", 2)
        for (method, pattern), rows in points.groupby(["method", "pattern"], sort=True):
            rows = rows.sort_values("target_sparsity")
            ax.plot(rows["target_sparsity"], rows[column], "o-", markersize=4, label=f"{method} ({pattern})")
        dense = points.get(f"dense_{column}")
        if dense is not None and dense.notna().any():
            ax.axhline(
                float(dense.dropna().iloc[0]), color="gray", linestyle="--", linewidth=1, label="dense"
            )
        ax.set_xlabel("sparsity of pruned layers")
        ax.set_ylabel(f"{task}: {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_tasks_section(points: pd.DataFrame, run: dict) -> list[str]:
    """'## Zero-shot tasks vs sparsity' for a sweep's report.md; [] when the sweep scored no task."""
    columns = task_columns(points)
    if not columns:
        return []
    info = run.get("tasks", {})
    keys = ["method", "pattern", "target_sparsity"]
    shown = points[keys + columns].sort_values(keys).reset_index(drop=True)
    dense = {c: points[f"dense_{c}"].dropna().iloc[0] for c in columns if f"dense_{c}" in points}
    dense_text = ", ".join(f"{c.split(':', 1)[1]} {v:.4f}" for c, v in dense.items())
    return [
        "## Zero-shot tasks vs sparsity",
        "",
        f"lm-evaluation-harness {info.get('lm_eval', '')}; each column is `task:<name>:<metric>` "
        "(acc: highest log-likelihood choice; acc_norm: per byte; flips: share of documents whose main "
        "metric changed against dense). " + (f"Dense: {dense_text}." if dense_text else ""),
        "",
        shown.to_markdown(index=False, floatfmt=".4g"),
        "",
        f"![tasks]({SWEEP_PLOT_NAME})",
        "",
    ]
