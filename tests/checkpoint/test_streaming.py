"""A checkpoint several times larger than what each command may use: inspect, prune and evaluate it in a
subprocess whose peak memory is measured.

How memory is measured (`prunescope.checkpoint.memwatch`): the child samples its own anonymous resident
memory (RssAnon in /proc/self/status: heap and tensors, what cannot be dropped) every millisecond and
reports the peak and the value just before the command (after importing torch/transformers). We use
anonymous memory rather than ru_maxrss because accelerate's disk offload reads safetensors through mmap,
whose file pages count in RSS while mapped but belong to the page cache. Our own streaming code reads with
plain file reads, so its VmHWM is honest too and is checked as well.

The test process itself never holds the model: the checkpoint is written tensor by tensor.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig

from prunescope.checkpoint.synthetic import write_random_checkpoint

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")

# ~330 MB float32: 4 Llama blocks of 50 MB (the prunable part) plus untied 64 MB embedding and lm_head.
CONFIG = dict(
    vocab_size=16000,
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)


def _measured(report: Path, *args: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", "prunescope.checkpoint.memwatch", str(report), "--", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(report.read_text())
    result["anon"] = result["peak_anon"] - result["baseline_anon"]
    result["hwm"] = result["vm_hwm"] - result["baseline_rss"]
    result["stdout"] = done.stdout
    return result


@pytest.fixture
def workdir(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)  # ~1 GB of checkpoints: do not keep them among old tmp dirs


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_inspect_prune_evaluate_within_bounded_memory(workdir) -> None:
    tmp_path = workdir
    source = tmp_path / "model"
    size = write_random_checkpoint(source, LlamaConfig(**CONFIG), max_shard_bytes=100 * 10**6)
    assert size > 300 * 10**6

    inspected = _measured(
        tmp_path / "inspect.json", "inspect", str(source), "--zeros", "--out", str(tmp_path / "table")
    )
    summary = json.loads((tmp_path / "table" / "summary.json").read_text())
    assert summary["stored_bytes"] == size and summary["sparsity"] < 1e-6
    assert inspected["anon"] < 0.2 * size and inspected["hwm"] < 0.25 * size

    out = tmp_path / "pruned"
    pruned = _measured(
        tmp_path / "prune.json",
        "prune",
        str(source),
        "--out",
        str(out),
        "--sparsity",
        "0.5",
        "--format",
        "both",
        "--no-progress",
    )
    record = json.loads((out / "prune.json").read_text())
    assert record["pruned_layer_sparsity"] == pytest.approx(0.5, abs=1e-6)
    # One 11.5 MB MLP weight is the largest prunable tensor; the bound is set by row blocks and scratch.
    assert pruned["anon"] < 0.4 * size and pruned["hwm"] < 0.45 * size
    assert record["outputs"]["sparse"]["bytes"] < record["outputs"]["hf"]["bytes"]

    evaluated = _measured(
        tmp_path / "eval.json",
        "evaluate",
        str(out / "hf"),
        "--reference",
        str(source),
        "--max-memory",
        "40MB",
        "--max-tokens",
        "256",
        "--seqlen",
        "64",
        "--batch-size",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path / "eval"),
    )
    behaviour = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert 0.0 < behaviour["behaviour"]["kl_mean"] and behaviour["behaviour"]["positions"] == 256
    assert behaviour["reference_behaviour"]["top1_agreement"] == 1.0
    assert "disk" in behaviour["placement"]["model"]
    # Evaluation holds the resident set (max-memory), one offloaded module at a time (here the 64 MB
    # embedding or lm_head is the largest) and one batch of logits with the metrics' temporaries.
    assert evaluated["anon"] < 0.4 * size
    print(
        {
            k: {"anon_mb": r["anon"] / 1e6, "hwm_mb": r["hwm"] / 1e6, "s": r["seconds"]}
            for k, r in (("inspect", inspected), ("prune", pruned), ("evaluate", evaluated))
        },
        size / 1e6,
    )
