"""`prunescope sensitivity`: one unit pruned at a time on one model copy, the heatmap and the tables."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from prunescope.cli import app
from prunescope.errors import PrunescopeError
from prunescope.experiments.sensitivity import SensitivityConfig, make_units, run_sensitivity
from prunescope.experiments.study import StudyConfig
from prunescope.report.sensitivity import grid, write_sensitivity
from tests.helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


NAMES = [f"model.decoder.layers.{b}.{p}" for b in range(2) for p in ("self_attn.q_proj", "fc1", "fc2")]


def test_units():
    blocks = make_units(NAMES, "block")
    assert [(u.name, u.block, u.projection, len(u.layers)) for u in blocks] == [
        ("block 0", 0, "all", 3),
        ("block 1", 1, "all", 3),
    ]
    projections = make_units(NAMES, "projection")
    assert [(u.name, u.block, len(u.layers)) for u in projections] == [
        ("self_attn.q_proj", "all", 2),
        ("fc1", "all", 2),
        ("fc2", "all", 2),
    ]
    modules = make_units(NAMES, "module")
    assert [(u.block, u.projection) for u in modules][:2] == [(0, "self_attn.q_proj"), (0, "fc1")]
    with pytest.raises(PrunescopeError, match="unit"):
        SensitivityConfig(base=StudyConfig(method="magnitude", sparsity=0.5), by="head")
    with pytest.raises(PrunescopeError, match="allocation"):
        SensitivityConfig(base=StudyConfig(method="wanda", sparsity=0.5, allocation="owl"))


def test_modules_of_a_tiny_model(tiny_model_dir, tmp_path):
    base = StudyConfig(
        model=str(tiny_model_dir), method="wanda", sparsity=0.5, variants=["dense"], max_tokens=128,
        seqlen=32, calib_samples=4, calib_seqlen=16,
    )  # fmt: skip
    result = run_sensitivity(SensitivityConfig(base=base, by="module"), progress=False)
    table = result.table
    assert len(table) == 12  # 2 blocks x 6 projections
    assert (table["sparsity"].sub(0.5).abs() < 0.02).all()
    # A random tiny model's attention is near uniform: q/k pruning moves KL only by rounding noise.
    assert (table["kl_mean"] > -1e-6).all() and table["kl_mean"].max() > 1e-5
    assert (table["top1_agreement"] <= 1).all()
    assert sorted(table["rank"]) == list(range(1, 13))
    assert grid(table, "kl_mean").shape == (2, 6)
    # One model copy, restored after every unit: pruning the last unit again gives the same numbers.
    again = run_sensitivity(SensitivityConfig(base=base, by="module"), progress=False).table
    assert torch.allclose(torch.tensor(again["kl_mean"].values), torch.tensor(table["kl_mean"].values))
    paths = write_sensitivity(result, tmp_path)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)


def test_cli_on_demo_writes_heatmap(tmp_path):
    out = tmp_path / "sens"
    args = [
        "sensitivity",
        "--method",
        "magnitude",
        "--sparsity",
        "0.5",
        "--by",
        "block",
        "--max-tokens",
        "256",
    ]
    run_cli([*args, "--out", str(out), "--no-progress"])
    heatmap = out / "sensitivity.png"
    assert heatmap.stat().st_size > 10_000
    table = pd.read_csv(out / "sensitivity.csv")
    assert list(table["unit"]) == [f"block {i}" for i in range(4)]
    assert (table["sparsity"].sub(0.5).abs() < 1e-3).all()
    report = (out / "report.md").read_text()
    most = table.sort_values("kl_mean").iloc[-1]["unit"]
    assert f"most sensitive block: **{most}**" in report and "![sensitivity](sensitivity.png)" in report
    assert json.loads((out / "run.json").read_text())["units"] == 4
    again = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
