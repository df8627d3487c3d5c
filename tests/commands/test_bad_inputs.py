"""Every command, every kind of bad input: one line naming what is wrong (and which file), exit 2, nothing
written. Then the good path of `demo` in every command that takes a model.

The table is the contract: a row is (command and arguments, what the one line must say). Placeholders in
braces name the shared fixtures below: a tiny checkpoint folder, a truncated copy, a binary file, ...
Validation fails before any model is loaded wherever the input allows it, which keeps the table fast.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from prunescope.cli import COMMANDS, app
from tests.helpers import run_cli

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tiny_model_dir, tmp_path_factory) -> dict[str, str]:
    """The bad (and good) inputs the table refers to, made once."""
    root = tmp_path_factory.mktemp("bad-inputs")
    truncated = root / "truncated"
    shutil.copytree(tiny_model_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    no_config = root / "no-config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    bad_config = root / "bad-config"
    shutil.copytree(tiny_model_dir, bad_config)
    (bad_config / "config.json").write_text("{ not json", encoding="utf-8")
    bad_tokenizer = root / "bad-tokenizer"
    shutil.copytree(tiny_model_dir, bad_tokenizer)
    (bad_tokenizer / "tokenizer.json").write_text("{ not json", encoding="utf-8")
    not_safetensors = root / "not-safetensors"
    shutil.copytree(tiny_model_dir, not_safetensors)
    (not_safetensors / "model.safetensors").write_bytes(b"\xff" * 64)
    binary = root / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 8)
    empty = root / "empty.txt"
    empty.write_text("\n\n  \n", encoding="utf-8")
    bad_jsonl = root / "bad.jsonl"
    bad_jsonl.write_text('{"text": "fine"}\n{oops\n', encoding="utf-8")
    text = root / "notes.txt"
    text.write_text("Some words.\n", encoding="utf-8")
    return {
        "tiny": str(tiny_model_dir),
        "truncated": str(truncated),
        "no_config": str(no_config),
        "bad_config": str(bad_config),
        "bad_tokenizer": str(bad_tokenizer),
        "not_safetensors": str(not_safetensors),
        "binary": str(binary),
        "empty": str(empty),
        "bad_jsonl": str(bad_jsonl),
        "text": str(text),
        "missing": str(root / "no" / "such" / "thing"),
        "missing_txt": str(root / "missing.txt"),
    }


TINY = ["--model", "{tiny}"]
FAST = ["--max-tokens", "64", "--seqlen", "16", "--no-progress"]
WANDA = ["--method", "wanda", "--calib-samples", "2", "--calib-seqlen", "16"]

# (command line, fragment of the one-line message). {out} is a fresh path that must stay absent;
# {existing} is an existing folder whose content must stay as it was.
CASES = [
    # study: model folder, weights, config, tokenizer
    (["study", "--model", "{missing}"], "does not exist"),
    (["study", "--model", "{truncated}"], "model.safetensors is truncated"),
    (["study", "--model", "{no_config}"], "no config.json"),
    (["study", "--model", "{bad_config}"], "config.json"),
    (["study", "--model", "{bad_tokenizer}"], "cannot load the tokenizer"),
    (["study", "--model", "{not_safetensors}"], "is not a safetensors file"),
    (["study", "--model", "{text}"], "is a file"),
    (["study", "--model", "nobody/no-such-model-xyz"], "--model demo"),
    # study: corpus, calibration
    (["study", *TINY, "--corpus", "{binary}"], "binary.txt' is not UTF-8"),
    (["study", *TINY, "--corpus", "{missing_txt}"], "does not exist"),
    (["study", *TINY, "--corpus", "{empty}"], "holds no text"),
    (["study", *TINY, "--corpus", "{bad_jsonl}"], "bad.jsonl:2: not valid JSON"),
    (["study", *TINY, *FAST, *WANDA, "--calibration", "{binary}"], "binary.txt' is not UTF-8"),
    (["study", *TINY, *WANDA, "--calibration", "{missing_txt}"], "does not exist"),
    # study: numeric and named options, output folder
    (["study", *TINY, "--sparsity", "1.5"], "sparsity must be in"),
    (["study", *TINY, "--sparsity", "1.0"], "sparsity must be in"),
    (["study", *TINY, "--sparsity", "-0.2"], "sparsity must be in"),
    (["study", *TINY, "--method", "nosuch"], "nosuch"),
    (["study", *TINY, "--pattern", "5:4"], "5:4"),
    (["study", *TINY, "--variants", "dense,magic"], "unknown variant"),
    (["study", *TINY, "--batch-size", "0"], "batch"),
    (["study", *TINY, "--max-tokens", "1"], "max"),
    (["study", *TINY, "--seqlen", "1"], "seqlen"),
    (["study", *TINY, "--seqlen", "100000"], "exceeds the model's context"),
    (["study", *TINY, "--dtype", "float64"], "unknown dtype"),
    (["study", *TINY, "--device", "nonsense"], "unknown device"),
    (
        ["study", *TINY, "--device", "cpu", "--dtype", "float16"],
        "does not support float16",
    ),  # CPU CSR: no half
    pytest.param(
        ["study", *TINY, "--device", "cuda"],
        "not available",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="asserts CUDA is absent"),
    ),
    (["study", *TINY, "--include", "*nothing*"], "no prunable layer matched"),
    (["study", *TINY, "--out", "{existing}"], "--overwrite"),
    (["study", *TINY, "--out", "{text}/results"], "is a file"),
    (["study", *TINY, "--sparsity", "abc"], "Invalid value for '--sparsity'"),  # the parser's own errors
    (["study", *TINY, "--no-such-option"], "No such option"),
    # sweep
    (["sweep", "--model", "{truncated}"], "is truncated"),
    (["sweep", *TINY, "--sparsity", "0.1:x"], "sparsit"),
    (["sweep", *TINY, "--sparsity", "1.2"], "sparsity"),
    (["sweep", *TINY, "--method", "nosuch"], "nosuch"),
    (["sweep", *TINY, "--thresholds", "high"], "--thresholds"),
    (["sweep", *TINY, "--corpus", "{binary}"], "not UTF-8"),
    (["sweep", *TINY, "--variants", "magic"], "magic"),
    (["sweep", *TINY, "--dtype", "float64"], "unknown dtype"),
    # bench
    (["bench", "--model", "{truncated}"], "is truncated"),
    (["bench", "--model", "{missing}"], "does not exist"),
    (["bench", *TINY, "--tokens", "0"], "--tokens"),
    (["bench", *TINY, "--prefill-grid", "4by128"], "BATCHxSEQLEN"),
    (["bench", *TINY, "--decode-batches", "x"], "--decode-batches"),
    (["bench", *TINY, "--min-time", "0"], "--min-time"),
    (["bench", *TINY, "--threads", "0"], "--threads"),
    (["bench", *TINY, "--block-size", "0"], "--block-size"),
    (["bench", *TINY, "--formats", "magic"], "magic"),
    (["bench", *TINY, "--sparsity", "-0.1"], "sparsity"),
    (["bench", *TINY, "--out", "{existing}"], "--overwrite"),
    # inspect
    (["inspect", "{missing}"], "does not exist"),
    (["inspect", "{truncated}"], "is truncated"),
    (["inspect", "{no_config}"], "no config.json"),
    (["inspect", "{not_safetensors}"], "is not a safetensors file"),
    (["inspect", "{text}"], "is a file"),
    (["inspect", "{tiny}", "--context", "0"], "--context"),
    (["inspect", "nobody/no-such-model-xyz"], "Hugging Face hub"),
    (["inspect", "{tiny}", "--out", "{existing}"], "--overwrite"),
    # prune
    (["prune", "{missing}", "--out", "{out}"], "does not exist"),
    (["prune", "{truncated}", "--out", "{out}", "--no-progress"], "is truncated"),
    (["prune", "{no_config}", "--out", "{out}"], "no config.json"),
    (["prune", "{tiny}", "--out", "{out}", "--sparsity", "2"], "sparsity must be in"),
    (["prune", "{tiny}", "--out", "{out}", "--shard-size", "lots"], "cannot read size"),
    (["prune", "{tiny}", "--out", "{out}", "--format", "zip"], "zip"),
    (["prune", "{tiny}", "--out", "{out}", "--include", "*nothing*"], "no prunable layer matched"),
    (["prune", "{tiny}", "--out", "{out}", *WANDA, "--calibration", "{binary}"], "not UTF-8"),
    (["prune", "{bad_tokenizer}", "--out", "{out}", *WANDA], "tokenizer"),
    (["prune", "{tiny}", "--out", "{existing}"], "--overwrite"),
    (["prune", "nobody/no-such-model-xyz", "--out", "{out}"], "Hugging Face hub"),
    # evaluate
    (["evaluate", "{missing}"], "does not exist"),
    (["evaluate", "nobody/no-such-model-xyz"], "nobody/no-such-model-xyz"),
    (["evaluate", "{truncated}"], "is truncated"),
    (["evaluate", "{tiny}", "--reference", "{missing}"], "does not exist"),
    (["evaluate", "{tiny}", "--corpus", "{binary}", "--out", "{out}"], "not UTF-8"),
    (["evaluate", "{tiny}", "--max-memory", "lots"], "cannot read size"),
    (["evaluate", "{tiny}", "--batch-size", "0"], "--batch-size"),
    (["evaluate", "{tiny}", "--dtype", "float64"], "unknown dtype"),
    (["evaluate", "{bad_tokenizer}"], "tokenizer"),
    (["evaluate", "{tiny}", "--out", "{existing}"], "--overwrite"),
    # sensitivity
    (["sensitivity", "--model", "{truncated}"], "is truncated"),
    (["sensitivity", *TINY, "--corpus", "{binary}"], "not UTF-8"),
    (["sensitivity", *TINY, "--sparsity", "1.5"], "sparsity must be in"),
    (["sensitivity", *TINY, "--by", "nosuch"], "nosuch"),
    (["sensitivity", *TINY, "--out", "{existing}"], "--overwrite"),
    (["stud"], "No such command 'stud'"),
    # train-demo
    (["train-demo", "--minutes", "0", "--out", "{out}"], "--minutes"),
    (["train-demo", "--threads", "0", "--out", "{out}"], "--threads"),
    (["train-demo", "--out", "{text}"], "is a file"),
]


def _argv(case) -> list[str]:
    """A case's command line, from a plain (args, message) pair or a pytest.param of one."""
    return (case.values if hasattr(case, "values") else case)[0]


def _ids() -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for args in map(_argv, CASES):
        key = "-".join([args[0], *(a.strip("-{}") for a in args[1:3])])
        seen[key] = seen.get(key, 0) + 1
        ids.append(key if seen[key] == 1 else f"{key}-{seen[key]}")
    return ids


def test_the_table_covers_every_command():
    assert set(COMMANDS) <= {_argv(case)[0] for case in CASES}


@pytest.mark.parametrize("args, message", CASES, ids=_ids())
def test_bad_input_is_one_line_exit_2_nothing_written(args, message, files, tmp_path):
    out = tmp_path / "out"
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("old", encoding="utf-8")
    names = {**files, "out": str(out), "existing": str(existing)}
    argv = [a.format(**names) for a in args]
    if "--out" not in argv and args[0] in ("study", "sweep", "bench", "sensitivity"):
        argv += ["--out", str(out)]  # their default folder is under the working directory
    result = runner.invoke(app, argv)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert not out.exists()
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert (existing / "keep.txt").read_text(encoding="utf-8") == "old"
    assert not list(tmp_path.glob(".*tmp*"))


def test_demo_works_in_inspect_and_prune(tmp_path):
    result = run_cli(["inspect", "demo", "--out", str(tmp_path / "inspected")])
    summary = json.loads((tmp_path / "inspected" / "summary.json").read_text())
    assert summary["params"] == 4_274_176  # the demo model's parameter count (report of `study` agrees)
    out = tmp_path / "pruned"
    # Layer scope: the exact per-layer count is cheap; the global threshold: checkpoint/test_streaming.py.
    args = ["prune", "demo", "--sparsity", "0.5", "--scope", "layer", "--out", str(out), "--no-progress"]
    result = run_cli(args)
    record = json.loads((out / "prune.json").read_text())
    assert record["source"] == "demo" and abs(record["pruned_layer_sparsity"] - 0.5) < 1e-6
    # The pruned copy reads back through the same resolver, as a local folder.
    result = run_cli(["inspect", str(out), "--zeros"])
    assert "prunable-layer sparsity 0.5000" in result.output


def test_demo_works_in_evaluate(tmp_path):
    out = tmp_path / "evaluated"
    args = ["evaluate", "demo", "--max-tokens", "64", "--seqlen", "16", "--no-progress", "--out", str(out)]
    run_cli(args)
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["model"] == "demo" and evaluation["behaviour"]["perplexity"] > 1


def test_demo_works_in_bench(tmp_path):
    out = tmp_path / "bench"
    # 2:4 needs no global threshold over the 4M weights: the cheapest pruning there is.
    args = ["bench", "--model", "demo", "--pattern", "2:4", "--layers-only", "--tokens", "1"]
    args += ["--formats", "dense,masked"]
    args += ["--min-time", "0.001", "--no-progress", "--out", str(out)]
    result = run_cli(args)
    assert (out / "latency.json").is_file()
    # --no-progress silences the step lines ("pruning in place", "timing ...") like the bars elsewhere.
    assert "pruning" not in result.output and "timing" not in result.output


def test_long_documents_raise_no_library_warning():
    """Tokenizing documents longer than the model context (cut into windows afterwards) must not print
    transformers' "sequence length is longer than the specified maximum" warning in the middle of a sweep.
    transformers records in `deprecation_warnings` that it printed it; the key stays absent."""
    from transformers import AutoTokenizer

    from prunescope.demo.corpus import DEMO_MODEL_DIR
    from prunescope.evaluation.corpus import tokenize_windows
    from prunescope.pruning.calibration import calibration_samples

    key = "sequence-length-is-longer-than-the-specified-maximum"
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    long_text = "total = total + value\n" * 400  # well over the demo's 256-token context
    assert len(tokenizer(long_text, verbose=False)["input_ids"]) > tokenizer.model_max_length
    windows = tokenize_windows(tokenizer, [long_text], seqlen=64)
    assert (
        sum(len(w) for w in windows) > tokenizer.model_max_length
        and key not in tokenizer.deprecation_warnings
    )
    calibration_samples(tokenizer, None, "demo", n=2, seqlen=64)
    assert key not in tokenizer.deprecation_warnings
    tokenizer(long_text)  # the check itself: an unsilenced call does record it
    assert tokenizer.deprecation_warnings.get(key)
