"""The `prunescope study` command end to end, and every bad input: one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from prunescope.cli import app

runner = CliRunner()


def _study(*args: str):
    return runner.invoke(app, ["study", "--no-progress", *args])


def test_study_end_to_end(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = _study(
        "--model",
        str(tiny_model_dir),
        "--sparsity",
        "0.4",
        "--out",
        str(out),
        "--max-tokens",
        "400",
        "--seqlen",
        "32",
        "--device",
        "cpu",  # csr agrees with masked to 1e-9 on the CPU (float32); GPU runs: tests/test_cuda.py
    )
    assert result.exit_code == 0, result.output
    for name in (
        "summary.csv",
        "layers.csv",
        "groups.csv",
        "run.json",
        "report.md",
        "variants.png",
        "groups.png",
    ):
        assert (out / name).is_file(), name
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    assert list(summary.index) == ["dense", "masked", "csr"]
    assert summary.loc["dense", "top1_agreement"] == 1.0
    assert abs(summary.loc["csr", "top1_agreement"] - summary.loc["masked", "top1_agreement"]) < 1e-9
    assert abs(summary.loc["masked", "pruned_layer_sparsity"] - 0.4) < 1e-3
    run = json.loads((out / "run.json").read_text())
    assert {"python", "torch", "transformers"} <= set(run["versions"]) and run["threads"] >= 1
    assert run["config"]["run"]["seed"] == 0 and "timings_s" in run
    assert not list(tmp_path.glob(".run.tmp-*"))
    report = (out / "report.md").read_text()
    assert "![variants](variants.png)" in report and "docs/metrics.md" in report


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sparsity", "1.0"], "sparsity must be in"),
        (["--sparsity", "-0.2"], "sparsity must be in"),
        (["--model", "./no/such/dir"], "does not exist"),
        (["--model", "nobody/no-such-model-xyz"], "--model demo"),
        (["--corpus", "missing.txt"], "does not exist"),
        (["--include", "*nothing*"], "no prunable layer matched"),
        (["--device", "cpu", "--dtype", "float16"], "does not support float16"),  # CPU CSR: no half
        pytest.param(
            ["--device", "cuda"],
            "not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="asserts CUDA is absent"),
        ),
        (["--variants", "dense,sparse-magic"], "unknown variant"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(args, message, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    if "--model" not in args:
        args = ["--model", str(tiny_model_dir), *args]
    result = _study(*args, "--out", str(out))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_empty_corpus_and_existing_output(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    result = _study("--model", str(tiny_model_dir), "--corpus", str(empty), "--out", str(tmp_path / "a"))
    assert result.exit_code == 2 and "holds no text" in result.output
    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "keep.txt").write_text("old")
    result = _study("--model", str(tiny_model_dir), "--out", str(existing))
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (existing / "keep.txt").read_text() == "old"
