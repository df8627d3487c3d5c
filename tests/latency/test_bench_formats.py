"""`prunescope bench` on the tiny model: every format the CPU runs, cold and hot cache, layers and model,
with one copy of the model (pruned in place, restored after)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import OPTForCausalLM

from prunescope.formats import auto
from prunescope.formats.base import SparseLinear
from prunescope.latency import benchmark
from prunescope.latency.variants import known_formats
from tests.helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = [
    *["--tokens", "1,3", "--min-time", "0.001", "--prefill-grid", "1x8"],
    *["--decode-batches", "1", "--decode-tokens", "2", "--no-progress"],
]
# Formats that run on the CPU (semi-structured needs CUDA); bitmask-int8 quantizes, so it is checked against
# its own dequantized weight rather than the masked outputs.
RUNS_ON_CPU = {"dense", "masked", "csr", "bsr", "bitmask", "csr16", "auto", "bitmask-int8"}
# Small enough that each tiny layer (4-8 KiB) is timed on rotated copies, as a large layer is on a real
# cache, rather than evicted before each call.
TINY_LLC = 16 * 1024


@pytest.fixture
def tiny_cache(monkeypatch):
    for module in (benchmark, auto):
        monkeypatch.setattr(module, "last_level_cache", lambda device=None: TINY_LLC)


def _bench(model_dir, out, *args: str) -> dict:
    run_cli(["bench", "--model", model_dir, *SMALL, "--out", out, *args])
    return json.loads((out / "latency.json").read_text())


@pytest.mark.parametrize("cache", ["cold", "hot"])
def test_bench_times_every_format_cold_and_hot(cache, tiny_model_dir, tmp_path, tiny_cache, monkeypatch):
    cloned: list[str] = []
    clone = SparseLinear.clone

    def counted(self):
        cloned.append(self.format_name)
        return clone(self)

    monkeypatch.setattr(SparseLinear, "clone", counted)
    data = _bench(tiny_model_dir, tmp_path / "b", "--formats", ",".join(known_formats()), "--cache", cache)
    rows = data["layers"] + data["model"]
    assert {r["format"] for r in rows} == set(known_formats())
    for row in rows:
        if row["format"] in RUNS_ON_CPU:
            assert row["status"] == "ok", (row["format"], row["status"])
        elif row["format"] == "semi-structured":
            assert row["status"].startswith("unsupported: 2:4 semi-structured kernels need CUDA")
    # cold: every sparse format (csr and bsr hold torch sparse tensors) is timed on copies of itself
    if cache == "cold":
        assert {"csr", "bsr", "bitmask", "csr16"} <= set(cloned)
    else:
        assert not cloned


def _tensors_outside(model: torch.nn.Module, layers: list[str]) -> set[int]:
    named = [*model.named_parameters(), *model.named_buffers()]
    return {id(t) for name, t in named if not any(name.startswith(f"{layer}.") for layer in layers)}


def test_bench_prunes_its_one_model_copy_in_place_and_restores_it(tiny_model_dir, tmp_path, monkeypatch):
    seen = {}
    model_variants = benchmark._model_variants

    def spy(subject):
        seen["subject"], seen["variants"] = subject, model_variants(subject)
        return seen["variants"]

    monkeypatch.setattr(benchmark, "_model_variants", spy)
    _bench(tiny_model_dir, tmp_path / "b", "--formats", "masked,csr,bitmask", "--sparsity", "0.5")
    subject, variants = seen["subject"], seen["variants"]
    model, names = subject.pruned_model, subject.names
    assert variants["masked"] is model
    # every variant holds the model's own tensors outside the pruned layers: no second copy of the model
    shared = _tensors_outside(model, names)
    assert shared and all(_tensors_outside(v, names) == shared for v in variants.values())
    # the dense baseline's layers are the checkpoint's, and the model is dense again after the bench
    reference = OPTForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for name in names:
        dense = reference.get_submodule(name).weight
        assert torch.equal(variants["dense"].get_submodule(name).weight, dense)
        assert torch.equal(model.get_submodule(name).weight, dense)
