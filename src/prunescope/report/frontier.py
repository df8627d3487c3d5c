"""The behaviour-vs-bytes frontier of a sweep over sparsity x {none, int8, int4} (issue 25).

A configuration is (method, pattern, sparsity, quantization); its bytes are the cheapest storage the sweep
measured for it (e.g. `masked+int8` stores dense int8 codes, `bitmask` stores a 50 % sparse fp32 weight in
values + bitmap), its behaviour the KL and perplexity of that row (every lossless format of one
configuration measures the same values). The Pareto front is the set of configurations that no other
beats on both bytes and KL.

    plot_frontier(table, "frontier.png")       # KL and perplexity against stored MB, front marked
    frontier_section(table)                    # the report.md paragraph: front + matched-bytes verdicts
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .plots import plain_log_scale  # noqa: E402

PLOT_NAME = "frontier.png"
MARKERS = {"none": "o", "int8": "s", "int4": "^"}
# Equal compression as Kuzmin et al. (2023) match it (vs 16-bit values): 50 % <-> int8, 75 % <-> int4.
PAPER_MATCH = {"int8": 0.5, "int4": 0.75}


def _split(variant: str) -> tuple[str, str]:
    base, sep, quant = str(variant).partition("+")
    return base, (quant if sep else "none")


def has_quantization(table: pd.DataFrame) -> bool:
    return "variant" in table.columns and any("+" in str(v) for v in table["variant"])


def frontier_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (method, pattern, target_sparsity, quantization) at its cheapest stored
    format, seeds averaged, with `mb` and `pareto` (on the bytes-KL front)."""
    rows = table.copy()
    split = [_split(v) for v in rows["variant"]]
    rows["format"] = [b for b, _ in split]
    rows["quantization"] = [q for _, q in split]
    keys = ["method", "pattern", "target_sparsity", "quantization", "format"]
    metrics = ["stored_bytes", "kl_mean", "perplexity", "top1_agreement", "pruned_layer_bits_per_weight"]
    metrics = [c for c in metrics if c in rows.columns]
    rows = rows.groupby(keys, sort=False, as_index=False)[metrics].mean()  # --seeds: the mean
    rows = rows.sort_values("stored_bytes", kind="stable")
    rows = rows.groupby(keys[:4], sort=False, as_index=False).first()  # cheapest storage per configuration
    rows["mb"] = rows["stored_bytes"] / 1e6
    rows = rows.sort_values(["stored_bytes", "kl_mean"], kind="stable").reset_index(drop=True)
    best, front = float("inf"), []
    for kl in rows["kl_mean"]:
        front.append(bool(kl < best))
        best = min(best, kl)
    rows["pareto"] = front
    return rows


def _name(row) -> str:
    quant = "" if row["quantization"] == "none" else f" {row['quantization']}"
    if row["target_sparsity"] == 0:
        return f"dense{quant or ' (unquantized)'} ({row['format']})"
    return f"{row['method']} {row['target_sparsity']:.0%}{quant} ({row['format']})"


def _verdict(quantized, pruned) -> str:
    q_kl, p_kl, q_mb, p_mb = quantized["kl_mean"], pruned["kl_mean"], quantized["mb"], pruned["mb"]
    if q_kl <= p_kl and q_mb <= p_mb:
        return "quantization wins (fewer bytes, lower KL)"
    if p_kl <= q_kl and p_mb <= q_mb:
        return "pruning wins (fewer bytes, lower KL)"
    lower = "quantization" if q_kl < p_kl else "pruning"
    return f"{lower} has the lower KL but stores more bytes"


def _line(quantized, pruned, label: str) -> str:
    return (
        f"- {label}: **{_name(quantized)}** {quantized['mb']:.3f} MB, KL {quantized['kl_mean']:.4g}, ppl "
        f"{quantized['perplexity']:.4g} vs **{_name(pruned)}** {pruned['mb']:.3f} MB, KL "
        f"{pruned['kl_mean']:.4g}, ppl {pruned['perplexity']:.4g}: {_verdict(quantized, pruned)}."
    )


def matched_lines(rows: pd.DataFrame) -> list[str]:
    """Per quantizer and method: its quantization-only point against pruning-only points."""
    lines = []
    dense_q = rows[(rows["target_sparsity"] == 0) & (rows["quantization"] != "none")]
    pruned_only = rows[(rows["target_sparsity"] > 0) & (rows["quantization"] == "none")]
    for quant in dict.fromkeys(dense_q["quantization"]):
        q = dense_q[dense_q["quantization"] == quant].sort_values("kl_mean").iloc[0]
        for method in dict.fromkeys(pruned_only["method"]):
            candidates = pruned_only[pruned_only["method"] == method]
            nearest = candidates.iloc[(candidates["stored_bytes"] - q["stored_bytes"]).abs().argsort()].iloc[
                0
            ]
            lines.append(_line(q, nearest, f"{quant}, nearest bytes"))
            target = PAPER_MATCH.get(quant)
            if target is not None:
                paper = candidates.iloc[(candidates["target_sparsity"] - target).abs().argsort()].iloc[0]
                if paper["target_sparsity"] != nearest["target_sparsity"]:
                    lines.append(_line(q, paper, f"{quant} vs {target:.0%} sparse (the papers' matching)"))
    return lines


def frontier_section(table: pd.DataFrame) -> str:
    """The report.md section: the frontier figure, the Pareto front, and which wins at matched bytes."""
    if not has_quantization(table):
        return ""
    rows = frontier_table(table)
    front = rows[rows["pareto"]]
    columns = ["method", "target_sparsity", "quantization", "format", "mb", "pruned_layer_bits_per_weight"]
    shown = front[[c for c in [*columns, "kl_mean", "perplexity"] if c in front.columns]].rename(
        columns={"pruned_layer_bits_per_weight": "bits/weight (pruned layers)"}
    )
    combined = front[(front["target_sparsity"] > 0) & (front["quantization"] != "none")]
    lines = [
        "## Pruning vs quantization at matched bytes",
        "",
        "Each configuration (method, sparsity, quantization) at the cheapest storage the sweep measured "
        "for it "
        "(bytes at real storage: packed 8/4-bit values, scales and zeros, the format's bitmap or indices; "
        "embeddings and norms unchanged). Circled points are on the Pareto front of bytes and KL.",
        "",
        f"![frontier]({PLOT_NAME})",
        "",
        "Pareto front:",
        "",
        shown.to_markdown(index=False, floatfmt=".4g"),
        "",
        "At matched bytes on this model (quantization alone vs pruning alone):",
        "",
        *matched_lines(rows),
        "",
        (
            f"Pruning and quantization add up here: {len(combined)} of the {len(front)} front points are "
            f"sparse and quantized (cheapest: {_name(combined.iloc[0])}, {combined.iloc[0]['mb']:.3f} MB, KL "
            f"{combined.iloc[0]['kl_mean']:.4g})."
            if len(combined)
            else "No sparse and quantized configuration is on the front: on this model quantization alone "
            "dominates the combination."
        ),
        "",
    ]
    return "\n".join(lines)


def plot_frontier(table: pd.DataFrame, path: str | Path) -> None:
    """KL (log) and perplexity against stored MB; colour per method, marker per quantization, front marked."""
    rows = frontier_table(table)
    methods = list(dict.fromkeys(rows["method"]))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, metric, label in (
        (axes[0], "kl_mean", "KL(dense ‖ variant)"),
        (axes[1], "perplexity", "perplexity"),
    ):
        for (method, quant), part in rows.groupby(["method", "quantization"], sort=False):
            ax.scatter(
                part["mb"],
                part[metric],
                color=colours[method],
                marker=MARKERS.get(quant, "D"),
                s=36,
                label=f"{method}, {quant}",
                zorder=3,
            )
        front = rows[rows["pareto"]]
        ax.plot(front["mb"], front[metric], color="black", lw=1, ls="--", zorder=2, label="Pareto front (KL)")
        ax.scatter(front["mb"], front[metric], s=140, facecolors="none", edgecolors="black", zorder=4)
        for _, row in rows.iterrows():
            ax.annotate(
                f"{row['target_sparsity']:.0%}",
                (row["mb"], row[metric]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xlabel("stored size (MB, real storage)")
        ax.set_ylabel(label)
        positive = rows.loc[rows[metric] > 0, metric]
        if metric == "kl_mean" and len(positive):  # log, with the dense point's 0 on a linear sliver
            plain_log_scale(ax, "y", scale="symlog", linthresh=float(positive.min()))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("behaviour vs bytes: sparsity x quantization (labels: sparsity)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def frontier_report(table: pd.DataFrame, out: str | Path) -> str:
    """For the sweep report: draw frontier.png in `out` and return the section ("" without quantization)."""
    if table.empty or not has_quantization(table):
        return ""
    plot_frontier(table, Path(out) / PLOT_NAME)
    return frontier_section(table)


__all__ = ["PLOT_NAME", "frontier_report", "frontier_section", "frontier_table", "plot_frontier"]
