"""Pruning methods beyond global magnitude: Wanda, SparseGPT, the sequential engine, N:M for every method."""

from __future__ import annotations

import json
import os
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from prunescope.errors import PrunescopeError
from prunescope.layers import linear_weight, prunable_layers
from prunescope.pruning import PruneSpec, prune, restore
from prunescope.pruning.capture import capture_block_inputs, find_blocks
from prunescope.pruning.driver import prune_calibrated
from prunescope.pruning.methods.sparsegpt import HessianStats, prune_sparsegpt
from prunescope.pruning.methods.wanda import WandaStats, wanda_mask, wanda_scores
from tests.helpers import layer_inputs, tiny_llama, tiny_opt, token_samples

VOCAB = 96


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_gpt2() -> nn.Module:
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config)


BUILDERS = {
    "opt": lambda: tiny_opt(VOCAB, heads=2),
    "gpt2": tiny_gpt2,
    "llama": lambda: tiny_llama(VOCAB),
}


def build(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return BUILDERS[arch]().eval()


calibration = partial(token_samples, vocab_size=VOCAB)


def weights(layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {name: linear_weight(module).detach().clone() for name, module in layers.items()}


def spec_for(method: str, pattern: str, blocksize: int = 16) -> PruneSpec:
    return PruneSpec.create(method, 0.5 if pattern == "unstructured" else None, pattern, blocksize=blocksize)


# --------------------------------------------------------------------------------- tiny models, exact
@pytest.mark.parametrize("arch", list(BUILDERS))
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibrated_unstructured_counts_and_restore(arch: str, method: str) -> None:
    model = build(arch)
    layers = prunable_layers(model)
    original = weights(layers)
    spec = spec_for(method, "unstructured", blocksize=16)
    record = prune(model, layers, spec, calibration(), progress=False)
    assert list(record.changes) == list(layers)
    for name, module in layers.items():
        weight, mask = linear_weight(module), record.changes[name].mask
        assert torch.all(weight[mask] == 0)
        if method == "wanda":
            # Same sparsity in every output row; kept weights untouched.
            assert torch.all(mask.sum(1) == weight.shape[1] // 2)
            assert torch.equal(weight[~mask], original[name][~mask])
        else:
            # Exact count in every column block; row sparsity varies and kept weights are updated.
            for start in range(0, weight.shape[1], 16):
                block = mask[:, start : start + 16]
                assert int(block.sum()) == round(0.5 * block.numel())
            assert not torch.equal(weight[~mask], original[name][~mask])
    restore(model, record)
    assert all(torch.equal(linear_weight(m), original[n]) for n, m in layers.items())


@pytest.mark.parametrize("arch", list(BUILDERS))
@pytest.mark.parametrize("method", ["magnitude", "random", "wanda", "sparsegpt"])
def test_n_m_valid_in_every_group(arch: str, method: str) -> None:
    model = build(arch)
    layers = prunable_layers(model)
    original = weights(layers)
    for pattern, (n, m) in (("2:4", (2, 4)), ("1:4", (1, 4))):
        record = prune(model, layers, spec_for(method, pattern), calibration(), progress=False)
        for name, module in layers.items():
            weight = linear_weight(module)
            nonzero = (weight != 0).reshape(weight.shape[0], -1, m).sum(-1)
            kept = (~record.changes[name].mask).reshape(weight.shape[0], -1, m).sum(-1)
            assert torch.all(kept == n), (name, pattern)
            assert torch.all(nonzero <= n), (name, pattern)
        restore(model, record)
        assert all(torch.equal(linear_weight(m_), original[n_]) for n_, m_ in layers.items())


def test_find_blocks_generic() -> None:
    expected = {"opt": "model.decoder.layers", "gpt2": "transformer.h", "llama": "model.layers"}
    for arch, name in expected.items():
        model = build(arch)
        found, blocks = find_blocks(model, prunable_layers(model))
        assert found == name and len(blocks) == 2


def test_projection_outside_blocks_is_a_clear_error() -> None:
    model = build("llama")  # untied lm_head: selectable, but outside every decoder block
    layers = prunable_layers(model, include=["*q_proj", "lm_head"])
    with pytest.raises(PrunescopeError, match="outside the decoder blocks"):
        prune(model, layers, spec_for("wanda", "unstructured"), calibration(), progress=False)


def _first_projection_inputs(model: nn.Module, module: nn.Module, samples: list[torch.Tensor]) -> WandaStats:
    stats = WandaStats(linear_weight(module).shape[1], torch.device("cpu"))
    handle = module.register_forward_hook(lambda mod, args, out: stats.add(args[0]))
    with torch.no_grad():
        for sample in samples:
            model(input_ids=sample, use_cache=False)
    handle.remove()
    return stats


def test_sequential_engine_calibrates_on_pruned_inputs() -> None:
    """Block 1 must see block 0's *pruned* outputs: its mask matches statistics taken from the pruned model
    and differs from statistics taken from the dense model."""
    samples = calibration(count=6)
    spec = spec_for("wanda", "unstructured")
    model = build("opt")
    layers = prunable_layers(model)
    target = "model.decoder.layers.1.self_attn.q_proj"
    module = layers[target]
    dense_stats = _first_projection_inputs(model, module, samples)
    dense_weight = linear_weight(module).detach().clone()

    record = prune(model, layers, spec, samples, progress=False)
    # q_proj's inputs depend only on block 0 (pruned) and block 1's first norm (not pruned).
    pruned_stats = _first_projection_inputs(model, module, samples)
    from_pruned = wanda_mask(wanda_scores(dense_weight, pruned_stats), spec)
    from_dense = wanda_mask(wanda_scores(dense_weight, dense_stats), spec)
    engine = record.changes[target].mask
    assert torch.equal(engine, from_pruned)
    assert not torch.equal(engine, from_dense)


def test_capture_records_every_block_argument() -> None:
    model = build("llama")
    _, blocks = find_blocks(model, prunable_layers(model))
    captured = capture_block_inputs(model, blocks[0], calibration(count=2))
    assert len(captured) == 2
    assert captured[0].hidden.shape == (1, 24, 32)
    assert "position_embeddings" in captured[0].kwargs  # Llama's rotary tables travel with the block


def test_capture_shares_equal_masks_between_samples() -> None:
    model = build("opt")
    model.config._attn_implementation = "eager"  # eager attention builds an explicit (1, 1, L, L) mask
    _, blocks = find_blocks(model, prunable_layers(model))
    first, second = capture_block_inputs(model, blocks[0], calibration(count=2))
    assert torch.is_tensor(first.kwargs["attention_mask"])
    assert second.kwargs["attention_mask"] is first.kwargs["attention_mask"]
    assert second.hidden is not first.hidden


# ------------------------------------------------------------------------------------- layer algorithms
def _correlated_inputs(tokens: int, features: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=generator) / features**0.5
    # Channels of very different scale (outliers, as in LLM activations), in no particular order.
    scale = torch.logspace(-1, 1, features)[torch.randperm(features, generator=generator)]
    return (torch.randn(tokens, features, generator=generator) @ mixing) * scale


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(pattern: str) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(64, 48, bias=False)
    x = _correlated_inputs(512, 64)
    dense = layer.weight.detach().clone()
    spec = spec_for("sparsegpt", pattern, blocksize=32)
    stats_h, stats_w = HessianStats(64, x.device), WandaStats(64, x.device)
    for chunk in x.split(64):
        stats_h.add(chunk.unsqueeze(0))
        stats_w.add(chunk.unsqueeze(0))

    def error(weight: torch.Tensor) -> float:
        return float(torch.linalg.norm(x @ dense.T - x @ weight.T))

    prune_sparsegpt(layer, stats_h, spec)
    sparsegpt_err = error(layer.weight.detach())
    magnitude = PruneSpec.create("magnitude", spec.sparsity, pattern, scope="row")
    from prunescope.pruning.methods.magnitude import magnitude_scores
    from prunescope.pruning.scoring import mask_from_scores

    magnitude_err = error(dense.masked_fill(mask_from_scores(magnitude_scores(dense), magnitude), 0))
    wanda_err = error(dense.masked_fill(wanda_mask(wanda_scores(dense, stats_w), spec), 0))
    assert sparsegpt_err < 0.95 * wanda_err
    assert wanda_err < 0.9 * magnitude_err


def test_sparsegpt_dead_inputs_and_overall_count() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(40, 8, bias=False)
    x = _correlated_inputs(100, 40)
    x[:, 3] = 0  # a dead input channel
    stats = HessianStats(40, x.device)
    stats.add(x.unsqueeze(0))
    change = prune_sparsegpt(layer, stats, PruneSpec.create("sparsegpt", 0.5, blocksize=128))
    assert int(change.mask.sum()) == 160  # one block of 8 x 40 columns: exactly half
    assert torch.all(layer.weight[:, 3] == 0)


# ---------------------------------------------------------------------------------------- bad input
def test_calibrated_method_without_calibration_is_an_error() -> None:
    model = build("opt")
    with pytest.raises(PrunescopeError, match="needs calibration"):
        prune(model, prunable_layers(model), spec_for("sparsegpt", "unstructured"), None)


def test_calibration_longer_than_context_is_an_error() -> None:
    model = build("opt")
    with pytest.raises(PrunescopeError, match="context"):
        prune_calibrated(model, prunable_layers(model), spec_for("wanda", "unstructured"), calibration(1, 80))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "wanda", "pattern": "4:2"}, "N <= M"),
        ({"method": "sparsegpt", "sparsity": 0.3, "pattern": "2:4"}, "fixes sparsity"),
        ({"method": "wanda", "scope": "global"}, "by design"),
    ],
)
def test_spec_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(PrunescopeError, match=message):
        PruneSpec.create(**kwargs)


# ----------------------------------------------------------------------------------------------- CLI / API
def _cli(*args: str):
    from typer.testing import CliRunner

    from prunescope.cli import app

    return CliRunner().invoke(app, ["study", "--no-progress", *args])


def test_cli_calibrated_study_end_to_end(tiny_model_dir, tmp_path) -> None:
    out = tmp_path / "run"
    result = _cli(
        "--model", str(tiny_model_dir), "--method", "sparsegpt", "--pattern", "2:4", "--variants", "masked",
        "--calib-samples", "4", "--calib-seqlen", "32", "--max-tokens", "256", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["prune_spec"]["method"] == "sparsegpt" and run["prune_spec"]["pattern"] == "2:4"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "wanda", "--calibration", "SHORT"], "need at least 33"),
        (["--method", "wanda", "--calib-seqlen", "80"], "context"),
        (["--method", "sparsegpt", "--pattern", "5:4"], "N <= M"),
        (["--method", "sparsegpt", "--pattern", "2:4", "--sparsity", "0.3"], "fixes sparsity"),
    ],
)
def test_cli_bad_calibrated_input_exits_2(args: list[str], message: str, tiny_model_dir, tmp_path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("a few words", encoding="utf-8")
    args = [str(short) if a == "SHORT" else a for a in args]
    result = _cli("--model", str(tiny_model_dir), "--calib-seqlen", "32", *args, "--out", str(tmp_path / "o"))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


# ------------------------------------------------------------------------------------------- demo model
@pytest.fixture(scope="module")
def demo_loaded():
    from prunescope.models import load_model

    return load_model("demo", "float32", "cpu")


def _demo_behaviours(loaded, pattern: str) -> dict[str, dict[str, float]]:
    """Perplexity and top-1 agreement with dense of each method, on one dense reference (fixed seeds)."""
    from prunescope.evaluation.behaviour import compare, compute_reference
    from prunescope.evaluation.corpus import load_texts, make_batches, tokenize_windows
    from prunescope.pruning.calibration import calibration_samples

    model, tokenizer = loaded.model, loaded.tokenizer
    windows = tokenize_windows(tokenizer, load_texts(None, "demo"), 256, 4096)
    batches = make_batches(windows, 8, tokenizer.pad_token_id)
    reference, _ = compute_reference(model, batches, progress=False)
    samples = calibration_samples(tokenizer, None, "demo", 32, 128, seed=0)
    layers = prunable_layers(model)
    got = {}
    for method in ("sparsegpt", "wanda", "magnitude", "random"):
        spec = PruneSpec.create(method, 0.5 if pattern == "unstructured" else None, pattern, seed=0)
        record = prune(model, layers, spec, samples, progress=False)
        behaviour = compare(model, batches, reference, method, progress=False)
        restore(model, record)
        got[method] = {"ppl": behaviour.perplexity, "top1": behaviour.top1_agreement}
    return got


@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_demo_ranking(demo_loaded, pattern: str) -> None:
    """SparseGPT clearly beats Wanda and magnitude, which beat random, in perplexity and top-1 agreement.

    Wanda vs magnitude on this small model (measured, fixed seeds, dense ppl 47.1): at 50 % unstructured
    Wanda is ahead (ppl 51.4 vs 52.5, top-1 0.797 vs 0.782); at 2:4 the two tie (55.9 vs 56.0, top-1
    0.720 vs 0.726). Wanda's edge in the papers comes from the outlier activation channels of large LLMs,
    which a 4-layer, 256-wide model trained for minutes barely has.
    """
    got = _demo_behaviours(demo_loaded, pattern)
    ppl = {m: r["ppl"] for m, r in got.items()}
    top1 = {m: r["top1"] for m, r in got.items()}
    for other in ("wanda", "magnitude"):
        assert ppl["sparsegpt"] < 0.97 * ppl[other], ppl
        assert top1["sparsegpt"] > top1[other] + 0.03, top1
    for method in ("wanda", "magnitude"):
        assert ppl[method] < 0.5 * ppl["random"], ppl
        assert top1[method] > top1["random"] + 0.2, top1
    if pattern == "unstructured":
        assert ppl["wanda"] < 0.99 * ppl["magnitude"], ppl
        assert top1["wanda"] > top1["magnitude"] + 0.005, top1
    else:
        assert abs(ppl["wanda"] / ppl["magnitude"] - 1) < 0.03, ppl


def test_demo_sparsegpt_reconstructs_each_layer_better_than_magnitude(demo_loaded) -> None:
    """‖WX − ŴX‖ per layer on the dense model's calibration activations: SparseGPT below magnitude."""
    from prunescope.pruning.calibration import calibration_samples

    model = demo_loaded.model
    layers = prunable_layers(model)
    samples = calibration_samples(demo_loaded.tokenizer, None, "demo", 8, 128, seed=0)
    inputs = layer_inputs(model, layers, samples)
    dense = weights(layers)

    def errors(method: str) -> dict[str, float]:
        record = prune(model, layers, PruneSpec.create(method, 0.5), samples, progress=False)
        out = {}
        for name, module in layers.items():
            x = torch.cat(inputs[name])
            out[name] = float(torch.linalg.norm(x @ (dense[name] - linear_weight(module)).T))
        restore(model, record)
        return out

    sparsegpt, magnitude = errors("sparsegpt"), errors("magnitude")
    worse = [name for name in layers if sparsegpt[name] >= magnitude[name]]
    assert not worse, {name: (sparsegpt[name], magnitude[name]) for name in worse}
