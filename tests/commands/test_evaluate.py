"""`prunescope evaluate` of a pruned checkpoint scores what `study` scores: the same builtin corpus (that of
the model it was pruned from, or of --reference), the same windows, so the same figures."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from prunescope.evaluation.corpus import (
    DEMO_CORPUS_LABEL,
    ENGLISH_CORPUS_LABEL,
    builtin_corpus_model,
    builtin_label,
)
from tests.helpers import run_cli

MAX_TOKENS = "512"


@pytest.fixture(scope="module")
def pruned_demo(tmp_path_factory):
    """The demo pruned by magnitude 0.3 (global) into a folder, as `prunescope prune` writes it."""
    out = tmp_path_factory.mktemp("pruned") / "demo-magnitude"
    args = ["prune", "demo", "--method", "magnitude", "--sparsity", "0.3", "--scope", "global"]
    run_cli([*args, "--out", out, "--no-progress"])
    return out


def test_a_pruned_checkpoint_takes_the_builtin_corpus_of_its_source(pruned_demo, tmp_path):
    assert builtin_corpus_model(str(pruned_demo)) == "demo"
    assert builtin_label(str(pruned_demo)) == builtin_label("demo") == DEMO_CORPUS_LABEL
    # Pruned from the pruned demo: followed back to the demo. A model with no record is its own.
    again = tmp_path / "again"
    run_cli(["prune", pruned_demo, "--sparsity", "0.5", "--out", again, "--no-progress"])
    assert builtin_corpus_model(str(again)) == "demo"
    assert builtin_corpus_model("some-org/some-model") == "some-org/some-model"
    assert builtin_label("some-org/some-model") == ENGLISH_CORPUS_LABEL


def test_a_pruned_demo_calibrates_on_the_demos_train_modules(pruned_demo):
    """Re-pruning a pruned demo calibrates on what pruning the demo calibrates on (its train split)."""
    from transformers import AutoTokenizer

    from prunescope.pruning.calibration import calibration_stream

    tokenizer = AutoTokenizer.from_pretrained(pruned_demo)
    assert calibration_stream(tokenizer, None, str(pruned_demo), 512, 0) == calibration_stream(
        tokenizer, None, "demo", 512, 0
    )


@pytest.mark.slow
def test_evaluate_of_a_pruned_demo_equals_the_studys_masked_figures(pruned_demo, tmp_path):
    study, evaluated = tmp_path / "study", tmp_path / "evaluated"
    common = ["--max-tokens", MAX_TOKENS, "--device", "cpu", "--no-progress"]
    run_cli(["study", "--method", "magnitude", "--sparsity", "0.3", "--scope", "global", "--variants",
             "dense,masked", "--out", study, *common])  # fmt: skip
    result = run_cli(["evaluate", pruned_demo, "--reference", "demo", "--out", evaluated, *common])
    masked = pd.read_csv(study / "summary.csv").set_index("variant").loc["masked"]
    record = json.loads((evaluated / "evaluation.json").read_text())
    behaviour = record["behaviour"]
    for metric in ("perplexity", "top1_agreement", "kl_mean"):
        assert behaviour[metric] == pytest.approx(masked[metric], rel=1e-6, abs=1e-9), metric
    study_run = json.loads((study / "run.json").read_text())
    assert record["protocol"]["dataset"] == study_run["evaluation"]["dataset"] == DEMO_CORPUS_LABEL
    assert record["protocol"]["tokens_scored"] == study_run["evaluation"]["tokens_scored"]
    assert DEMO_CORPUS_LABEL in result.output
    # Without --reference the folder's recorded source picks the same texts.
    alone = run_cli(["evaluate", pruned_demo, *common])
    assert DEMO_CORPUS_LABEL in alone.output and f"{float(masked['perplexity']):.3f}" in alone.output
