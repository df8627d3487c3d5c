"""Write a study's results folder: CSV tables, run.json, plots and a report.md that shows them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .output import write_json
from .plots import plot_groups, plot_variants

METRICS_DOC = "docs/metrics.md"

SUMMARY_COLUMNS = [
    "variant",
    "params",
    "nonzero",
    "sparsity",
    "pruned_layer_sparsity",
    "stored_bytes",
    "flops_per_token",
    "nonzero_flops_per_token",
    "attention_score_flops_per_token",
    "top1_agreement",
    "top5_overlap",
    "kl_mean",
    "perplexity",
    "positions",
    "seconds",
]


def _markdown(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".4g")


def write_study(result, directory: str | Path) -> list[Path]:
    """Write every file of a study into `directory` (an existing, empty folder); returns the paths."""
    directory = Path(directory)
    summary, layers, groups = result.summary, result.layers, result.groups
    paths = {
        "summary": directory / "summary.csv",
        "layers": directory / "layers.csv",
        "groups": directory / "groups.csv",
        "run": directory / "run.json",
        "variants_plot": directory / "variants.png",
        "groups_plot": directory / "groups.png",
        "report": directory / "report.md",
    }
    summary.to_csv(paths["summary"], index=False)
    layers.to_csv(paths["layers"], index=False)
    groups.to_csv(paths["groups"], index=False)
    write_json(paths["run"], result.run)
    plot_variants(summary, paths["variants_plot"])
    plot_groups(groups, paths["groups_plot"])
    paths["report"].write_text(render_report(result), encoding="utf-8")
    return list(paths.values())


def render_report(result) -> str:
    run = result.run
    spec = run["prune_spec"]
    summary = result.summary
    shown = summary[[c for c in SUMMARY_COLUMNS if c in summary.columns]].copy()
    shown["stored_MB"] = shown.pop("stored_bytes") / 1e6
    groups = result.groups[
        [
            "variant",
            "group",
            "modules",
            "params",
            "nonzero",
            "sparsity",
            "param_share",
            "stored_bytes",
            "flops_per_token",
        ]
    ]
    first = next(iter(result.variants.values()))
    lines = [
        f"# prunescope study: {run['model']['name']}",
        "",
        f"- model: `{run['model']['name']}` ({run['model']['class']}, {run['model']['source']}), "
        f"dtype {run['dtype']}, device {run['device']}, {run['threads']} threads",
        f"- pruning: {spec['method']}, sparsity {spec['sparsity']:g}, scope {spec['scope']}, "
        f"pattern {spec['pattern']}, seed {spec['seed']}; {len(result.pruned_layers)} pruned layers",
        f"- evaluation: {run['evaluation']['windows']} windows of <= {run['evaluation']['seqlen']} tokens "
        f"({run['evaluation']['tokens']} tokens from {run['evaluation']['documents']} documents)",
        f"- versions: {', '.join(f'{k} {v}' for k, v in run['versions'].items() if k != 'platform')}",
        "",
        f"Every metric is defined in [{METRICS_DOC}](../../{METRICS_DOC}) of the prunescope repository.",
        "",
        "## Variants",
        "",
        _markdown(shown),
        "",
        "![variants](variants.png)",
        "",
        "## Groups",
        "",
        _markdown(groups),
        "",
        "![groups](groups.png)",
        "",
        f"## Layers ({first.name} variant; all variants in `layers.csv`)",
        "",
        _markdown(first.layers.drop(columns=["nonzero_flops_per_token"])),
        "",
    ]
    if "latency" in run:
        lines += ["## Latency", "", run["latency"].get("markdown", ""), ""]
    return "\n".join(lines)
