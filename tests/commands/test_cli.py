"""The `prunescope study` command end to end (its bad inputs: test_bad_inputs.py)."""

from __future__ import annotations

import json

import pandas as pd
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
        "cpu",  # csr agrees with masked to 1e-9 on the CPU (float32); GPU runs: tests/hardware/test_cuda.py
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
