"""A run's allocation in a results folder: per-block bars, report.md section, allocation.json, heatmaps.

`report["allocation"]` (run.json / prune.json) of every allocation plug-in holds `allocation`,
`target_sparsity` and `blocks` ([{block, sparsity, realised_sparsity, <measure>}]); per-matrix allocations
(evo, a file) add `layers` {module: sparsity}; OWL's measure is `outlier_ratio`, the others name theirs in
`measure` / `measure_label`; EvoPress adds `search` (its fitness curve and parameters).

`allocation_mapping` turns any such record into {module: sparsity}, `write_allocation_json` writes it as
`allocation.json` (what `--allocation PATH.json` applies), `plot_allocation_heatmap(s)` draw it as a
block x projection grid, one allocation or several side by side (a sweep).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

PLOT_NAME = "block_sparsity.png"
JSON_NAME = "allocation.json"
HEATMAP_NAME = "allocation_heatmap.png"
SEARCH_PLOT_NAME = "allocation_search.png"


def _block_label(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _measure(allocation: dict) -> tuple[str | None, str]:
    """The per-block measure an allocation records (OWL: outlier ratio) and its axis label."""
    if "owl_m" in allocation:
        return "outlier_ratio", f"outlier ratio % (> {allocation['owl_m']:g} x mean)"
    key = allocation.get("measure")
    return key, allocation.get("measure_label", key or "")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _title(allocation: dict) -> str:
    name = str(allocation.get("allocation", "")).upper()
    options = [
        f"{k.split('_', 1)[1]} {v:g}"
        for k, v in allocation.items()
        if re.match(r"(owl|dlp|lsa)_", k) and k not in ("owl_m", "lsa_beta_option") and _number(v)
    ]
    return f"{name} allocation" + (f", {', '.join(options)}" if options else "")


def plot_allocation(allocation: dict, path: str | Path) -> None:
    """Target sparsity per block as bars, the block's measure (OWL's outlier ratio, DLP's importance,
    LSA's error; none for a per-matrix allocation) as a line."""
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
    handles = ax.get_legend_handles_labels()[0]
    key, label = _measure(allocation)
    if key and all(key in b for b in blocks):
        other = ax.twinx()
        other.plot(
            list(positions),
            [b[key] for b in blocks],
            "o-",
            color="#c44e52",
            ms=4,
            label=key.replace("_", " "),
        )
        other.set_ylabel(label, color="#c44e52", fontsize=8)
        handles += other.get_legend_handles_labels()[0]
    # Below the axes: inside, the legend would cover bars or the line.
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    ax.set_title(_title(allocation), fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def allocation_section(run: dict) -> list[str]:
    """report.md lines for run.json's `allocation` (none when the study used a uniform allocation)."""
    allocation = run.get("allocation")
    if not allocation:
        return []
    if "owl_m" not in allocation:
        return _generic_section(allocation)
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


def _generic_section(allocation: dict) -> list[str]:
    """report.md lines of a non-OWL allocation (DLP, LSA, evo, a file)."""
    key, label = _measure(allocation)
    name = allocation.get("allocation", "")
    options = ", ".join(
        f"{k} {v:g}"
        for k, v in allocation.items()
        if re.match(r"(dlp|lsa|evo)_", k) and not k.endswith("_option") and _number(v)
    )
    lines = [f"## Block sparsity ({name})", ""]
    text = f"Target {allocation['target_sparsity']:g}"
    if options:
        text += f"; {options}"
    if allocation.get("path"):
        text += f"; from `{allocation['path']}` (sha256 {str(allocation.get('sha256', ''))[:12]})"
    lines += [text + ".", ""]
    has_measure = bool(key) and all(key in b for b in allocation["blocks"])
    header = "| block |" + (f" {label} |" if has_measure else "") + " block sparsity | realised |"
    lines += [header, "|---|" + ("---|" if has_measure else "") + "---|---|"]
    for b in allocation["blocks"]:
        realised = b.get("realised_sparsity")
        lines.append(
            f"| {b['block']} |"
            + (f" {b[key]:.4g} |" if has_measure else "")
            + f" {b['sparsity']:.4f} | {'' if realised is None else f'{realised:.4f}'} |"
        )
    lines += ["", f"![block sparsity]({PLOT_NAME})", ""]
    search = allocation.get("search")
    if search:
        nan = float("nan")
        before, after = search.get("kl_uniform", nan), search.get("kl_final", nan)
        lines += [
            f"Search: {search.get('generations_run', search.get('generations'))} generations of "
            f"{search.get('offspring')} offspring, stages {search.get('stage_tokens')} tokens with "
            f"{search.get('survivors')} survivors, seed {search.get('seed')}, "
            f"{search.get('seconds', 0):.0f} s; "
            f"KL to dense on {search.get('kl_reference_sequences')} calibration sequences "
            f"{before:.4g} (uniform) -> {after:.4g}.",
            "",
            f"![search curve]({SEARCH_PLOT_NAME})",
            "",
        ]
    return lines


# --- allocations as files and pictures -------------------------------------------------------------------


def allocation_mapping(
    report_allocation: dict | None, layers: Iterable[str], sparsity: float | None = None
) -> dict[str, float]:
    """{module: sparsity} of every name in `layers` (names or a name -> module dict) from a run's
    `report["allocation"]`: its per-matrix `layers` where given, else its block's sparsity, else the
    target (a uniform run: `report_allocation` None, give `sparsity`)."""
    names = list(layers)
    record = report_allocation or {}
    target = record.get("target_sparsity", sparsity)
    per_layer = record.get("layers", {})
    per_block = {b["block"] + ".": b["sparsity"] for b in record.get("blocks", [])}
    mapping = {}
    for name in names:
        if name in per_layer:
            mapping[name] = float(per_layer[name])
            continue
        block = next((v for prefix, v in per_block.items() if name.startswith(prefix)), None)
        if block is None and target is None:
            raise ValueError(f"no sparsity for {name}: give `sparsity` for a uniform run")
        mapping[name] = float(block if block is not None else target)
    return mapping


def write_allocation_json(mapping: Mapping[str, float], folder: str | Path) -> Path:
    """Write `mapping` as `folder/allocation.json` (what `--allocation PATH.json` applies); returns it."""
    path = Path(folder) / JSON_NAME
    path.write_text(json.dumps({name: float(v) for name, v in mapping.items()}, indent=1) + "\n")
    return path


_BLOCK = re.compile(r"^(.*?)\.(\d+)\.(.+)$")


def _grid(mapping: Mapping[str, float]) -> tuple[list[str], list[int], list[list[float]]]:
    """(projections, blocks, values[projection][block]) with NaN where a block lacks that projection."""
    cells: dict[tuple[str, int], float] = {}
    projections: list[str] = []
    blocks: set[int] = set()
    for name, value in mapping.items():
        match = _BLOCK.match(name)
        block, projection = (int(match.group(2)), match.group(3)) if match else (0, name)
        if projection not in projections:
            projections.append(projection)
        blocks.add(block)
        cells[(projection, block)] = float(value)
    ordered = sorted(blocks)
    values = [[cells.get((p, b), math.nan) for b in ordered] for p in projections]
    return projections, ordered, values


def _draw_heatmap(ax, mapping: Mapping[str, float], vmin: float, vmax: float, title: str, labels: bool):
    projections, blocks, values = _grid(mapping)
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(len(blocks)), [str(b) for b in blocks], fontsize=7)
    ax.set_yticks(range(len(projections)), projections if labels else [""] * len(projections), fontsize=7)
    ax.set_xlabel("decoder block", fontsize=8)
    ax.set_title(title, fontsize=9)
    if len(blocks) * len(projections) <= 120:
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    shade = (v - vmin) / (vmax - vmin) if vmax > vmin else 0.5
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="black" if shade > 0.6 else "white",
                    )
    return image


def _limits(mappings: Iterable[Mapping[str, float]]) -> tuple[float, float]:
    values = [float(v) for m in mappings for v in m.values()]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    return (low - 0.01, high + 0.01) if high - low < 1e-9 else (low, high)


def plot_allocation_heatmap(mapping: Mapping[str, float], path: str | Path, title: str = "sparsity") -> None:
    """One allocation as a projection (rows) x block (columns) grid of sparsities."""
    plot_allocation_heatmaps({title: mapping}, path)


def plot_allocation_heatmaps(mappings: Mapping[str, Mapping[str, float]], path: str | Path) -> None:
    """Several allocations (label -> mapping, e.g. a sweep's uniform / owl / dlp / lsa / evo) side by side,
    one colour scale."""
    if not mappings:
        raise ValueError("no allocation to plot")
    vmin, vmax = _limits(mappings.values())
    first = next(iter(mappings.values()))
    projections, blocks, _ = _grid(first)
    width = 1.6 + len(mappings) * max(2.2, 0.35 * len(blocks) + 0.8)
    fig, axes = plt.subplots(
        1, len(mappings), figsize=(width, max(2.4, 0.32 * len(projections) + 1.4)), squeeze=False, sharey=True
    )
    image = None
    for k, (label, mapping) in enumerate(mappings.items()):
        image = _draw_heatmap(axes[0][k], mapping, vmin, vmax, str(label), labels=k == 0)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.04, pad=0.02, label="sparsity")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_search_curve(search: dict, path: str | Path) -> None:
    """EvoPress's fitness curve: best calibration KL to dense per generation (generation 0 = uniform)."""
    curve = search["best_kl"]
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    ax.plot(range(len(curve)), curve, "-", color="#4c72b0", lw=1.2)
    ax.set_xlabel("generation")
    ax.set_ylabel("KL(dense || candidate), calibration")
    ax.set_title(f"EvoPress search, seed {search.get('seed')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_allocation(allocation: dict, layers: Iterable[str], folder: str | Path) -> dict[str, Path]:
    """Everything a non-uniform run writes of its allocation: allocation.json (what `--allocation
    PATH.json` re-applies), the per-block plot, the block x projection heatmap and, for a search, its
    fitness curve."""
    folder = Path(folder)
    mapping = allocation_mapping(allocation, layers)
    paths = {"allocation_json": write_allocation_json(mapping, folder)}
    paths["allocation_plot"] = folder / PLOT_NAME
    plot_allocation(allocation, paths["allocation_plot"])
    paths["allocation_heatmap"] = folder / HEATMAP_NAME
    plot_allocation_heatmap(mapping, paths["allocation_heatmap"], title=_title(allocation))
    if allocation.get("search"):
        paths["allocation_search"] = folder / SEARCH_PLOT_NAME
        plot_search_curve(allocation["search"], paths["allocation_search"])
    return paths
