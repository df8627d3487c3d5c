"""A method registered from a test file alone runs through `study`, `sweep` and `prune` on the command line,
with its own option generated on each (no other file of the package touched)."""

from __future__ import annotations

import json

import pandas as pd
import typer.main

from prunescope.cli import build_app
from tests.helpers import TOY, run_cli

COMMON = ["--corpus", "builtin", "--max-tokens", "64", "--seqlen", "32", "--device", "cpu", "--no-progress"]


def _run(args: list[str]):
    return run_cli(args, app=build_app())  # built now: the toy method's options are registered


def test_toy_method_has_its_option_on_every_command(toy_method):
    commands = typer.main.get_command(build_app()).commands
    for name in ("study", "sweep", "prune", "sensitivity"):
        flags = {opt for p in commands[name].params for opt in p.opts}
        assert "--largest-power" in flags, name
    assert "--largest-power" not in {
        o for p in typer.main.get_command(build_app()).commands["inspect"].params for o in p.opts
    }


def test_toy_method_through_study_sweep_and_prune(toy_method, tiny_model_dir, tmp_path):
    model = ["--model", str(tiny_model_dir)]
    _run(
        [
            "study",
            *model,
            "--method",
            TOY,
            "--largest-power",
            "2",
            "--sparsity",
            "0.4",
            "--variants",
            "dense,masked",
            *COMMON,
            "--out",
            str(tmp_path / "study"),
        ]
    )
    run = json.loads((tmp_path / "study" / "run.json").read_text())
    assert run["prune_spec"]["method"] == TOY and run["prune_spec"]["largest_power"] == 2.0
    summary = pd.read_csv(tmp_path / "study" / "summary.csv").set_index("variant")
    assert abs(summary.loc["masked", "pruned_layer_sparsity"] - 0.4) < 0.01

    _run(
        [
            "sweep",
            *model,
            "--method",
            f"magnitude,{TOY}",
            "--sparsity",
            "0.2,0.4",
            "--variants",
            "masked",
            *COMMON,
            "--out",
            str(tmp_path / "sweep"),
        ]
    )
    table = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert set(table["method"]) == {"magnitude", TOY} and len(table) == 4

    _run(
        [
            "prune",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "pruned"),
            "--method",
            TOY,
            "--sparsity",
            "0.5",
            "--no-progress",
        ]
    )
    record = json.loads((tmp_path / "pruned" / "prune.json").read_text())
    assert record["spec"]["method"] == TOY


def test_config_rerun_reproduces_a_study_and_flags_override(tiny_model_dir, tmp_path):
    first = tmp_path / "first"
    _run(
        [
            "study",
            "--model",
            str(tiny_model_dir),
            "--sparsity",
            "0.35",
            "--variants",
            "dense,masked",
            *COMMON,
            "--out",
            str(first),
        ]
    )
    _run(["study", "--config", str(first / "run.json"), "--out", str(tmp_path / "again")])
    timing = [c for c in pd.read_csv(first / "summary.csv").columns if c.endswith("seconds")]
    a = pd.read_csv(first / "summary.csv").drop(columns=timing)
    b = pd.read_csv(tmp_path / "again" / "summary.csv").drop(columns=timing)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    _run(
        ["study", "--config", str(first / "run.json"), "--sparsity", "0.5", "--out", str(tmp_path / "other")]
    )
    run = json.loads((tmp_path / "other" / "run.json").read_text())
    assert run["config"]["prune"]["sparsity"] == 0.5 and run["config"]["evaluation"]["seqlen"] == 32
