"""What report.md and the console say in the same words: seeds as mean ± std, one method label, which tokens a
perplexity is on and why fewer are scored than read, auto's choices, units, plain log ticks."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from prunescope.report import summary_cells as cells
from prunescope.report.run_text import NOT_COMPARABLE, perplexity_scope, scored_tokens_reason, study_title


def _spread(mean: float, std: float) -> str:
    """The expected '50.40 ± 0.31': std to two significant digits, the mean to the same decimal place."""
    decimals = 1 - math.floor(math.log10(std))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def test_a_metric_over_seeds_is_mean_and_std_and_a_shared_value_stays_plain():
    row = {"perplexity": 50.4031, "perplexity_std": 0.3142, "n_seeds": 2, "positions": 4096.0}
    row |= {"positions_std": 0.0, "top1_agreement": 0.9, "top1_ci_low": 0.8, "top1_ci_high": 0.95}
    assert cells.cell(row, cells.PERPLEXITY) == "50.40 ± 0.31"
    assert cells.cell(row, cells.POSITIONS) == "4096"  # the same for every seed: no ±
    # one seed: the value and its bootstrap interval
    assert cells.cell({**row, "n_seeds": 1}, cells.TOP1) == "0.9000 [0.8000, 0.9500]"
    assert cells.cell({**row, "n_seeds": 1}, cells.TOP1, stacked=True) == "0.9000\n[0.8000–0.9500]"


def test_sizes_and_flops_are_in_the_tables_units():
    row = {"stored_bytes": 17_096_704, "flops_per_token": 8_388_608}
    assert cells.cell(row, cells.STORED) == "17.097"  # MB = 10^6 bytes
    assert cells.cell(row, cells.FLOPS) == "8.389"  # MFLOP


def _run(**evaluation) -> dict:
    spec = {"method": "wanda", "sparsity": 0.5, "scope": "row", "pattern": "unstructured", "seed": 0}
    spec |= {"allocation": "owl", "refine": "dsnot"}
    facts = {"ppl_protocol": "document", "dataset": "builtin: demo", "windows": 17, "seqlen": 256}
    facts |= {"tokens": 4096, "tokens_scored": 4079, "documents": 13, "protocol": "perplexity protocol x"}
    return {
        "model": {"name": "demo", "class": "OPTForCausalLM", "source": "demo"},
        "prune_spec": spec,
        "evaluation": {**facts, **evaluation},
        "config": {"evaluation": {"max_tokens": None}, "run": {"seeds": [0, 1]}},
        "dtype": "float32",
        "device": "cpu",
        "threads": 2,
        "versions": {"prunescope": "0"},
        "seeds": [0, 1],
    }


def test_the_console_title_and_the_report_header_use_one_method_label_and_name_the_seeds():
    from prunescope.report.study import header_lines

    run = _run()
    header = "\n".join(header_lines(SimpleNamespace(run=run, pruned_layers=["a"] * 24)))
    assert study_title(run) == "demo: wanda+owl+dsnot 0.5 (row, unstructured), seeds 0, 1"
    assert "- **method**: wanda+owl+dsnot, sparsity 0.5" in header and "seeds 0, 1" in header
    assert "seed 0" not in header
    assert "../../docs/metrics.md" not in header and "docs/metrics.md in the prunescope repository" in header


def test_the_header_says_which_tokens_the_perplexity_is_on_and_why_fewer_are_scored():
    from prunescope.report.study import header_lines

    run = _run()
    header = "\n".join(header_lines(SimpleNamespace(run=run, pruned_layers=["a"])))
    assert (
        "perplexity on 4,096 tokens of builtin: demo (--max-tokens 4096, the default); figures from another "
        "token count or corpus are not comparable" in header
    )
    # 4096 - 4079 = 17: one unscored token per window
    assert "4,096 tokens read, 4,079 scored (the first token of each of the 17 windows" in header
    assert perplexity_scope(run["evaluation"], 8192).endswith(f"(--max-tokens 8192); {NOT_COMPARABLE}")


def test_the_rolling_reason_counts_the_context_its_windows_read_again():
    from prunescope.evaluation import protocols
    from prunescope.evaluation.datasets import Corpus
    from tests.helpers import make_tokenizer

    tokenizer = make_tokenizer()
    corpus = Corpus(["alpha beta gamma delta " * 12, "one two three"], "two texts")
    built = protocols.build(tokenizer, corpus, "rolling", 64, seqlen=16)
    read = sum(len(w.ids) for w in built.windows)
    scored = sum(len(w.targets) for w in built.windows)
    assert read > scored  # the long text's later windows re-read context
    reason = scored_tokens_reason({**built.facts, "tokens": read})
    assert reason.startswith(f"{read:,} tokens read, {scored:,} scored: each token of the 2 documents")
    assert f"the other {read - scored:,} are context re-read" in reason


def _auto_layers() -> pd.DataFrame:
    rows = []
    for i, (choice, reason) in enumerate([("dense", "sparse slower at 1 token")] * 3 + [("bitmask", "b")]):
        rows.append(
            dict(variant="auto", module=f"m{i}", auto_choice=choice, auto_tokens=1, auto_dense_s=2e-5,
                 auto_sparse="bitmask", auto_sparse_s=3e-5 if choice == "dense" else 1e-5, auto_reason=reason)
        )  # fmt: skip
    rows.append(dict(variant="masked", module="m0"))  # other variants have no auto columns
    return pd.DataFrame(rows)


def test_auto_says_what_it_chose_per_layer_with_the_timings_it_compared(tmp_path):
    from prunescope.report.auto import auto_section, auto_summary, write_auto

    layers = _auto_layers()
    assert (
        auto_summary(layers)
        == "auto chose bitmask for 1/4 layers; kept 3/4 layers dense (sparse slower at 1 token: 3)"
    )
    section = "\n".join(auto_section(layers))
    row = next(line for line in section.splitlines() if line.startswith("| m0 "))
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "m0", "dense", "20.0", "30.0 (bitmask)", "sparse slower at 1 token"
    ]  # fmt: skip
    assert "dense µs" in section and "best sparse µs (format)" in section
    written = pd.read_csv(write_auto(layers, tmp_path))
    assert list(written["choice"]) == ["dense"] * 3 + ["bitmask"]
    assert written["best_sparse_us"].tolist() == pytest.approx([30.0, 30.0, 30.0, 10.0])
    assert auto_summary(layers[layers["variant"] == "masked"].dropna(axis=1)) == ""


def test_log_axes_label_their_ticks_as_plain_numbers():
    import matplotlib.pyplot as plt

    from prunescope.report.plots import plain_log_scale

    fig, ax = plt.subplots()
    ax.plot([0.3, 0.5], [55, 90])
    plain_log_scale(ax, "y")
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels() if t.get_text()]
    plt.close(fig)
    assert "60" in labels and "90" in labels
    assert not [label for label in labels if "times" in label or "^" in label]


def test_the_sweep_report_lists_points_in_the_study_units_and_says_which_tokens():
    from prunescope.report.sweep import points_markdown, sweep_evaluation_lines

    point = dict(method="magnitude", pattern="unstructured", target_sparsity=0.1 + 0.2, variant="csr",
                 pruned_layer_sparsity=0.3, stored_bytes=22_166_832, flops_per_token=6_501_172,
                 top1_agreement=0.918, top5_overlap=0.925, kl_mean=0.009814, perplexity=83.92,
                 point_seconds=19.05)  # fmt: skip
    table = points_markdown(pd.DataFrame([point]))
    assert "stored (MB)" in table and "executed MFLOP/token" in table
    assert "22.167" in table and "6.501" in table and "22166832" not in table and "| 0.3 " in table
    run = _run()
    lines = sweep_evaluation_lines({"evaluation": run["evaluation"], "sweep": {"base": run["config"]}})
    assert "perplexity on 4,096 tokens of builtin: demo (--max-tokens 4096, the default)" in lines[1]
