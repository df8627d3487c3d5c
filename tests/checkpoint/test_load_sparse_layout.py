"""A checkpoint in the sparse layout (`prune --format sparse`) loads wherever a model folder is accepted:
`load_model` (so `study --model`) and `evaluate` (model or reference) rebuild it dense, exactly as the hf
layout of the same prune loads; a manifest that disagrees with its tensors is one line, exit 2."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from prunescope.checkpoint import read_manifest
from prunescope.checkpoint.sparse_load import load_sparse_layout
from prunescope.cli import app
from prunescope.errors import PrunescopeError
from prunescope.evaluation.corpus import DEMO_CORPUS_LABEL, builtin_corpus_model
from prunescope.evaluation.offload import OffloadedModel, dispatch, load_offloaded
from prunescope.models import load_model
from tests.helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

QUANTIZE = {"plain": [], "int8": ["--quantize", "int8"], "int4": ["--quantize", "int4", "--group-size", "16"]}
COMMON = ["--max-tokens", "256", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def pruned(tiny_model_dir, tmp_path_factory) -> dict:
    """The tiny model pruned once per quantization with `--format both`: hf/ and sparse/ of one prune."""
    root = tmp_path_factory.mktemp("sparse-layout")
    for name, quantize in QUANTIZE.items():
        args = ["prune", tiny_model_dir, "--out", root / name, "--format", "both", "--sparsity", "0.5"]
        run_cli([*args, "--method", "magnitude", *quantize, "--no-progress"])
    return {name: root / name for name in QUANTIZE}


def _logits(loaded) -> torch.Tensor:
    ids = torch.randint(2, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits


@pytest.mark.parametrize("quantize", list(QUANTIZE))
def test_load_model_of_the_sparse_layout_equals_its_hf_twin(pruned, quantize):
    sparse, hf = pruned[quantize] / "sparse", pruned[quantize] / "hf"
    assert (sparse / "sparse_manifest.json").is_file() and not list(sparse.glob("model*.safetensors"))
    from_sparse = load_model(str(sparse), device="cpu")
    from_hf = load_model(str(hf), device="cpu")
    assert torch.equal(_logits(from_sparse), _logits(from_hf))
    assert (from_sparse.source, from_sparse.dtype, from_sparse.device) == (
        "local",
        torch.float32,
        torch.device("cpu"),
    )
    assert from_sparse.name == str(sparse) and from_sparse.dtype_reason == from_hf.dtype_reason
    assert not from_sparse.model.training
    assert not any(p.requires_grad for p in from_sparse.model.parameters())
    assert from_sparse.tokenizer.pad_token_id is not None
    assert from_sparse.context_length == from_hf.context_length == 64
    # the pruned zeros are there, as many as the manifest stores non-zeros for
    for layer, info in read_manifest(sparse)["layers"].items():
        weight = from_sparse.model.get_submodule(layer).weight
        assert int((weight != 0).sum()) == info["nnz"] < weight.numel()


def test_load_model_at_another_dtype_matches_the_hf_twin(pruned):
    sparse, hf = pruned["int8"] / "sparse", pruned["int8"] / "hf"
    from_sparse = load_model(str(sparse), dtype="bfloat16", device="cpu")
    from_hf = load_model(str(hf), dtype="bfloat16", device="cpu")
    assert from_sparse.dtype == torch.bfloat16
    assert {p.dtype for p in from_sparse.model.parameters()} == {torch.bfloat16}
    assert torch.equal(_logits(from_sparse), _logits(from_hf))


def _evaluation(path, reference, out) -> dict:
    run_cli(["evaluate", path, "--reference", reference, "--out", out, *COMMON])
    return json.loads((out / "evaluation.json").read_text())


@pytest.mark.parametrize("quantize", ["plain", "int4"])
def test_evaluate_of_the_sparse_layout_scores_its_hf_twin(pruned, tiny_model_dir, tmp_path, quantize):
    sparse, hf = pruned[quantize] / "sparse", pruned[quantize] / "hf"
    of_sparse = _evaluation(sparse, tiny_model_dir, tmp_path / "sparse")
    of_hf = _evaluation(hf, tiny_model_dir, tmp_path / "hf")
    for metric in ("perplexity", "top1_agreement", "top5_overlap", "kl_mean", "positions"):
        assert of_sparse["behaviour"][metric] == of_hf["behaviour"][metric], metric
    assert of_sparse["behaviour"]["kl_mean"] > 0  # the pruned model differs from its source
    timeless = [
        {k: v for k, v in b["reference_behaviour"].items() if k != "seconds"} for b in (of_sparse, of_hf)
    ]
    assert timeless[0] == timeless[1]
    assert of_sparse["placement"] == of_hf["placement"] == {"reference": {"cpu": 1}, "model": {"cpu": 1}}
    assert of_sparse["protocol"] == of_hf["protocol"]


def test_evaluate_takes_a_sparse_reference_too(pruned, tmp_path):
    sparse, hf = pruned["int8"] / "sparse", pruned["int8"] / "hf"
    behaviour = _evaluation(hf, sparse, tmp_path / "against-sparse")["behaviour"]
    assert behaviour["top1_agreement"] == 1.0 and behaviour["kl_mean"] == pytest.approx(0, abs=1e-9)


def test_study_takes_the_sparse_layout_as_its_model(pruned, tmp_path):
    sparse = pruned["int4"] / "sparse"
    out = tmp_path / "study"
    run_cli(["study", "--model", sparse, "--variants", "dense,masked", "--out", out, *COMMON])
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    alone = tmp_path / "alone"
    run_cli(["evaluate", sparse, "--out", alone, *COMMON])
    evaluated = json.loads((alone / "evaluation.json").read_text())["behaviour"]
    # study's dense model is the sparse checkpoint as loaded: evaluate scores those weights on those texts
    assert summary.loc["dense", "perplexity"] == pytest.approx(evaluated["perplexity"], rel=1e-6)


def test_a_sparse_demo_prune_is_evaluated_on_the_demos_corpus(tmp_path):
    out = tmp_path / "pruned"
    args = ["prune", "demo", "--out", out, "--format", "sparse", "--sparsity", "0.5", "--scope", "layer"]
    run_cli([*args, "--no-progress"])
    assert builtin_corpus_model(str(out)) == "demo"
    result = run_cli(["evaluate", out, "--max-tokens", "128", "--seqlen", "64", "--no-progress"])
    assert DEMO_CORPUS_LABEL in result.output


@pytest.mark.parametrize(
    ("budget", "devices"), [(0.8, {"cpu", "disk"}), (0.3, {"disk"})], ids=["part", "none"]
)
def test_a_dispatched_sparse_model_runs_as_loaded(pruned, tmp_path, budget, devices):
    """The accelerate placement of a sparse checkpoint off the CPU, exercised on the CPU: what the budget
    does not hold (part of the model, or all of it) goes to the offload folder; the logits do not change."""
    model = load_sparse_layout(pruned["plain"] / "sparse", torch.float32)
    ids = torch.randint(2, 300, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        memory = {"cpu": int(size * budget)}
        placed = OffloadedModel(dispatch(model, memory, tmp_path / "offload", torch.float32))
        assert set(placed.model.hf_device_map.values()) == devices
        assert list((tmp_path / "offload").glob("*.dat"))
        assert torch.equal(placed(input_ids=ids).logits, expected)


def test_load_offloaded_places_a_sparse_folder_on_the_cpu_whole(pruned, tmp_path):
    offloaded, placement = load_offloaded(pruned["int8"] / "sparse", None, tmp_path / "offload", device="cpu")
    assert placement == {"cpu": 1} and offloaded.dtype_reason.startswith("float32")
    assert str(next(offloaded.parameters()).device) == "cpu"


# ------------------------------------------------------------- a manifest that disagrees with its tensors
def _first_layer(folder) -> tuple[str, dict]:
    manifest = json.loads((folder / "sparse_manifest.json").read_text())
    return next(iter(manifest["layers"].items()))


def _edit_manifest(folder, change) -> None:
    path = folder / "sparse_manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _drop_tensor(folder, name) -> None:
    file = folder / "sparse.safetensors"
    tensors = load_file(file)
    del tensors[name]
    save_file(tensors, file, metadata={"format": "pt"})


def _nnz_plus_one(folder) -> None:
    module = _first_layer(folder)[0]
    _edit_manifest(folder, lambda m: m["layers"][module].update(nnz=m["layers"][module]["nnz"] + 1))


def _nnz_off_by_one_in_the_same_bytes(folder) -> None:
    """int4: nnz off by one the way that keeps its packed byte count (two codes a byte), so the header
    agrees with the manifest and only the mask disagrees."""
    module, info = _first_layer(folder)
    nnz = info["nnz"] + (1 if info["nnz"] % 2 else -1)
    _edit_manifest(folder, lambda m: m["layers"][module].update(nnz=nnz))


CORRUPTIONS = {
    "plain-nnz+1": ("plain", _nnz_plus_one, "nnz"),
    "int4-nnz-in-same-bytes": ("int4", _nnz_off_by_one_in_the_same_bytes, "cannot load sparse checkpoint"),
    "no-mask": ("plain", lambda f: _drop_tensor(f, _first_layer(f)[1]["tensor"] + ".mask"), ".mask"),
    "no-values": ("int8", lambda f: _drop_tensor(f, _first_layer(f)[1]["tensor"] + ".values"), ".values"),
    "no-shard": ("plain", lambda f: (f / "sparse.safetensors").unlink(), "sparse.safetensors"),
    "not-json": ("plain", lambda f: (f / "sparse_manifest.json").write_text("{ oops"), "JSONDecodeError"),
}


@pytest.fixture(params=list(CORRUPTIONS))
def corrupt(request, pruned, tmp_path) -> tuple:
    quantize, damage, message = CORRUPTIONS[request.param]
    folder = tmp_path / "corrupt"
    shutil.copytree(pruned[quantize] / "sparse", folder)
    damage(folder)
    return folder, message


def test_a_corrupt_sparse_checkpoint_is_one_error(corrupt):
    folder, message = corrupt
    with pytest.raises(PrunescopeError) as raised:
        load_model(str(folder), device="cpu")
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("command", ["evaluate", "study"])
def test_a_corrupt_sparse_checkpoint_is_exit_2_nothing_written(pruned, tmp_path, command):
    folder = tmp_path / "corrupt"
    shutil.copytree(pruned["plain"] / "sparse", folder)
    _nnz_plus_one(folder)
    out = tmp_path / "out"
    model = [folder] if command == "evaluate" else ["--model", folder, "--variants", "dense,masked"]
    result = CliRunner().invoke(app, [str(a) for a in [command, *model, "--out", out, *COMMON]])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nnz" in lines[0], result.output
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))
