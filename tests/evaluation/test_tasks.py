"""Zero-shot tasks through lm-evaluation-harness (`--tasks`): prunescope's numbers are lm-eval's own.

One study (module fixture) has the dense, masked, csr and bitmask variants of the demo model on a tiny
local multiple-choice YAML (8 documents of the bundled task, through `dataset_path: json`) and on the
bundled `stdlib_identifier` task itself, offline; lm-eval runs on dense and masked, and the lossless formats
report masked's rows (`--tasks-variants distinct`). It is compared with `lm_eval.simple_evaluate` run
independently on the dense folder and on the checkpoint `prunescope prune demo` writes with the same spec.
"""

from __future__ import annotations

import builtins
import json
import math
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets is imported anywhere

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from prunescope.cli import app  # noqa: E402
from prunescope.demo.corpus import DEMO_MODEL_DIR  # noqa: E402
from prunescope.demo.identifier_task import DATA_FILE, TASK_NAME, TASKS_DIR, build_documents  # noqa: E402
from tests.helpers import run_cli

pytest.importorskip("lm_eval")
# lm-eval starts slowly and scores 2 variants x 2 tasks here (then 2 x 1 with --tasks-variants all): ~1 min
# on an idle 2-core machine.
pytestmark = [pytest.mark.lm_eval, pytest.mark.slow, pytest.mark.timeout(900)]

runner = CliRunner()
SPARSITY = "0.5"
DOCS = 8
TINY_YAML = """task: tiny_identifier
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 2.0
"""


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    docs = (TASKS_DIR / DATA_FILE).read_text(encoding="utf-8").splitlines()[:DOCS]
    data = root / "tiny.jsonl"
    data.write_text("\n".join(docs) + "\n", encoding="utf-8")
    (root / "tiny.yaml").write_text(TINY_YAML.format(data=data), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def study(task_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "out"
    args = [
        "study",
        "--sparsity",
        SPARSITY,
        "--variants",
        "dense,masked,csr,bitmask",
        "--max-tokens",
        "256",
        "--tasks",
        f"tiny_identifier,{TASK_NAME}",
        "--tasks-path",
        str(task_dir),
        "--tasks-limit",
        str(DOCS),
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",  # bitmask and exact agreement with lm-eval's CPU run below
    ]
    result = run_cli(args)
    return out, result.output


def lm_eval_reference(pretrained, task_dir) -> dict:
    """acc and acc_norm of `tiny_identifier` by lm-eval alone, on the checkpoint folder `pretrained`, and its
    per-sample acc by document id (`log_samples`)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    output = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(pretrained), "dtype": "float32", "device": "cpu"},
        tasks=["tiny_identifier"],
        batch_size=8,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=True,
    )
    results = output["results"]["tiny_identifier"]
    samples = {s["doc_id"]: s["acc"] for s in output["samples"]["tiny_identifier"] if s["filter"] == "none"}
    return {"acc": results["acc,none"], "acc_norm": results["acc_norm,none"], "samples": samples}


def test_dense_and_masked_equal_lm_eval_exactly_formats_within_one_document(study, task_dir, tmp_path):
    out, _ = study
    tasks = pd.read_csv(out / "tasks.csv")
    assert list(tasks.columns) == ["variant", "task", "metric", "value", "stderr", "n", "note"]
    tiny = tasks[tasks["task"] == "tiny_identifier"].set_index(["variant", "metric"])["value"]
    assert set(tasks[tasks["task"] == "tiny_identifier"]["n"]) == {DOCS}

    dense = lm_eval_reference(DEMO_MODEL_DIR, task_dir)
    pruned = tmp_path / "pruned"
    result = runner.invoke(
        app, ["prune", "demo", "--sparsity", SPARSITY, "--out", str(pruned), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    masked = lm_eval_reference(pruned, task_dir)
    for metric in ("acc", "acc_norm"):
        assert tiny["dense", metric] == dense[metric]
        assert tiny["masked", metric] == masked[metric]
        for fmt in ("csr", "bitmask"):  # lossless formats: masked's rows, not scored again
            assert tiny[fmt, metric] == tiny["masked", metric]
    # Flips of masked against dense, counted by hand from lm-eval's own per-sample results.
    b = sum(1 for d, ok in dense["samples"].items() if ok == 1.0 and masked["samples"][d] == 0.0)
    c = sum(1 for d, ok in dense["samples"].items() if ok == 0.0 and masked["samples"][d] == 1.0)
    assert len(dense["samples"]) == DOCS
    flips = tiny.loc["masked"]
    assert flips["correct_to_wrong"] == b and flips["wrong_to_correct"] == c
    assert flips["flips"] == pytest.approx((b + c) / DOCS)
    n = b + c
    p = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n) if n else 1.0
    assert flips["mcnemar_p"] == pytest.approx(p)
    flip_rows = tasks[(tasks["task"] == "tiny_identifier") & (tasks["metric"] == "flips")]
    assert set(flip_rows["n"]) == {DOCS} and tiny["dense", "flips"] == 0.0


def test_lossless_formats_report_masked_rows_labelled_and_say_so_first(study):
    out, output = study
    tasks = pd.read_csv(out / "tasks.csv")
    scored = tasks[tasks["variant"].isin(["dense", "masked"])]
    reused = tasks[tasks["variant"].isin(["csr", "bitmask"])]
    assert scored["note"].isna().all() and set(reused["note"]) == {"= masked (lossless format)"}
    masked = tasks[tasks["variant"] == "masked"].drop(columns=["variant", "note"]).reset_index(drop=True)
    for fmt in ("csr", "bitmask"):  # flips included
        rows = tasks[tasks["variant"] == fmt].drop(columns=["variant", "note"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(rows, masked)
    first = lines(output)[0]
    assert first.startswith("lm-eval runs on dense, masked; csr, bitmask report masked's task rows"), first
    assert f"task {TASK_NAME} (acc, {DOCS} docs) csr: " in output and "= masked (lossless format)" in output
    report = (out / "report.md").read_text()
    assert "| = masked (lossless format) |" in report and "| lm-eval " in report


def test_tasks_variants_all_scores_every_format_within_one_document_of_masked(task_dir, tmp_path):
    out = tmp_path / "all"
    args = ["study", "--variants", "masked,csr,bitmask", "--sparsity", SPARSITY, "--max-tokens", "256"]
    args += ["--tasks", "tiny_identifier", "--tasks-path", task_dir, "--tasks-limit", DOCS]
    result = run_cli([*args, "--tasks-variants", "all", "--out", out, "--no-progress", "--device", "cpu"])
    assert lines(result.output)[0] == "lm-eval runs on masked, csr, bitmask"
    tasks = pd.read_csv(out / "tasks.csv")
    assert tasks["note"].isna().all()
    tiny = tasks.set_index(["variant", "metric"])["value"]
    for metric in ("acc", "acc_norm"):
        for fmt in ("csr", "bitmask"):  # float sums in another order may flip one near-tie, no more
            assert abs(tiny[fmt, metric] - tiny["masked", metric]) <= 1 / DOCS + 1e-12


def test_results_folder_names_metrics_and_versions(study):
    out, output = study
    summary = pd.read_csv(out / "summary.csv")
    assert f"task:{TASK_NAME}:acc" in summary.columns and "task:tiny_identifier:acc" in summary.columns
    assert "task:tiny_identifier:acc_norm" not in summary.columns  # only the main metric per task
    run = json.loads((out / "run.json").read_text())
    assert run["versions"]["lm_eval"] == run["tasks"]["lm_eval"]
    assert run["tasks"]["tasks"]["tiny_identifier"]["version"] == 2.0
    assert run["tasks"]["tasks"][TASK_NAME]["main_metric"] == "acc"
    report = (out / "report.md").read_text()
    assert "## Zero-shot tasks" in report and "![tasks](tasks.png)" in report
    assert "### Flips against dense" in report and f"task:{TASK_NAME}:flips" in summary.columns
    assert (out / "tasks.png").stat().st_size > 0
    assert f"task {TASK_NAME} (acc, {DOCS} docs) dense" in output
    # The bundled task ran offline beside the local YAML; the summary column is the long form's value.
    bundled = pd.read_csv(out / "tasks.csv").query("task == @TASK_NAME and metric == 'acc'")
    assert list(bundled["variant"]) == ["dense", "masked", "csr", "bitmask"]
    assert list(bundled["value"]) == list(summary[f"task:{TASK_NAME}:acc"])


def test_bundled_task_is_built_from_the_held_out_split_deterministically():
    shipped = [json.loads(line) for line in (TASKS_DIR / DATA_FILE).read_text().splitlines()]
    heldout = set(json.loads((DEMO_MODEL_DIR / "heldout_modules.json").read_text())["modules"])
    assert len(shipped) == 200 and {doc["module"] for doc in shipped} <= heldout
    for doc in shipped:
        assert len(set(doc["choices"])) == 4 and 0 <= doc["label"] < 4
        scope = doc["context"].rsplit("\n", 1)[0]  # the whole lines before the cut
        assert all(choice in scope for choice in doc["choices"])  # every choice is an in-scope name
    if os.sys.version_info[:3] == (3, 11, 7):  # the interpreter that built the shipped file
        assert build_documents(n=200, seed=0) == shipped


def run_bad(args: list[str], tmp_path) -> list[str]:
    out = tmp_path / "out"
    result = runner.invoke(app, [*args, "--out", str(out), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))
    shown = lines(result.output)
    assert len(shown) == 1 and shown[0].startswith("error: "), result.output
    return shown


def test_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    (line,) = run_bad(["study", "--tasks", TASK_NAME], tmp_path)
    assert "prunescope[tasks]" in line


def test_broken_yaml_unknown_task_and_hub_task_offline(tmp_path, task_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.yaml").write_text("task: bad\ndataset_path: json\n  : [unclosed\n", encoding="utf-8")
    (line,) = run_bad(["study", "--tasks", "bad", "--tasks-path", str(broken)], tmp_path)
    assert "broken task YAML" in line and "bad.yaml" in line
    invalid = tmp_path / "invalid"
    invalid.mkdir()
    text = TINY_YAML.format(data=task_dir / "tiny.jsonl").replace("multiple_choice", "no_such_type")
    (invalid / "invalid.yaml").write_text(text.replace("tiny_identifier", "invalid_task"), encoding="utf-8")
    (line,) = run_bad(["study", "--tasks", "invalid_task", "--tasks-path", str(invalid)], tmp_path)
    assert "invalid_task" in line
    (line,) = run_bad(["study", "--tasks", "no_such_task_anywhere"], tmp_path)
    assert "unknown task 'no_such_task_anywhere'" in line
    (line,) = run_bad(["evaluate", "demo", "--tasks", "arc_easy"], tmp_path)
    assert "arc_easy" in line and "hub" in line and "offline" in line


def test_sweep_and_evaluate_score_the_same_as_the_study(study, tmp_path):
    out, _ = study
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    column = f"task:{TASK_NAME}:acc"
    # on the CPU like the study, so the scores can be equal
    tasks = ["--tasks", TASK_NAME, "--tasks-limit", str(DOCS), "--no-progress", "--device", "cpu"]
    sweep = tmp_path / "sweep"
    args = ["sweep", "--sparsity", SPARSITY, "--max-tokens", "256", "--out", str(sweep), *tasks]
    run_cli(args)
    points = pd.read_csv(sweep / "results.csv")
    assert sorted(points["variant"]) == ["csr", "masked"]  # the default variants; csr reuses masked's scores
    assert list(points[column]) == [summary.loc["masked", column]] * 2  # the same pruned weights
    assert list(points[f"dense_{column}"]) == [summary.loc["dense", column]] * 2
    flips = f"task:{TASK_NAME}:flips"  # the sweep's flips curve: the same pruned weights as the study's
    assert list(points[flips]) == [summary.loc["masked", flips]] * 2
    assert list(points[f"dense_{flips}"]) == [0.0] * 2
    assert "## Zero-shot tasks vs sparsity" in (sweep / "report.md").read_text()
    assert (sweep / "tasks.png").stat().st_size > 0
    evaluated = tmp_path / "evaluated"
    run_cli(["evaluate", "demo", "--max-tokens", "256", "--out", str(evaluated), *tasks])
    rows = pd.read_csv(evaluated / "tasks.csv").query("metric == 'acc'")
    assert list(rows["variant"]) == ["model"]
    assert rows["value"].iloc[0] == summary.loc["dense", column]  # the offloaded dense model
