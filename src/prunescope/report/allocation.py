"""OWL's per-block allocation in a results folder: a bar chart and a report.md section."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

PLOT_NAME = "block_sparsity.png"


def _block_label(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def plot_allocation(allocation: dict, path: str | Path) -> None:
    """Target (and realised) sparsity per block as bars, the block's outlier ratio (LOD) as a line."""
    blocks = allocation["blocks"]
    labels = [_block_label(b["block"]) for b in blocks]
    positions = range(len(blocks))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(blocks) + 2.0), 3.4))
    bars = ax.bar(positions, [b["sparsity"] for b in blocks], color="#4c72b0", label="block sparsity")
    if len(blocks) <= 40:
        ax.bar_label(bars, labels=[f"{b['sparsity']:.3f}" for b in blocks], fontsize=7, padding=2)
    ax.axhline(allocation["target_sparsity"], color="black", lw=0.8, ls="--", label="target (mean)")
    ax.set_xticks(list(positions), labels, fontsize=8)
    ax.set_xlabel("decoder block")
    ax.set_ylabel("sparsity")
    ax.margins(y=0.2)
    other = ax.twinx()
    other.plot(
        list(positions),
        [b["outlier_ratio"] for b in blocks],
        "o-",
        color="#c44e52",
        ms=4,
        label="outlier ratio",
    )
    other.set_ylabel(f"outlier ratio % (> {allocation['owl_m']:g} x mean)", color="#c44e52", fontsize=8)
    handles = ax.get_legend_handles_labels()[0] + other.get_legend_handles_labels()[0]
    # Below the axes: inside, the legend would cover bars or the line.
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    ax.set_title(f"OWL allocation, lambda {allocation['owl_lambda']:g}", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def allocation_section(run: dict) -> list[str]:
    """report.md lines for run.json's `allocation` (none when the study used a uniform allocation)."""
    allocation = run.get("allocation")
    if not allocation:
        return []
    lines = [
        "## Block sparsity (OWL)",
        "",
        f"Outlier ratio = share of a block's Wanda scores above {allocation['owl_m']:g} x their mean, on the "
        f"dense model; lambda {allocation['owl_lambda']:g}; target {allocation['target_sparsity']:g}.",
        "",
        "| block | outlier ratio (%) | block sparsity | realised |",
        "|---|---|---|---|",
    ]
    for b in allocation["blocks"]:
        realised = b.get("realised_sparsity")
        lines.append(
            f"| {b['block']} | {b['outlier_ratio']:.3f} | {b['sparsity']:.4f} | "
            f"{'' if realised is None else f'{realised:.4f}'} |"
        )
    return [*lines, "", f"![block sparsity]({PLOT_NAME})", ""]


def refine_section(run: dict) -> list[str]:
    """report.md lines for run.json's DSnoT summary `refine` (none without refinement)."""
    refine = run.get("refine")
    if not refine:
        return []
    before = sum(v["error_before"] for v in refine.values())
    after = sum(v["error_after"] for v in refine.values())
    swaps = sum(v["swaps"] for v in refine.values())
    touched = sum(1 for v in refine.values() if v["swaps"])
    return [
        "## Mask refinement (DSnoT)",
        "",
        f"{swaps} swaps in {touched} of {len(refine)} layers; sum over rows of |expected error| "
        f"{before:.4g} -> {after:.4g} (per layer in run.json, `refine`).",
        "",
    ]
