"""OWL allocation: block sparsities against the formula recomputed here from the dense model's activations."""

from __future__ import annotations

import json
import re
from functools import partial

import numpy as np
import pytest
import torch

from prunescope.errors import PrunescopeError
from prunescope.layers import linear_weight, prunable_layers
from prunescope.pruning import PruneSpec, prune, restore
from prunescope.pruning.allocations.owl import outlier_ratio, owl_sparsities
from tests.helpers import tiny_opt, token_samples

VOCAB = 96


pytestmark = pytest.mark.usefixtures("one_thread")


def heavy_tailed_opt(blocks: int = 4) -> torch.nn.Module:
    model = tiny_opt(VOCAB, blocks=blocks, heads=2)
    with torch.no_grad():  # heavier-tailed weights than the init, so blocks differ in outliers
        for module in prunable_layers(model).values():
            weight = linear_weight(module)
            weight.mul_(torch.distributions.StudentT(2.0).sample(weight.shape).abs().clamp(max=20))
    return model


calibration = partial(token_samples, vocab_size=VOCAB)


def dense_input_norms(model, layers, samples) -> dict[str, torch.Tensor]:
    """Per layer: mean over samples of sum over tokens of x_j^2, from hooks on the dense model."""
    sums = {name: torch.zeros(linear_weight(m).shape[1], dtype=torch.float64) for name, m in layers.items()}
    handles = []
    for name, module in layers.items():

        def hook(mod, args, out, name=name):
            sums[name] += args[0].detach().double().reshape(-1, args[0].shape[-1]).pow(2).sum(0)

        handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        for sample in samples:
            model(input_ids=sample, use_cache=False)
    for handle in handles:
        handle.remove()
    return {name: total / len(samples) for name, total in sums.items()}


def expected_owl(model, layers, samples, sparsity, m, lam) -> list[float]:
    """The OWL formula, written out independently (numpy, concatenated scores per block)."""
    norms = dense_input_norms(model, layers, samples)
    blocks: dict[int, list[np.ndarray]] = {}
    for name, module in layers.items():
        block = int(name.split("layers.")[1].split(".")[0])
        score = linear_weight(module).detach().double().abs() * norms[name].sqrt().unsqueeze(0)
        blocks.setdefault(block, []).append(score.numpy().ravel())
    lod = []
    for block in sorted(blocks):
        scores = np.concatenate(blocks[block])
        lod.append(100.0 * np.mean(scores > m * scores.mean()))
    lod = np.array(lod)
    d = (lod - lod.min()) / (lod.max() - lod.min()) * 2 * lam
    return list(1 - (d - d.mean() + (1 - sparsity)))


@pytest.mark.parametrize("method", ["wanda", "magnitude", "sparsegpt"])
def test_block_sparsities_match_formula(method):
    model = heavy_tailed_opt()
    layers = prunable_layers(model)
    samples = calibration()
    expected = expected_owl(model, layers, samples, 0.5, 5.0, 0.08)
    dense = {name: linear_weight(m).detach().clone() for name, m in layers.items()}
    spec = PruneSpec.create(method, 0.5, allocation="owl", owl_m=5.0, owl_lambda=0.08, calib_seqlen=24)
    record = prune(model, layers, spec, samples, progress=False)
    blocks = record.details["allocation"]["blocks"]
    got = [b["sparsity"] for b in blocks]
    assert len(got) == 4
    assert np.allclose(got, expected, atol=1e-9), (got, expected)
    assert abs(np.mean(got) - 0.5) < 1e-9 and max(got) - min(got) == pytest.approx(0.16)
    # Realised sparsity of each block (zeros of its layers): the formula within one row's rounding.
    widest = max(linear_weight(m).shape[1] for m in layers.values())
    for block, target in zip(blocks, expected, strict=True):
        names = [n for n in layers if n.startswith(block["block"] + ".")]
        pruned = sum(int(record.changes[n].mask.sum()) for n in names)
        total = sum(record.changes[n].shape.numel() for n in names)
        assert abs(pruned / total - target) <= 1.0 / widest
        assert block["realised_sparsity"] == pytest.approx(pruned / total)
    restore(model, record)
    for name, module in layers.items():
        assert torch.equal(linear_weight(module), dense[name])


def test_wanda_rows_inside_a_block_share_its_sparsity():
    model = heavy_tailed_opt()
    layers = prunable_layers(model)
    spec = PruneSpec.create("wanda", 0.6, allocation="owl", calib_seqlen=24)
    record = prune(model, layers, spec, calibration(), progress=False)
    sparsity = {b["block"]: b["sparsity"] for b in record.details["allocation"]["blocks"]}
    for name, change in record.changes.items():
        block = re.match(r"(.*layers\.\d+)\.", name).group(1)
        per_row = change.mask.sum(1)
        assert bool((per_row == round(sparsity[block] * change.shape[1])).all()), name


def test_formula_edges():
    assert owl_sparsities([3.0, 3.0, 3.0], 0.5, 0.08) == [0.5, 0.5, 0.5]  # no spread: uniform
    low = owl_sparsities([0.0, 10.0], 0.05, 0.08)  # S - lambda < 0: clipped at 0
    assert low[1] == 0.0 and low[0] == pytest.approx(0.13)
    assert outlier_ratio([torch.tensor([1.0, 1.0, 1.0, 9.0])], 2.0) == 25.0  # mean 3: one of 4 above 6


@pytest.mark.parametrize("ratios", [[0.0, 10.0, 10.0, 10.0], [0.0, 0.0, 0.0, 10.0], [1.0, 4.0, 2.0, 9.0]])
def test_block_sparsities_keep_the_documented_bounds(ratios):
    """--owl-lambda's help: mean S, span exactly 2 lambda, each block within S +- 2 lambda (not +- lambda)."""
    s, lam = 0.6, 0.08
    blocks = owl_sparsities(ratios, s, lam)
    assert np.mean(blocks) == pytest.approx(s)
    assert max(blocks) - min(blocks) == pytest.approx(2 * lam)
    assert all(s - 2 * lam - 1e-12 <= b <= s + 2 * lam + 1e-12 for b in blocks)
    assert blocks[0] == max(blocks)  # the fewest outliers: the most sparsity


def test_a_block_can_exceed_s_plus_lambda():
    """One block with few outliers among many with many goes above S + lambda (0.72 at S 0.6, lambda 0.08)."""
    blocks = owl_sparsities([0.0, 10.0, 10.0, 10.0], 0.6, 0.08)
    assert blocks[0] == pytest.approx(0.72) and blocks[0] > 0.6 + 0.08


def test_owl_refuses_n_m_and_bad_values():
    with pytest.raises(PrunescopeError, match="unstructured"):
        PruneSpec.create("wanda", pattern="2:4", allocation="owl")
    with pytest.raises(PrunescopeError, match="allocation"):
        PruneSpec.create("wanda", 0.5, allocation="nonuniform")
    with pytest.raises(PrunescopeError, match="owl-lambda"):
        PruneSpec.create("wanda", 0.5, allocation="owl", owl_lambda=0.7)
    assert PruneSpec.create("magnitude", 0.5, allocation="owl").needs_calibration


def test_owl_from_disk_matches_memory(tiny_model_dir, tmp_path):
    """`prune` from a checkpoint computes the same allocation and masks as in memory; prune.json + plot."""
    from typer.testing import CliRunner

    from prunescope.checkpoint import prune_checkpoint
    from prunescope.cli import app
    from prunescope.models import load_model

    samples = calibration(count=3, seqlen=16)
    spec = PruneSpec.create("wanda", 0.5, allocation="owl", owl_lambda=0.1, calib_seqlen=16)
    result = prune_checkpoint(tiny_model_dir, tmp_path / "out", spec, calibration=samples, progress=False)
    loaded = load_model(str(tiny_model_dir), "float32", "cpu")
    layers = prunable_layers(loaded.model)
    record = prune(loaded.model, layers, spec, samples, progress=False)
    disk = [b["sparsity"] for b in result.details["allocation"]["blocks"]]
    memory = [b["sparsity"] for b in record.details["allocation"]["blocks"]]
    assert disk == pytest.approx(memory, abs=1e-12) and len(disk) == 2
    assert {n: v["pruned"] for n, v in result.layers.items()} == {
        n: int(c.mask.sum()) for n, c in record.changes.items()
    }

    out = tmp_path / "cli"
    run = CliRunner().invoke(
        app,
        [
            "prune", str(tiny_model_dir), "--out", str(out), "--method", "magnitude", "--scope", "row",
            "--sparsity", "0.5", "--allocation", "owl", "--calib-samples", "3", "--calib-seqlen", "16",
            "--no-progress",
        ],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    saved = json.loads((out / "prune.json").read_text())
    assert [b["block"] for b in saved["allocation"]["blocks"]] == [
        "model.decoder.layers.0",
        "model.decoder.layers.1",
    ]
    assert (out / "block_sparsity.png").stat().st_size > 0
    bad = CliRunner().invoke(
        app,
        [
            "prune",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "x"),
            "--pattern",
            "2:4",
            "--allocation",
            "owl",
        ],
    )
    assert bad.exit_code == 2 and "unstructured" in bad.output and not (tmp_path / "x").exists()


def test_sweep_axes_label_points():
    from prunescope.experiments.study import StudyConfig
    from prunescope.experiments.sweep import SweepConfig, parse_method_label

    config = SweepConfig(
        sparsities="0.5,0.6",
        methods="wanda,ria",
        patterns="unstructured,2:4",
        allocations="uniform,owl",
        refines="none,dsnot",
        base=StudyConfig(variants=["dense"]),
    )
    labels = sorted({p[0] for p in config.points()})
    assert labels == sorted(
        [
            "wanda",
            "wanda+owl",
            "wanda+dsnot",
            "wanda+owl+dsnot",
            "ria",
            "ria+owl",
            "ria+dsnot",
            "ria+owl+dsnot",
        ]
    )
    assert not [p for p in config.points() if "owl" in p[0] and p[1] == "2:4"]  # OWL: unstructured only
    spec = config.spec(("ria+owl+dsnot", "unstructured", 0.6), 64)
    assert (spec.method, spec.allocation, spec.refine, spec.sparsity) == ("ria", "owl", "dsnot", 0.6)
    assert parse_method_label("magnitude") == ("magnitude", {})
    with pytest.raises(PrunescopeError, match="modifier"):
        parse_method_label("wanda+fast")
