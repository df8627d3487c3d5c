"""Sweeps: ranges, resumability after SIGKILL (no duplicate, no missing point, old lines untouched)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from prunescope import PrunescopeError
from prunescope.cli import app
from prunescope.experiments.sweep import parse_sparsities
from tests.helpers import run_cli

runner = CliRunner()


def test_parse_sparsities():
    assert parse_sparsities("0.1:0.9:0.1") == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert parse_sparsities("0.5,0.3,0.5") == [0.3, 0.5]
    for bad in ("0.5:0.1:0.1", "0.1:0.9:0", "1.0", "a,b", "0.2:1.0:0.4"):
        with pytest.raises(PrunescopeError):
            parse_sparsities(bad)


def _args(model_dir, out, sparsity="0.2,0.5", method="magnitude,random", extra=()):
    return [
        "sweep",
        "--model",
        str(model_dir),
        "--sparsity",
        sparsity,
        "--method",
        method,
        "--pattern",
        "unstructured,2:4",
        "--variants",
        "masked,csr",
        "--max-tokens",
        "200",
        "--seqlen",
        "32",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_sweep_writes_table_curves_and_report(tiny_model_dir, tmp_path):
    out = tmp_path / "sweep"
    run_cli(_args(tiny_model_dir, out))
    table = pd.read_csv(out / "results.csv")
    # 2 methods x (2 sparsities + one 2:4 point) x 2 variants
    assert len(table) == 12 and table["key"].is_unique
    assert set(table.loc[table["pattern"] == "2:4", "target_sparsity"]) == {0.5}
    for name in ("behaviour.png", "cost.png", "report.md", "run.json", "config.json"):
        assert (out / name).is_file()
    assert "Where top-1 agreement collapses" in (out / "report.md").read_text()
    csr = table[table["variant"] == "csr"].set_index("key")
    assert (csr["point_seconds"] > 0).all()
    # Rerunning the finished sweep computes nothing and keeps every line.
    before = (out / "points.jsonl").read_bytes()
    assert runner.invoke(app, _args(tiny_model_dir, out)).exit_code == 0
    assert (out / "points.jsonl").read_bytes() == before
    # Another configuration in the same folder is refused.
    changed = runner.invoke(app, _args(tiny_model_dir, out, sparsity="0.3"))
    assert changed.exit_code == 2 and "another configuration" in changed.output


@pytest.mark.slow
def test_killed_sweep_resumes_without_duplicates(tiny_model_dir, tmp_path):
    out = tmp_path / "sweep"
    args = _args(tiny_model_dir, out, sparsity="0.1:0.9:0.1", extra=("--max-tokens", "600"))
    command = [sys.executable, "-c", "from prunescope.cli import app; app()", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    points = out / "points.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if points.exists() and points.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the sweep finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = points.read_bytes()
    complete = written[: written.rfind(b"\n") + 1]
    assert not (out / "report.md").exists()

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    final = points.read_bytes()
    assert final.startswith(complete)  # finished lines are byte-identical
    keys = [json.loads(line)["key"] for line in final.decode().splitlines()]
    # 2 methods x (9 sparsities + one 2:4 point) x 2 variants, each exactly once
    assert len(keys) == len(set(keys)) == 40


def test_sweep_latency_adds_measured_speedups(tiny_model_dir, tmp_path):
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "--model",
        str(tiny_model_dir),
        "--sparsity",
        "0.5",
        "--variants",
        "masked,csr",
        "--latency",
        "--max-tokens",
        "64",
        "--seqlen",
        "32",
        "--out",
        str(out),
        "--no-progress",
    ]
    run_cli(args)
    table = pd.read_csv(out / "results.csv")
    assert (table["layer_speedup_n1"] > 0).all() and (table["layer_speedup_n64"] > 0).all()
    assert (out / "speedup.png").is_file()
