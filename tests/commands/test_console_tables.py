"""The console of `study`, `sweep` and `bench` in an 80-column terminal: no number cut short ("…"), the
study's units everywhere, seeds as mean ± std, the rolling protocol's perplexities, which tokens a
perplexity is on, and what `auto` chose."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
from rich.console import Console

from tests.helpers import study_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TABLE_LINE = tuple("┏┃┡│└")


def _narrow(monkeypatch, *modules) -> None:
    """Every console the commands print tables on, 80 columns wide (as COLUMNS=80 makes it)."""
    import prunescope.commands.common as common

    console = Console(width=80)
    for module in (common, *modules):
        monkeypatch.setattr(module, "console", console)


def _fits(output: str) -> None:
    assert "…" not in output
    tables = [line for line in output.splitlines() if line.startswith(TABLE_LINE)]
    assert tables and all(len(line) <= 80 for line in tables), tables


@pytest.fixture(scope="module")
def study_run(tiny_model_dir, tmp_path_factory):
    """One small study whose console shows everything at once: two seeds, auto, the rolling protocol."""
    import prunescope.commands.study as study

    out = tmp_path_factory.mktemp("console") / "study"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _narrow(monkeypatch, study)
        result = study_cli(
            "--model", tiny_model_dir, "--method", "random", "--seeds", "0,1", "--device", "cpu",
            "--variants", "dense,masked,auto", "--ppl-protocol", "rolling", "--max-tokens", "64",
            "--seqlen", "16", "--out", out,
        )  # fmt: skip
    return SimpleNamespace(output=result.output, out=out, run=json.loads((out / "run.json").read_text()))


def test_study_tables_fit_80_columns_with_every_digit(study_run):
    _fits(study_run.output)
    summary = pd.read_csv(study_run.out / "summary.csv").set_index("variant")
    assert f"{summary.loc['dense', 'perplexity']:.3f}" in study_run.output
    assert f"{summary.loc['masked', 'stored_bytes'] / 1e6:.3f}" in study_run.output  # MB


def test_study_shows_mean_and_std_over_the_seeds(study_run):
    seeds = pd.read_csv(study_run.out / "seeds.csv")
    perplexity = seeds[seeds["variant"] == "masked"]["perplexity"]
    mean, std = perplexity.mean(), perplexity.std(ddof=1)
    decimals = 1 - math.floor(math.log10(std))
    assert f"{mean:.{decimals}f}" in study_run.output and f"± {std:.{decimals}f}" in study_run.output
    assert "seeds 0, 1" in study_run.output and "(2 seeds)" in study_run.output
    report = (study_run.out / "report.md").read_text(encoding="utf-8")
    assert f"{mean:.{decimals}f} ± {std:.{decimals}f}" in report
    header = report.split("## ")[0]
    assert "seeds 0, 1" in header and "seed 0" not in header


def test_study_shows_the_rolling_perplexities_and_which_tokens_they_are_on(study_run):
    summary = pd.read_csv(study_run.out / "summary.csv").set_index("variant")
    for column, fmt in (("word_perplexity", ".5g"), ("byte_perplexity", ".4f"), ("bits_per_byte", ".4f")):
        assert format(summary.loc["dense", column], fmt) in study_run.output
    evaluation = study_run.run["evaluation"]
    read, scored = evaluation["tokens"], evaluation["tokens_scored"]
    assert f"perplexity on {scored:,} tokens of {evaluation['dataset']} (--max-tokens 64" in study_run.output
    assert f"{read:,} tokens read, {scored:,} scored" in study_run.output
    report = (study_run.out / "report.md").read_text(encoding="utf-8")
    assert "## Perplexity per token, word and byte" in report
    assert f"the other {read - scored:,} are context re-read" in report


def test_study_says_what_auto_chose_per_layer(study_run):
    choices = pd.read_csv(study_run.out / "auto.csv")
    assert len(choices) == study_run.run["prunable_layers"]
    dense = int((choices["choice"] == "dense").sum())
    line = next(line for line in study_run.output.splitlines() if line.startswith("auto "))
    if dense:
        assert f"kept {dense}/{len(choices)} layers dense" in line
    report = (study_run.out / "report.md").read_text(encoding="utf-8")
    assert "## auto: the format chosen per layer" in report and "best sparse µs (format)" in report


def test_sweep_points_use_the_study_units_in_80_columns(monkeypatch, capsys):
    import prunescope.commands.sweep as sweep

    rows = []
    for seed, wobble in ((0, 0.0), (1, 0.01)):
        for variant, stored in (("masked", 17_096_704), ("semi-structured", 11_234_567)):
            rows.append(
                dict(method="wanda+owl+dsnot", pattern="unstructured", target_sparsity=0.5, variant=variant,
                     seed=seed, stored_bytes=stored, flops_per_token=8_388_608, top1_agreement=0.8 + wobble,
                     kl_mean=0.05, perplexity=41.25 + 10 * wobble)
            )  # fmt: skip
    _narrow(monkeypatch, sweep)
    sweep.print_points(pd.DataFrame(rows))
    output = capsys.readouterr().out
    _fits(output)
    assert "17.097" in output and "8.389" in output and "17096704" not in output
    assert "41.30" in output and "± 0.071" in output  # perplexity over the two seeds


def test_bench_tables_fit_80_columns_with_a_legend(monkeypatch, capsys):
    import prunescope.commands.bench as bench

    layer = dict(shape="3072x768", n=512, format="bitmask", median_s=0.000123456, min_s=1e-4, max_s=2e-4,
                 speedup=1.234, flop_theory=1.0, byte_theory=1.76, measured_over_flop=1.2,
                 measured_over_bytes=0.7, status="ok")  # fmt: skip
    failed = {**layer, "format": "csr16", "status": "unsupported: too wide"}
    model = dict(kind="prefill", batch=4, seqlen=128, format="bitmask", median_s=0.04,
                 tokens_per_s=12345.6, speedup=1.55, flop_theory=1.0, byte_theory=1.52,
                 measured_over_bytes=1.02, status="ok")  # fmt: skip
    _narrow(monkeypatch, bench)
    monkeypatch.setattr("prunescope.report.latency.environment_line", lambda environment: "environment")
    bench.print_latency(SimpleNamespace(layers=[layer, failed], model=[model], environment={}))
    output = capsys.readouterr().out
    _fits(output)
    for text in ("0.1235", "1.23x", "1.76x", "12,345.6", "1.55x", "csr16: unsupported: too wide"):
        assert text in output
    assert "speed: measured speedup vs dense F.linear" in output
