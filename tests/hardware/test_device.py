"""Device and dtype decisions, loading placement, memory bookkeeping, the one-line out-of-memory error,
the context-length helper and the size units: all on the CPU, a GPU faked by monkeypatching torch.cuda."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import typer
from typer.testing import CliRunner

from prunescope import device as dev
from prunescope.errors import PrunescopeError
from prunescope.models import FALLBACK_CONTEXT, context_length
from prunescope.util import memory, units

GPUS = {  # name, compute capability, native bf16
    "h200": ("NVIDIA H200", (9, 0)),
    "a100": ("NVIDIA A100-SXM4-80GB", (8, 0)),
    "t4": ("Tesla T4", (7, 5)),
}


@pytest.fixture
def fake_gpu(monkeypatch):
    """fake_gpu("t4") makes torch.cuda report that GPU (one of it) without touching a real one."""

    def install(kind: str, count: int = 1):
        name, capability = GPUS[kind]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
        # Recent torch counts emulation unless told not to: a T4 says True by default.
        monkeypatch.setattr(
            torch.cuda,
            "is_bf16_supported",
            lambda including_emulation=True: including_emulation or capability[0] >= 8,
        )
        monkeypatch.setattr(torch.version, "hip", None, raising=False)

    return install


# -- device -------------------------------------------------------------------------------------------


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch, fake_gpu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    assert dev.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.resolve_device("auto") == torch.device("mps")
    fake_gpu("t4")
    assert dev.resolve_device("auto") == torch.device("cuda")
    assert dev.resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(PrunescopeError, match="1 CUDA device"):
        dev.resolve_device("cuda:3")


def test_absent_or_unknown_device_is_one_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    with pytest.raises(PrunescopeError, match="not available"):
        dev.resolve_device("cuda")
    with pytest.raises(PrunescopeError, match="not available"):
        dev.resolve_device("mps")
    with pytest.raises(PrunescopeError, match="unknown device"):
        dev.resolve_device("tpu7")
    from prunescope import models

    assert models.resolve_device is dev.resolve_device and models.resolve_dtype is dev.resolve_dtype


# -- dtype ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gpu, stored, expected, reason",
    [
        ("h200", "bfloat16", torch.bfloat16, "bfloat16: checkpoint dtype, native on NVIDIA H200 (cc 9.0)"),
        ("a100", "bfloat16", torch.bfloat16, "bfloat16: checkpoint dtype, native on"),
        (
            "t4",
            "bfloat16",
            torch.float16,
            "float16: bfloat16 checkpoint, bf16 not native on Tesla T4 (cc 7.5)",
        ),
        ("t4", "float16", torch.float16, "float16: checkpoint dtype, native on Tesla T4 (cc 7.5)"),
        ("h200", "float16", torch.float16, "float16: checkpoint dtype"),
        (
            "h200",
            "float32",
            torch.float16,
            "float16: half precision on NVIDIA H200 (cc 9.0) (float32 checkpoint)",
        ),
        ("t4", None, torch.float16, "(unlabelled checkpoint)"),
    ],
)
def test_auto_dtype_follows_the_checkpoint_where_native(fake_gpu, gpu, stored, expected, reason):
    fake_gpu(gpu)
    from transformers import LlamaConfig

    config = LlamaConfig(dtype=stored) if stored else LlamaConfig()
    if stored is None:
        config.dtype = None
    dtype, why = dev.choose_dtype("auto", torch.device("cuda"), config)
    assert dtype == expected and reason in why, why
    assert dev.resolve_dtype("auto", torch.device("cuda"), config) == expected
    # A config as a dict (config.json read by hand) and transformers 4's torch_dtype key read alike.
    if stored:
        assert dev.choose_dtype("auto", torch.device("cuda", 0), {"torch_dtype": stored})[0] == expected


def test_auto_dtype_on_cpu_and_mps():
    dtype, why = dev.choose_dtype("auto", torch.device("cpu"), {"dtype": "bfloat16"})
    assert dtype == torch.float32 and why.startswith("float32: CPU")
    assert dev.choose_dtype("auto", torch.device("mps"), {"dtype": "bfloat16"})[0] == torch.float16


def test_explicit_dtype_is_used_as_asked_and_checked():
    dtype, why = dev.choose_dtype("bfloat16", torch.device("cpu"))
    assert dtype == torch.bfloat16 and why == "bfloat16: requested (--dtype bfloat16)"
    with pytest.raises(PrunescopeError, match="unknown dtype 'float64'"):
        dev.choose_dtype("float64", torch.device("cpu"))


def test_checkpoint_dtype_reads_every_spelling():
    assert dev.checkpoint_dtype({"dtype": "torch.bfloat16"}) == torch.bfloat16
    assert dev.checkpoint_dtype({"torch_dtype": "float16"}) == torch.float16
    assert dev.checkpoint_dtype({"dtype": torch.float32}) == torch.float32
    assert dev.checkpoint_dtype({"dtype": "float64"}) is None
    assert dev.checkpoint_dtype(None) is None


def test_demo_loads_as_before_on_the_cpu():
    from prunescope.models import load_model

    loaded = load_model("demo", device="cpu")
    assert loaded.device == torch.device("cpu") and loaded.dtype == torch.float32
    assert loaded.dtype_reason.startswith("float32: CPU")
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert not hasattr(loaded.model, "hf_device_map")  # no device_map on the CPU path
    assert loaded.context_length == 256


def test_cuda_loads_straight_onto_the_device(monkeypatch, fake_gpu, tiny_model_dir):
    """On CUDA from_pretrained gets a device_map (no host copy) and the dtype the rule chose; the model is
    not moved afterwards. The load itself is faked: the weights stay on the CPU here."""
    from transformers import AutoModelForCausalLM

    from prunescope import models

    fake_gpu("h200")
    real = AutoModelForCausalLM.from_pretrained
    seen = {}

    def recording(path, **kwargs):
        seen.update(kwargs)
        return real(path, dtype=kwargs["dtype"])

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording)
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a) or self)
    loaded = models.load_model(str(tiny_model_dir), device="cuda")
    assert seen["device_map"] == {"": 0} and seen["low_cpu_mem_usage"] is True
    assert seen["dtype"] == torch.float16 and "half precision on NVIDIA H200" in loaded.dtype_reason
    assert loaded.device == torch.device("cuda") and not moved


# -- context length -----------------------------------------------------------------------------------


def test_context_length_reads_each_config_kind():
    from transformers import GPT2Config, LlamaConfig, OPTConfig

    assert context_length(OPTConfig(max_position_embeddings=256)) == 256
    assert context_length(LlamaConfig(max_position_embeddings=4096)) == 4096
    assert context_length(GPT2Config(n_positions=1024)) == 1024
    assert context_length({"seq_length": 8192}) == 8192
    assert context_length({"text_config": {"max_position_embeddings": 32768}}) == 32768
    assert context_length({}) is None and context_length(None) is None
    assert context_length({}, FALLBACK_CONTEXT) == 2048
    assert context_length({"max_position_embeddings": 0, "n_positions": 128}) == 128

    class WithConfig:
        config = OPTConfig(max_position_embeddings=64)

    assert context_length(WithConfig()) == 64


# -- units ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2GB", 2 * 10**9),
        ("200MB", 200 * 10**6),
        ("1.5 gb", 1_500_000_000),
        ("2GiB", 2 * 2**30),
        ("512 KiB", 512 * 2**10),
        ("32768K", 32 * 2**20),  # sysfs: bare letters are binary
        ("480M", 480 * 2**20),
        ("1e9", 10**9),
        ("1048576", 2**20),
        (4096, 4096),
    ],
)
def test_parse_size_one_unit_rule(text, expected):
    assert units.parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "", "0", "-1GB", "GB", "2XB", "1EB"])
def test_parse_size_refuses_in_one_line(text):
    with pytest.raises(PrunescopeError, match="cannot read size"):
        units.parse_size(text)


def test_size_text_reads_back():
    assert units.size_text(999) == "999 B"
    assert units.size_text(2 * 10**9) == "2.00 GB"
    assert units.parse_size(units.size_text(2 * 10**9).replace(",", "")) == 2 * 10**9


# -- memory ---------------------------------------------------------------------------------------------


def test_peak_memory_without_cuda_has_rss_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    peak = memory.peak_memory()
    assert set(peak) == {"peak_rss_bytes"} and peak["peak_rss_bytes"] > 10**6


def test_peak_memory_with_cuda_in_use(monkeypatch, fake_gpu):
    fake_gpu("t4", count=2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda i: 1000 + i)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda i: 2000 + i)
    peak = memory.peak_memory()
    assert peak["cuda_max_allocated_bytes"] == {"cuda:0": 1000, "cuda:1": 1001}
    assert peak["cuda_max_reserved_bytes"]["cuda:1"] == 2001


def _oom_app(error: BaseException, out):
    """A stub command that starts writing its output folder, then runs out of memory."""
    from prunescope.commands.common import user_errors
    from prunescope.report.output import atomic_directory

    app = typer.Typer()

    @app.command()
    @user_errors
    def stub() -> None:
        with atomic_directory(out) as tmp:
            (tmp / "half.json").write_text("{")
            raise error

    return app


def _cuda_oom(text: str) -> BaseException:
    return torch.cuda.OutOfMemoryError(text)  # constructible on a CPU-only build


def test_cuda_out_of_memory_is_one_line_exit_2_nothing_written(monkeypatch, fake_gpu, tmp_path):
    fake_gpu("t4")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (1 * 10**9, 15 * 10**9))
    error = _cuda_oom(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 14.75 GiB of which "
        "1.2 GiB is free."
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(_oom_app(error, out), [])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines == [
        "error: out of memory on cuda:0 (14.00 GB in use of 15.00 GB): lower --batch-size, --calib-samples "
        "or --max-tokens, or use --dtype float16"
    ], result.output
    assert "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "error, where",
    [
        (MemoryError(), "out of memory on cpu ("),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you "
                "tried to allocate 68719476736 bytes."
            ),
            "out of memory on cpu (",
        ),
        (
            RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1 MB)"),
            "out of memory on mps",
        ),
    ],
)
def test_other_out_of_memory_errors_are_one_line(error, where, tmp_path):
    result = CliRunner().invoke(_oom_app(error, tmp_path / "out"), [])
    assert result.exit_code == 2 and where in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_other_runtime_errors_still_propagate(tmp_path):
    result = CliRunner().invoke(_oom_app(RuntimeError("shape mismatch"), tmp_path / "out"), [])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
    assert not memory.is_out_of_memory(RuntimeError("shape mismatch"))
    assert memory.is_out_of_memory(_cuda_oom("whatever"))


# -- evaluate / offload placement -----------------------------------------------------------------------


def test_max_memory_map_per_device(monkeypatch, fake_gpu):
    from prunescope.evaluation.offload import max_memory_map

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert max_memory_map(10**9, torch.device("cpu")) == {"cpu": 10**9}
    budget = max_memory_map(None, torch.device("cpu"))
    assert set(budget) == {"cpu"} and budget["cpu"] > 0  # accelerate's own: available RAM
    fake_gpu("t4", count=2)
    assert max_memory_map(None, torch.device("cuda")) is None  # accelerate balances over every GPU
    assert max_memory_map(10**9, torch.device("cuda")) == {0: 10**9, 1: 10**9, "cpu": 10**9}
    assert max_memory_map(10**9, torch.device("cuda", 1)) == {1: 10**9, "cpu": 10**9}
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "get_max_memory", lambda: {0: 14, 1: 15, "cpu": 12})
    assert max_memory_map(None, torch.device("cuda", 1)) == {1: 15, "cpu": 12}
    assert max_memory_map(None, torch.device("cpu")) == {"cpu": 12}  # the GPUs stay out of a CPU run


def test_inputs_go_where_the_embedding_runs():
    from prunescope.evaluation.offload import OffloadedModel
    from tests.helpers import tiny_opt

    model = tiny_opt()
    assert dev.input_device(model) == torch.device("cpu")
    wrapped = OffloadedModel(model)
    assert next(wrapped.parameters()).device == torch.device("cpu")

    class Hook:
        execution_device = 0  # what accelerate's hook on an offloaded embedding names

    model.get_input_embeddings()._hf_hook = Hook()
    assert dev.input_device(model) == torch.device("cuda", 0)
    assert dev.input_device(OffloadedModel(model, torch.device("cpu"))) == torch.device("cuda", 0)
    del model.get_input_embeddings()._hf_hook
    model.get_input_embeddings().weight = torch.nn.Parameter(torch.empty(0, device="meta"))
    model.hf_device_map = {"model.decoder.embed_tokens": "disk", "model.decoder.layers": 1}
    assert dev.input_device(model) == torch.device("cuda", 1)


def test_evaluate_takes_device_and_dtype(tmp_path):
    from prunescope.cli import app

    runner = CliRunner()
    out = tmp_path / "evaluated"
    args = ["evaluate", "demo", "--max-tokens", "64", "--seqlen", "16", "--no-progress"]
    result = runner.invoke(app, [*args, "--device", "cpu", "--max-memory", "1GiB", "--out", str(out)])
    assert result.exit_code == 0, result.output
    import json

    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["device"] == "cpu" and evaluation["dtype_reason"].startswith("float32: CPU")
    if not torch.cuda.is_available():
        result = runner.invoke(app, [*args, "--device", "cuda"])
        assert result.exit_code == 2 and "not available" in result.output
    result = runner.invoke(app, [*args, "--device", "cpu", "--dtype", "float64"])
    assert result.exit_code == 2 and "unknown dtype" in result.output


# -- optional packages stay lazy -------------------------------------------------------------------------


@pytest.mark.slow
def test_the_cli_imports_no_optional_package():
    """A GPU host may lack datasets and lm-eval (optional there) and pydantic (no longer declared)."""
    code = (
        "import sys, prunescope.cli, prunescope.device, prunescope.util.memory; "
        "print(sorted(m for m in ('datasets', 'lm_eval', 'pydantic') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
