"""Write a study's results folder: CSV tables, run.json, plots and a report.md that shows them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .allocation import PLOT_NAME, allocation_section, plot_allocation, refine_section
from .output import write_json
from .plots import block_grid, plot_groups, plot_layers, plot_variants
from .tasks import tasks_section, write_tasks

METRICS_DOC = "docs/metrics.md"


def _markdown(frame: pd.DataFrame, floatfmt: str | tuple[str, ...] = ".4g") -> str:
    return frame.to_markdown(index=False, floatfmt=floatfmt)


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
        "layers_plot": directory / "layers.png",
        "report": directory / "report.md",
    }
    summary.to_csv(paths["summary"], index=False)
    if getattr(result, "seed_table", None) is not None:  # --seeds: every seed's rows behind the means
        result.seed_table.to_csv(directory / "seeds.csv", index=False)
    layers.to_csv(paths["layers"], index=False)
    groups.to_csv(paths["groups"], index=False)
    write_json(paths["run"], result.run)
    plot_variants(summary, paths["variants_plot"])
    plot_groups(groups, paths["groups_plot"])
    if not plot_layers(layers, paths["layers_plot"]):
        del paths["layers_plot"]  # no numbered blocks of linear layers: nothing to draw
    if result.run.get("allocation"):  # OWL's per-block sparsities
        paths["allocation_plot"] = directory / PLOT_NAME
        plot_allocation(result.run["allocation"], paths["allocation_plot"])
    paths.update({path.stem + "_tasks": path for path in write_tasks(result, directory)})  # --tasks
    paths["report"].write_text(render_report(result, layers_plot="layers_plot" in paths), encoding="utf-8")
    return list(paths.values())


# report.md shows what a person reads first; every column of every table is in the CSVs.
# (source column, heading, scale, number format)
BEHAVIOUR_COLUMNS = [
    ("top1_agreement", "top-1 agreement", 1.0, ".4f"),
    ("top5_overlap", "top-5 overlap", 1.0, ".4f"),
    ("kl_mean", "KL (nats/token)", 1.0, ".4g"),
    ("perplexity", "perplexity", 1.0, ".3f"),
    ("positions", "positions", 1.0, ".0f"),
    ("seconds", "eval (s)", 1.0, ".2f"),
]
COST_COLUMNS = [
    ("params", "params (M)", 1e-6, ".3f"),
    ("sparsity", "sparsity (all)", 1.0, ".4f"),
    ("pruned_layer_sparsity", "sparsity (pruned layers)", 1.0, ".4f"),
    ("stored_bytes", "stored (MB)", 1e-6, ".2f"),
    ("flops_per_token", "executed MFLOP/token", 1e-6, ".3f"),
    ("nonzero_flops_per_token", "nonzero MFLOP/token", 1e-6, ".3f"),
]
GROUP_COLUMNS = [
    ("modules", "modules", 1.0, ".0f"),
    ("params", "params (M)", 1e-6, ".3f"),
    ("sparsity", "sparsity", 1.0, ".4f"),
    ("param_share", "param share", 1.0, ".3f"),
    ("stored_bytes", "stored (MB)", 1e-6, ".2f"),
    ("flops_per_token", "executed MFLOP/token", 1e-6, ".3f"),
]


def _table(frame: pd.DataFrame, keys: list[str], columns: list[tuple[str, str, float, str]]) -> str:
    """`keys` as they are, then the chosen columns scaled to their units and renamed."""
    present = [c for c in columns if c[0] in frame.columns]
    shown = frame[keys].copy()
    for column, heading, scale, _ in present:
        shown[heading] = frame[column] * scale
    return _markdown(shown, tuple(["g"] * len(keys) + [fmt for *_, fmt in present]))


def corpus_line(run: dict) -> str:
    corpus = run["config"].get("corpus")
    evaluation = run["evaluation"]
    if corpus in (None, "builtin"):
        corpus = (
            "builtin: the demo model's held-out Python standard-library modules"
            if run["model"]["name"] == "demo"
            else "builtin: prunescope's English set"
        )
    else:
        corpus = f"`{corpus}`"
    return f"{corpus}; {evaluation['tokens']} tokens from {evaluation['documents']} documents"


def protocol_line(run: dict) -> str:
    """How perplexity and the agreement metrics were measured: the one place report.md states it.

    A protocol recorded in run.json (`run["evaluation"]["protocol"]`, a sentence) is shown as it is;
    otherwise the windowing facts every study records.
    """
    evaluation = run["evaluation"]
    if evaluation.get("protocol"):
        # The header labels the line itself; the sentence recorded for the terminal may carry the label too.
        return str(evaluation["protocol"]).removeprefix("perplexity protocol ")
    return (
        f"{evaluation['windows']} non-overlapping windows of <= {evaluation['seqlen']} tokens, each document "
        "tokenized on its own; every variant scores the same tokens"
    )


def header_lines(result) -> list[str]:
    run = result.run
    spec, model = run["prune_spec"], run["model"]
    versions = ", ".join(f"{k} {v}" for k, v in run["versions"].items() if k != "platform")
    return [
        f"# prunescope study: {model['name']}",
        "",
        f"- **model**: `{model['name']}` ({model['class']}, from {model['source']}), {run['dtype']} on "
        f"{run['device']}, {run['threads']} threads",
        f"- **method**: {spec['method']}, sparsity {spec['sparsity']:g}, scope {spec['scope']}, "
        f"pattern {spec['pattern']}, seed {spec['seed']}; {len(result.pruned_layers)} pruned layers",
        f"- **corpus**: {corpus_line(run)}",
        f"- **perplexity protocol**: {protocol_line(run)}",
        f"- **versions**: {versions}",
        "",
        f"Every metric is defined in [{METRICS_DOC}](../../{METRICS_DOC}) of the prunescope repository; "
        "every column of every table is in the CSV files beside this report.",
        "",
    ]


def layer_section(result, layers_plot: bool) -> list[str]:
    """The per-layer figure and the pruned variant's sparsity, block x projection."""
    layers = result.layers
    variants = list(dict.fromkeys(layers["variant"]))
    pruned = next((v for v in variants if v != "dense"), variants[0])
    rows = layers[layers["variant"] == pruned]
    grid = block_grid(rows, rows["sparsity"])
    lines = ["## Layers", ""]
    if layers_plot:
        lines += ["![layers](layers.png)", ""]
    if not grid.empty:
        table = grid.reset_index()
        table.columns = [str(c) for c in table.columns]
        lines += [
            f"Sparsity of each block's projections ({pruned} variant; every layer of every variant in "
            "`layers.csv`):",
            "",
            _markdown(table, tuple(["g"] + [".3f"] * grid.shape[1])),
            "",
        ]
    else:
        lines += ["Every layer of every variant is in `layers.csv`.", ""]
    return lines


def render_report(result, layers_plot: bool = True) -> str:
    run, summary = result.run, result.summary
    lines = header_lines(result)
    lines += [
        "## Behaviour (each variant against the dense model)",
        "",
        _table(summary, ["variant"], BEHAVIOUR_COLUMNS),
        "",
        "## Cost",
        "",
        _table(summary, ["variant"], COST_COLUMNS),
        "",
        "![variants](variants.png)",
        "",
        "## Groups",
        "",
        _table(result.groups, ["variant", "group"], GROUP_COLUMNS),
        "",
        "![groups](groups.png)",
        "",
    ]
    lines += layer_section(result, layers_plot)
    lines += allocation_section(run) + refine_section(run)
    lines += tasks_section(result)
    if "latency" in run:
        lines += ["## Latency", "", run["latency"].get("markdown", ""), ""]
    return "\n".join(lines)
