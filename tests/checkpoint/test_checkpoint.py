"""Checkpoints from disk: header parsing, the structure table, streaming pruning == in-memory pruning,
and the HF / sparse checkpoints written by `prunescope prune` (round trips with identical logits)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig
from typer.testing import CliRunner

from prunescope.checkpoint import Checkpoint, inspect_checkpoint, load_sparse, prune_checkpoint, prune_stream
from prunescope.checkpoint.synthetic import write_random_checkpoint
from prunescope.cli import app
from prunescope.errors import PrunescopeError
from prunescope.formats.bitmask import BitmaskLinear
from prunescope.layers import linear_weight, prunable_layers
from prunescope.pruning import PruneSpec, prune
from prunescope.pruning.calibration import calibration_samples
from prunescope.structure import layer_table
from tests.helpers import make_tokenizer, run_cli

COMPARED = ["module", "group", "shape", "params", "weights", "stored_bytes", "flops_per_token", "tied_to"]


def _load(path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """Tied Llama, sharded (several shards + index), written tensor by tensor."""
    path = tmp_path_factory.mktemp("llama")
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    write_random_checkpoint(path, config, max_shard_bytes=120_000)
    return path


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """GPT-2 saved by save_pretrained: Conv1D (in, out) weights, tied lm_head, biases."""
    path = tmp_path_factory.mktemp("gpt2")
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=48, n_layer=2, n_head=4, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(params=["llama", "gpt2", "opt"])
def model_dir(request, llama_dir, gpt2_dir, tiny_model_dir):
    return {"llama": llama_dir, "gpt2": gpt2_dir, "opt": tiny_model_dir}[request.param]


def test_header_reading_matches_safetensors(llama_dir) -> None:
    checkpoint = Checkpoint(llama_dir)
    assert len(checkpoint.files) > 1
    for file in checkpoint.files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                expected = f.get_tensor(name)
                assert checkpoint.entries[name].shape == tuple(expected.shape)
                assert torch.equal(checkpoint.read(name), expected)
                if expected.dim() == 2:
                    assert torch.equal(checkpoint.read_rows(name, 3, 7), expected[3:7])
    checkpoint.close()


def test_inspect_matches_the_in_memory_table(model_dir) -> None:
    result = inspect_checkpoint(model_dir, count_zeros=True)
    expected = layer_table(_load(model_dir))
    assert result.layers[COMPARED].to_dict("records") == expected[COMPARED].to_dict("records")
    assert result.layers["nonzero"].tolist() == expected["nonzero"].tolist()
    assert not result.missing and not result.unmapped
    assert result.summary["stored_bytes"] == result.summary["checkpoint_tensor_bytes"]


def test_inspect_single_file_and_tied_weights(gpt2_dir) -> None:
    result = inspect_checkpoint(gpt2_dir / "model.safetensors")
    head = result.layers.set_index("module").loc["lm_head"]
    assert head["tied_to"] == "transformer.wte" and head["params"] == 0 and head["flops_per_token"] > 0
    assert result.summary["sparsity"] is None  # zeros were not counted


SPECS = [
    dict(method="magnitude", sparsity=0.5),
    dict(method="magnitude", sparsity=0.3, scope="layer"),
    dict(method="magnitude", sparsity=0.4, scope="row"),
    dict(method="magnitude", sparsity=None, pattern="2:4"),
    dict(method="random", sparsity=0.6),
    dict(method="random", sparsity=0.25, scope="row"),
]


@pytest.mark.parametrize("options", SPECS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_streaming_pruning_equals_in_memory(model_dir, tmp_path, monkeypatch, options) -> None:
    # Small pieces, so every Llama/OPT layer is read and selected in several row blocks.
    monkeypatch.setattr(prune_stream, "PIECE_ELEMENTS", 1000)
    spec = PruneSpec.create(**options)
    result = prune_checkpoint(model_dir, tmp_path / "out", spec, "hf", progress=False)
    model = _load(model_dir)
    record = prune(model, prunable_layers(model), spec, progress=False)
    streamed = _load(tmp_path / "out").state_dict()
    expected = model.state_dict()
    assert streamed.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(streamed[name], tensor), name
    assert result.pruned == record.pruned_count()


def test_sparse_round_trip_reproduces_logits(model_dir, tmp_path) -> None:
    spec = PruneSpec.create("magnitude", 0.6)
    result = prune_checkpoint(model_dir, tmp_path / "out", spec, "both", progress=False)
    assert result.outputs["sparse"]["bytes"] < result.outputs["hf"]["bytes"]
    reference = _load(tmp_path / "out" / "hf")
    dense = load_sparse(tmp_path / "out" / "sparse", "dense")
    packed = load_sparse(tmp_path / "out" / "sparse", "bitmask")
    ids = torch.randint(0, reference.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(ids).logits
        assert torch.equal(dense(ids).logits, expected)
        assert torch.allclose(packed(ids).logits, expected, atol=1e-4, rtol=1e-4)
    names = [n for n, m in packed.named_modules() if isinstance(m, BitmaskLinear)]
    assert len(names) == len(result.layers)
    for name in names:
        original = linear_weight(reference.get_submodule(name))
        assert torch.equal(packed.get_submodule(name).to_dense(), original)
    audit = inspect_checkpoint(tmp_path / "out" / "hf", count_zeros=True).summary
    assert audit["pruned_layer_sparsity"] == pytest.approx(0.6, abs=1e-4)
    manifest = json.loads((tmp_path / "out" / "sparse" / "sparse_manifest.json").read_text())
    assert set(manifest["layers"]) == set(result.layers)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibrated_streaming_equals_in_memory(model_dir, tmp_path, method) -> None:
    spec = PruneSpec.create(method, 0.5, calib_samples=4, calib_seqlen=24)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    samples = calibration_samples(tokenizer, None, "local", 4, 24, seed=0)
    result = prune_checkpoint(model_dir, tmp_path / "out", spec, "both", progress=False, calibration=samples)
    model = _load(model_dir)
    record = prune(model, prunable_layers(model), spec, calibration=samples, progress=False)
    streamed = _load(tmp_path / "out" / "hf").state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(streamed[name], tensor), name
    assert result.pruned == record.pruned_count()
    with torch.no_grad():
        ids = torch.randint(0, model.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(1))
        assert torch.equal(load_sparse(tmp_path / "out" / "sparse")(ids).logits, model(ids).logits)


def test_calibrated_methods_need_calibration(llama_dir, tmp_path) -> None:
    with pytest.raises(PrunescopeError, match="needs calibration data"):
        prune_checkpoint(llama_dir, tmp_path / "out", PruneSpec.create("wanda", 0.5), progress=False)


def test_cli_inspect_prune_and_errors(llama_dir, tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "inspect"
    result = run_cli(["inspect", str(llama_dir), "--zeros", "--layers", "--out", str(out)])
    assert {p.name for p in out.iterdir()} == {"layers.csv", "groups.csv", "summary.json"}
    result = runner.invoke(
        app,
        [
            "prune",
            str(llama_dir),
            "--out",
            str(tmp_path / "p"),
            "--sparsity",
            "0.5",
            "--format",
            "sparse",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "sparse_manifest.json").is_file() and (tmp_path / "p" / "prune.json").is_file()
    assert (tmp_path / "p" / "tokenizer.json").is_file()
    result = runner.invoke(
        app,
        [
            "prune",
            str(llama_dir),
            "--out",
            str(tmp_path / "w"),
            "--method",
            "sparsegpt",
            "--sparsity",
            "0.5",
            "--calib-samples",
            "2",
            "--calib-seqlen",
            "16",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "w" / "prune.json").read_text())["spec"]["method"] == "sparsegpt"
    for args in (
        ["inspect", str(tmp_path / "nope")],
        ["prune", str(llama_dir), "--out", str(tmp_path / "q"), "--include", "lm_head"],  # tied
        ["prune", str(llama_dir), "--out", str(tmp_path / "p")],  # exists, no --overwrite
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
    assert not (tmp_path / "q").exists()
