"""DSnoT refinement: row zero counts kept, N:M kept, and the per-row error estimate lowered on every layer.

The error estimate is recomputed here from each projection's own calibration inputs (hooked on the calls
the sequential pass makes to collect statistics), not taken from the refinement's summary.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from prunescope.errors import PrunescopeError
from prunescope.layers import linear_weight, prunable_layers
from prunescope.pruning import PruneSpec, prune, restore
from prunescope.pruning.refinements.dsnot import MomentStats, refine_mask
from tests.helpers import tiny_opt, token_samples

VOCAB = 96
SAMPLES = 4


pytestmark = pytest.mark.usefixtures("one_thread")


calibration = partial(token_samples, count=SAMPLES, seqlen=20, seed=5, vocab_size=VOCAB)


def prune_hooked(model, spec):
    """Prune, keeping the inputs of each projection's first SAMPLES calls: the statistics pass."""
    layers = prunable_layers(model)
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def make_hook(name):
        def hook(module, args, out):
            if len(seen[name]) < SAMPLES:
                seen[name].append(args[0].detach().double().reshape(-1, args[0].shape[-1]))

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in layers.items()]
    dense = {n: linear_weight(m).detach().clone() for n, m in layers.items()}
    record = prune(model, layers, spec, calibration(), progress=False)
    for handle in handles:
        handle.remove()
    return layers, dense, record, {n: torch.cat(x) for n, x in seen.items()}


def initial_wanda_mask(weight: torch.Tensor, x: torch.Tensor, spec: PruneSpec) -> torch.Tensor:
    score = weight.double().abs() * x.pow(2).sum(0).sqrt().unsqueeze(0)
    mask = torch.zeros_like(score, dtype=torch.bool)
    if spec.pattern.structured:
        m = spec.pattern.m
        groups = score.reshape(score.shape[0], -1, m)
        low = groups.argsort(dim=2, stable=True)[:, :, : m - spec.pattern.n]
        return mask.reshape(groups.shape).scatter_(2, low, True).reshape(score.shape)
    return mask.scatter_(
        1, score.argsort(dim=1, stable=True)[:, : round(spec.sparsity * score.shape[1])], True
    )


def errors(weight: torch.Tensor, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """e_i = sum over pruned j of W_ij * mean_t x_tj."""
    return (weight.double() * x.mean(0).unsqueeze(0) * mask).sum(1)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_refinement_keeps_counts_and_lowers_error(pattern):
    model = tiny_opt()
    spec = PruneSpec.create(
        "wanda", 0.5 if pattern == "unstructured" else None, pattern, refine="dsnot", refine_threshold=0.0,
        calib_seqlen=20,
    )  # fmt: skip
    layers, dense, record, inputs = prune_hooked(model, spec)
    total_before = total_after = 0.0
    for name, change in record.changes.items():
        initial = initial_wanda_mask(dense[name], inputs[name], spec)
        final = change.mask
        assert torch.equal(final.sum(1), initial.sum(1)), name  # every row keeps its number of zeros
        if spec.pattern.structured:
            per_group = final.reshape(final.shape[0], -1, 4).sum(2)
            assert bool((per_group == 2).all()), name
        before = errors(dense[name], initial, inputs[name]).abs()
        after = errors(dense[name], final, inputs[name]).abs()
        changed = (final != initial).any(1)
        assert bool(changed.any()), f"{name}: no row was refined"
        assert bool((after[changed] < before[changed]).all()), name  # each refined row: smaller |e|
        assert torch.equal(after[~changed], before[~changed])
        assert float(after.sum()) < float(before.sum()), name  # so every refined layer's total drops
        total_before += float(before.sum())
        total_after += float(after.sum())
        kept = ~final  # no weight update: kept weights are the dense values, pruned ones exactly zero
        assert torch.equal(linear_weight(layers[name])[kept], dense[name][kept])
        assert bool((linear_weight(layers[name])[final] == 0).all())
        info = record.details["refine"][name]
        assert info["error_after"] == pytest.approx(float(after.sum()), rel=1e-4)
    assert total_after < total_before
    restore(model, record)
    assert all(torch.equal(linear_weight(m), dense[n]) for n, m in layers.items())


def test_threshold_and_cycles_bound_the_work():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 16, generator=generator)
    stats = MomentStats(16, torch.device("cpu"))
    stats.add(torch.randn(50, 16, generator=generator) + 0.5)
    mask = torch.zeros(8, 16, dtype=torch.bool)
    mask[:, :8] = True
    base = PruneSpec.create("wanda", 0.5, refine="dsnot")
    same, info = refine_mask(
        weight, mask, stats, PruneSpec.create("wanda", 0.5, refine="dsnot", refine_cycles=0)
    )
    assert torch.equal(same, mask) and info["swaps"] == 0
    high, info = refine_mask(
        weight, mask, stats, PruneSpec.create("wanda", 0.5, refine="dsnot", refine_threshold=1e9)
    )
    assert torch.equal(high, mask) and info["swaps"] == 0
    one, info = refine_mask(
        weight, mask, stats, PruneSpec.create("wanda", 0.5, refine="dsnot", refine_cycles=1)
    )
    assert int((one != mask).sum(1).max()) <= 2  # one swap per row per cycle
    full, info = refine_mask(weight, mask, stats, base)
    assert info["error_after"] < info["error_before"] and info["swaps"] > 0


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt"])
def test_refines_any_method(method):
    model = tiny_opt()
    layers = prunable_layers(model)
    dense = {n: linear_weight(m).detach().clone() for n, m in layers.items()}
    plain = prune(
        model, layers, PruneSpec.create(method, 0.5, calib_seqlen=20), calibration(), progress=False
    )
    plain_rows = {n: c.mask.sum(1) for n, c in plain.changes.items()}
    restore(model, plain)
    spec = PruneSpec.create(method, 0.5, refine="dsnot", refine_threshold=0.0, calib_seqlen=20)
    record = prune(model, layers, spec, calibration(), progress=False)
    assert record.pruned_count() == plain.pruned_count()
    for name, change in record.changes.items():
        # Row counts are those of the method's own mask: magnitude's comes from the dense weights,
        # SparseGPT's from the inputs, the same in both runs only in block 0 (later ones see refined blocks).
        if method == "magnitude" or ".layers.0." in name:
            assert torch.equal(change.mask.sum(1), plain_rows[name]), name
        kept = ~change.mask  # SparseGPT is refined on the original weights, as the reference does
        assert torch.equal(linear_weight(layers[name])[kept], dense[name][kept])
    assert sum(info["swaps"] for info in record.details["refine"].values()) > 0
    with pytest.raises(PrunescopeError, match="refinement"):
        PruneSpec.create(method, 0.5, refine="sometimes")


def test_refinement_from_disk_matches_memory(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from prunescope.checkpoint import prune_checkpoint
    from prunescope.cli import app
    from prunescope.models import load_model

    generator = torch.Generator().manual_seed(2)
    samples = [torch.randint(2, 300, (1, 16), generator=generator) for _ in range(3)]
    spec = PruneSpec.create("wanda", 0.5, refine="dsnot", refine_threshold=0.0, calib_seqlen=16)
    result = prune_checkpoint(tiny_model_dir, tmp_path / "out", spec, calibration=samples, progress=False)
    loaded = load_model(str(tiny_model_dir), "float32", "cpu")
    record = prune(loaded.model, prunable_layers(loaded.model), spec, samples, progress=False)
    assert result.details["refine"].keys() == record.details["refine"].keys()
    for name, info in record.details["refine"].items():
        assert result.details["refine"][name]["swaps"] == info["swaps"]
        assert result.details["refine"][name]["error_after"] == pytest.approx(info["error_after"], rel=1e-5)
    assert sum(info["swaps"] for info in result.details["refine"].values()) > 0

    # Magnitude's default global selection needs every layer before the block pass: refused from disk.
    args = [
        "prune",
        str(tiny_model_dir),
        "--out",
        str(tmp_path / "x"),
        "--sparsity",
        "0.5",
        "--refine",
        "dsnot",
    ]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 2 and "--scope layer or row" in run.output and not (tmp_path / "x").exists()


def test_gpt2_conv1d_with_ria_owl_and_dsnot():
    """GPT-2 stores (in, out) Conv1D weights: masks, refinement and restore go through the transposed view."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    model = GPT2LMHeadModel(config).eval()
    layers = prunable_layers(model)
    dense = {n: linear_weight(m).detach().clone() for n, m in layers.items()}
    spec = PruneSpec.create(
        "ria", 0.5, allocation="owl", refine="dsnot", refine_threshold=0.0, calib_seqlen=20
    )
    record = prune(model, layers, spec, calibration(), progress=False)
    assert len(record.details["allocation"]["blocks"]) == 2
    assert sum(info["swaps"] for info in record.details["refine"].values()) > 0
    for block in record.details["allocation"]["blocks"]:
        assert block["realised_sparsity"] == pytest.approx(block["sparsity"], abs=1.0 / 128)
    for name, change in record.changes.items():
        assert torch.equal(linear_weight(layers[name]) == 0, change.mask | (dense[name] == 0))
    restore(model, record)
    assert all(torch.equal(linear_weight(m), dense[n]) for n, m in layers.items())
