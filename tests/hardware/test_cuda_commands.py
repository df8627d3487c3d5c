"""Device, dtype, loading, memory and `evaluate` on a real CUDA GPU (skipped where there is none).

The CPU-side rules are tested with a faked GPU in test_device.py; these check the same things on the
hardware: where the weights land, which dtype `auto` picks, that `evaluate` runs a model whole on the GPU
and offloaded, that a real out-of-memory error is one line, and that peak GPU memory is recorded.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

runner = CliRunner()


def test_demo_loads_straight_onto_the_gpu():
    from prunescope.models import load_model

    loaded = load_model("demo", device="cuda")
    devices = {p.device.type for p in loaded.model.parameters()} | {
        b.device.type for b in loaded.model.buffers()
    }
    assert devices == {"cuda"}
    assert loaded.dtype == torch.float16  # the demo checkpoint is float16, native on every CUDA GPU
    assert "checkpoint dtype, native on" in loaded.dtype_reason
    assert getattr(loaded.model, "hf_device_map", None) == {"": torch.cuda.current_device()}


def test_auto_dtype_of_a_bf16_checkpoint_matches_the_hardware():
    from prunescope.device import choose_dtype

    major, _ = torch.cuda.get_device_capability()
    dtype, reason = choose_dtype("auto", torch.device("cuda"), {"dtype": "bfloat16"})
    assert dtype == (torch.bfloat16 if major >= 8 else torch.float16), reason
    assert torch.cuda.get_device_name() in reason


def test_peak_memory_records_the_gpu():
    from prunescope.util.memory import peak_memory

    torch.ones(1024, 1024, device="cuda")
    peak = peak_memory()
    assert peak["cuda_max_allocated_bytes"][f"cuda:{torch.cuda.current_device()}"] >= 4 * 2**20


def _evaluate(tmp_path, name, *extra):
    from prunescope.cli import app

    out = tmp_path / name
    args = ["evaluate", "demo", "--max-tokens", "512", "--seqlen", "64", "--no-progress", "--out", str(out)]
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "evaluation.json").read_text())


def test_evaluate_on_the_gpu_matches_the_cpu(tmp_path):
    cpu = _evaluate(tmp_path, "cpu", "--device", "cpu")
    whole = _evaluate(tmp_path, "whole", "--device", "cuda")  # fits: moved whole, no hooks
    assert whole["device"].startswith("cuda") and set(whole["placement"]["model"]) == {"cuda:0"}
    reference = cpu["behaviour"]["perplexity"]
    assert abs(whole["behaviour"]["perplexity"] / reference - 1) < 0.005
    # A cap below the model's size: part of it on the CPU or disk, accelerate's hooks move the inputs.
    capped = _evaluate(tmp_path, "capped", "--device", "cuda", "--max-memory", "4MB")
    assert set(capped["placement"]["model"]) - {"cuda:0"}, capped["placement"]
    assert abs(capped["behaviour"]["perplexity"] / reference - 1) < 0.005
    exact = _evaluate(tmp_path, "fp32", "--device", "cuda", "--dtype", "float32")
    assert abs(exact["behaviour"]["perplexity"] / reference - 1) < 1e-4


def test_a_real_out_of_memory_error_is_one_line(tmp_path):
    import typer

    from prunescope.commands.common import user_errors

    app = typer.Typer()

    @app.command()
    @user_errors
    def hog() -> None:
        free, total = torch.cuda.mem_get_info()
        torch.empty(int(total * 2), dtype=torch.uint8, device="cuda")

    result = runner.invoke(app, [])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: out of memory on cuda:"), result.output
    assert "--batch-size" in lines[0]
