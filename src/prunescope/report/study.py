"""Write a study's results folder: CSV tables, run.json, plots and a report.md that shows them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import summary_cells as cells
from .allocation import allocation_section, refine_section, write_allocation
from .auto import auto_section, write_auto
from .disagreement import (
    CONFIDENCE_PLOT,
    _pruned_tokens,
    confidence_buckets,
    disagreement_section,
    load_tokenizer,
    write_tokens,
)
from .output import write_json
from .plots import block_grid, plot_groups, plot_kl_by_confidence, plot_layers, plot_variants
from .run_text import (
    METRICS_REFERENCE,
    corpus_text,
    count_text,
    max_tokens,
    method_text,
    perplexity_scope,
    scored_tokens_reason,
    seed_label,
    seeds_text,
)
from .tasks import tasks_section, write_tasks

__all__ = ["write_study", "write_tokens", "render_report"]


def _markdown(frame: pd.DataFrame, floatfmt: str | tuple[str, ...] = ".4g") -> str:
    return frame.to_markdown(index=False, floatfmt=floatfmt)


def write_study(result, directory: str | Path, tokenizer=None) -> list[Path]:
    """Write every file of a study into `directory` (an existing, empty folder); returns the paths.

    `tokenizer` decodes the largest-KL positions in report.md; None: `result.tokenizer` if it has one, else
    the model's tokenizer read from local files, else token ids are shown. (`write_tokens(result, directory)`
    adds tokens.parquet, for --per-token.)
    """
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
    auto = write_auto(layers, directory)  # --variants auto: its choice and timings per layer
    if auto is not None:
        paths["auto"] = auto
    groups.to_csv(paths["groups"], index=False)
    write_json(paths["run"], result.run)
    plot_variants(summary, paths["variants_plot"])
    plot_groups(groups, paths["groups_plot"])
    if not plot_layers(layers, paths["layers_plot"]):
        del paths["layers_plot"]  # no numbered blocks of linear layers: nothing to draw
    if result.run.get("allocation"):  # a non-uniform allocation: its sparsities as a file and pictures
        paths.update(write_allocation(result.run["allocation"], result.pruned_layers, directory))
    paths.update({path.stem + "_tasks": path for path in write_tasks(result, directory)})  # --tasks
    buckets = confidence_buckets(_pruned_tokens(result))
    if not buckets.empty:
        paths["kl_by_confidence"] = directory / CONFIDENCE_PLOT
        plot_kl_by_confidence(buckets, paths["kl_by_confidence"])
        if tokenizer is None:
            tokenizer = getattr(result, "tokenizer", None) or load_tokenizer(result)
    report = render_report(
        result, layers_plot="layers_plot" in paths, tokenizer=tokenizer, confidence_plot=not buckets.empty
    )
    paths["report"].write_text(report, encoding="utf-8")
    run_options = getattr(getattr(result, "config", None), "run", None)
    if getattr(run_options, "per_token", False):  # --per-token: one row per variant and compared position
        paths["tokens"] = write_tokens(result, directory)
    return list(paths.values())


# report.md shows what a person reads first; every column of every table is in the CSVs.
GROUP_COLUMNS = [
    cells.Column("modules", "modules", "modules", ".0f"),
    cells.PARAMS,
    cells.Column("sparsity", "sparsity", "sparsity", ".4f"),
    cells.Column("param_share", "share", "param share", ".3f"),
    cells.STORED,
    cells.FLOPS,
]


INTERVALS_NOTE = (
    "Brackets: [95 % interval], percentile bootstrap over windows (1000 resamples of the windows with "
    "replacement, seed 0; the tokens of a window are not independent, so windows are the unit). top-1 and KL "
    "are over the compared positions, the perplexity ratio PPL(variant)/PPL(dense) over the scored ones."
)
KL_COLUMNS = [
    ("kl_median", "KL median", ".4g"),
    ("kl_p90", "KL p90", ".4g"),
    ("kl_p99", "KL p99", ".4g"),
    ("kl_p999", "KL p99.9", ".4g"),
    ("kl_max", "KL max", ".4g"),
]
DELTA_P_COLUMNS = [
    ("delta_p_mean", "Δp mean", ".3g"),
    ("delta_p_rms", "Δp RMS", ".3g"),
    ("delta_p_p01", "Δp p1", ".3g"),
    ("delta_p_p99", "Δp p99", ".3g"),
]


def behaviour_table(summary: pd.DataFrame) -> str:
    """top-1, top-5, KL and perplexity per variant, with the bootstrap intervals where they are known (or,
    over several seeds, mean ± std)."""
    return cells.markdown(cells.with_ppl_ratio(summary), cells.BEHAVIOUR)


def protocol_section(summary: pd.DataFrame) -> list[str]:
    """The rolling protocol's token, word and byte perplexities and bits per byte; [] for other protocols."""
    columns = cells.protocol_perplexities(summary)
    if not columns:
        return []
    return [
        "## Perplexity per token, word and byte",
        "",
        "The rolling protocol's (lm-evaluation-harness) figures: the same total negative log-likelihood "
        "divided by the scored tokens, the words (split on whitespace) or the UTF-8 bytes of the documents.",
        "",
        cells.markdown(summary, columns),
        "",
    ]


def distribution_tables(summary: pd.DataFrame) -> list[str]:
    """Per-token distributions against dense (llama.cpp's statistics), two narrow tables; [] without them."""
    if (
        not all(c[0] in summary.columns for c in KL_COLUMNS + DELTA_P_COLUMNS)
        or "ln_ppl_ratio" not in summary
    ):
        return []
    kl = pd.DataFrame({"variant": summary["variant"]})
    for name, heading, _ in KL_COLUMNS:
        kl[heading] = summary[name]
    tokens = pd.DataFrame({"variant": summary["variant"]})
    for name, heading, _ in DELTA_P_COLUMNS:
        tokens[heading] = summary[name]
    tokens["ln(PPL/dense) ± se"] = [
        "" if pd.isna(v) else f"{v:.4g} ± {e:.2g}"
        for v, e in zip(summary["ln_ppl_ratio"], summary["ln_ppl_ratio_stderr"], strict=True)
    ]
    tokens["NLL corr."] = summary["nll_correlation"]
    return [
        "## Per-token distributions (each variant against the dense model)",
        "",
        "KL(dense ‖ variant) over the compared positions; Δp = p_variant(target) − p_dense(target), the "
        "paired ln perplexity ratio with its stderr (sqrt(se_v² + se_d² − 2·cov)) and the correlation of the "
        "per-token NLLs over the scored positions (llama.cpp's statistics; the dense row compares the model "
        "with itself).",
        "",
        _markdown(kl, tuple(["g"] + [fmt for *_, fmt in KL_COLUMNS])),
        "",
        _markdown(tokens, tuple(["g"] + [fmt for *_, fmt in DELTA_P_COLUMNS] + ["g", ".4f"])),
        "",
    ]


def corpus_line(run: dict) -> str:
    """The corpus, its documents, and the tokens read and scored (with why they differ)."""
    evaluation = run["evaluation"]
    documents = count_text(evaluation["documents"], "document")
    return f"{corpus_text(evaluation)}, {documents}; {scored_tokens_reason(evaluation)}"


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
        f"- **method**: {method_text(spec)}, sparsity {spec['sparsity']:g}, scope {spec['scope']}, "
        f"pattern {spec['pattern']}, {seed_label(run)}; {len(result.pruned_layers)} pruned layers",
        *([f"- **seeds**: {seeds_text(run)}"] if seeds_text(run) else []),
        f"- **corpus**: {corpus_line(run)}",
        f"- **scope**: {perplexity_scope(run['evaluation'], max_tokens(run['config']))}",
        f"- **perplexity protocol**: {protocol_line(run)}",
        f"- **versions**: {versions}",
        "",
        f"Every metric is defined in {METRICS_REFERENCE}; every column of every table is in the CSV files "
        "beside this report.",
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


def render_report(result, layers_plot: bool = True, tokenizer=None, confidence_plot: bool = False) -> str:
    run, summary = result.run, result.summary
    note = cells.seeds_note(summary)
    seeds = [f"{note}.", ""] if note else []  # under each table whose cells may carry ± std
    lines = header_lines(result)
    lines += [
        "## Behaviour (each variant against the dense model)",
        "",
        behaviour_table(summary),
        "",
        INTERVALS_NOTE,
        "",
        *seeds,
        *protocol_section(summary),
        "## Cost",
        "",
        cells.markdown(summary, cells.COST),
        "",
        *seeds,
        "![variants](variants.png)",
        "",
        "## Groups",
        "",
        cells.markdown(result.groups, GROUP_COLUMNS, keys=("variant", "group")),
        "",
        "![groups](groups.png)",
        "",
    ]
    lines += layer_section(result, layers_plot)
    lines += distribution_tables(summary)
    lines += disagreement_section(result, tokenizer, CONFIDENCE_PLOT if confidence_plot else None)
    lines += allocation_section(run) + refine_section(run)
    lines += auto_section(result.layers)
    lines += tasks_section(result)
    if "latency" in run:
        lines += ["## Latency", "", run["latency"].get("markdown", ""), ""]
    return "\n".join(lines)
