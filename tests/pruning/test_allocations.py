"""DLP and LSA allocations against their formulas recomputed here from hooked dense activations; allocations
as files (allocation.json written from a run and applied again, bad files); the allocation heatmaps."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch

from prunescope.errors import PrunescopeError
from prunescope.layers import linear_weight, prunable_layers
from prunescope.pruning import PruneSpec, prune
from prunescope.pruning.allocations.lsa import default_beta
from prunescope.report.allocation import (
    allocation_mapping,
    allocation_section,
    plot_allocation,
    plot_allocation_heatmap,
    plot_allocation_heatmaps,
    write_allocation_json,
)
from tests.helpers import layer_inputs, tiny_opt, token_samples

VOCAB = 320


pytestmark = pytest.mark.usefixtures("one_thread")


def model_and_layers(seed: int = 0):
    model = tiny_opt(seed=seed)
    with torch.no_grad():  # heavier-tailed weights than the init, so blocks differ
        generator = torch.Generator().manual_seed(seed + 5)
        for module in prunable_layers(model).values():
            weight = linear_weight(module)
            weight.mul_(torch.rand(weight.shape, generator=generator).pow(3) * 4 + 0.1)
    return model, prunable_layers(model)


calibration = partial(token_samples, seqlen=20, vocab_size=VOCAB)


def hooked_inputs(model, layers, samples) -> dict[str, list[np.ndarray]]:
    """Per layer, per sample: the (tokens, in) inputs the dense projection received."""
    return {
        name: [x.double().numpy() for x in xs] for name, xs in layer_inputs(model, layers, samples).items()
    }


def block_of(name: str) -> int:
    return int(name.split("layers.")[1].split(".")[0])


def spread(values, amplitude):
    values = np.asarray(values)
    return (values - values.min()) / (values.max() - values.min()) * 2 * amplitude


# --- DLP ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_dlp_matches_formula(method):
    model, layers = model_and_layers()
    samples = calibration()
    inputs = hooked_inputs(model, layers, samples)
    scores: dict[int, list[np.ndarray]] = {}
    for name, module in layers.items():
        # ||X_j||_2 as Wanda's statistic: sqrt of the mean over samples of sum over tokens of x_j^2
        norm = np.sqrt(np.mean([(x**2).sum(0) for x in inputs[name]], axis=0))
        w = linear_weight(module).detach().double().numpy()
        scores.setdefault(block_of(name), []).append((np.abs(w) * norm[None, :]).ravel())
    importance = np.array([np.concatenate(scores[b]).mean() for b in sorted(scores)])
    r = 1 - importance / importance.sum()
    d = spread(r, 0.15)
    expected = 0.7 - d + d.mean()

    spec = PruneSpec.create(method, 0.7, allocation="dlp", calib_seqlen=20)
    record = prune(model, layers, spec, samples, progress=False)
    blocks = record.details["allocation"]["blocks"]
    assert [b["importance"] for b in blocks] == pytest.approx(list(importance), rel=1e-5)
    assert [b["sparsity"] for b in blocks] == pytest.approx(list(expected), abs=1e-6)
    assert max(b["sparsity"] for b in blocks) - min(b["sparsity"] for b in blocks) == pytest.approx(0.3)
    for block in blocks:
        names = [n for n in layers if n.startswith(block["block"] + ".")]
        pruned = sum(int(record.changes[n].mask.sum()) for n in names)
        total = sum(record.changes[n].shape.numel() for n in names)
        assert abs(pruned / total - block["sparsity"]) < 0.02
    assert record.details["allocation"]["dlp_alpha"] == 0.15


def test_dlp_alpha_option():
    spec = PruneSpec.create("wanda", 0.5, allocation="dlp", dlp_alpha=0.05)
    assert spec.describe()["dlp_alpha"] == 0.05
    with pytest.raises(PrunescopeError, match="dlp-alpha"):
        PruneSpec.create("wanda", 0.5, allocation="dlp", dlp_alpha=0.6)


# --- LSA ---------------------------------------------------------------------------------------------------


def greedy_error_reference(w: np.ndarray, h: np.ndarray, group: int = 128) -> tuple[float, np.ndarray]:
    """LSA's greedy removal written out row by row; returns the accumulated error and the mask."""
    rows, cols = w.shape
    mask = np.zeros_like(w, dtype=bool)
    total = 0.0
    for k in range(rows):
        eps = w[k] ** 2 * np.diag(h)
        for c0 in range(0, cols, group):
            c1 = min(c0 + group, cols)
            for _ in range((c1 - c0) // 2):
                candidates = [j for j in range(c0, c1) if not mask[k, j]]
                i = min(candidates, key=lambda j: eps[j])
                total += eps[i]
                mask[k, i] = True
                eps = eps + 2 * w[k, i] * w[k] * h[i]
    return total, mask


@pytest.mark.parametrize("sparsity", [0.6, 0.7])
def test_lsa_matches_formula(sparsity):
    model, layers = model_and_layers(seed=3)
    samples = calibration(count=3)
    inputs = hooked_inputs(model, layers, samples)
    errors: dict[int, list[float]] = {}
    for name, module in layers.items():
        x = np.concatenate(inputs[name])
        h = 2.0 / len(samples) * x.T @ x
        w = linear_weight(module).detach().double().numpy()
        error, mask = greedy_error_reference(w, h)
        assert mask.sum(1).tolist() == [w.shape[1] // 2] * w.shape[0]
        # the accumulated error is the removed weights' output error ||W X^T - (M W) X^T||^2 * 2/n
        removed = np.where(mask, w, 0.0)
        assert error == pytest.approx(2.0 / len(samples) * np.sum((x @ removed.T) ** 2), rel=1e-8)
        errors.setdefault(block_of(name), []).append(error)
    e = np.array([np.mean(errors[b]) for b in sorted(errors)])
    importance = 1 - e / e.sum()
    beta = {0.6: 0.10, 0.7: 0.15}[sparsity]
    d = spread(importance, beta)
    expected = sparsity + d.mean() - d

    spec = PruneSpec.create("wanda", sparsity, allocation="lsa", calib_seqlen=20)
    record = prune(model, layers, spec, samples, progress=False)
    allocation = record.details["allocation"]
    assert allocation["lsa_beta"] == pytest.approx(beta)
    assert [b["error"] for b in allocation["blocks"]] == pytest.approx(list(e), rel=1e-4)
    assert [b["sparsity"] for b in allocation["blocks"]] == pytest.approx(list(expected), abs=1e-6)
    higher = int(np.argmax(e))  # higher error -> more sparsity
    assert allocation["blocks"][higher]["sparsity"] == pytest.approx(sparsity + beta)


def test_lsa_beta_by_target():
    assert default_beta(0.5) == pytest.approx(0.04)
    assert default_beta(0.65) == pytest.approx(0.125)  # linear between the reference's points
    assert default_beta(0.3) == pytest.approx(0.04) and default_beta(0.8) == pytest.approx(0.15)
    spec = PruneSpec.create("wanda", 0.7, allocation="lsa", lsa_beta=0.05)
    assert spec.allocation_options.beta == 0.05
    with pytest.raises(PrunescopeError, match="lsa-beta"):
        PruneSpec.create("wanda", 0.7, allocation="lsa", lsa_beta=0.7)


# --- allocations as files -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_written_allocation_reproduces_masks(method, tmp_path):
    samples = calibration()
    model, layers = model_and_layers()
    spec = PruneSpec.create(method, 0.6, allocation="owl", owl_lambda=0.1, calib_seqlen=20)
    record = prune(model, layers, spec, samples, progress=False)
    mapping = allocation_mapping(record.details["allocation"], layers)
    assert set(mapping) == set(layers) and len(set(mapping.values())) == 2
    path = write_allocation_json(mapping, tmp_path)
    assert path.name == "allocation.json" and json.loads(path.read_text()) == mapping

    again, again_layers = model_and_layers()
    file_spec = PruneSpec.create(method, 0.6, allocation=str(path), calib_seqlen=20)
    assert file_spec.allocation_plugin.name == "file" and len(file_spec.allocation_sha256) == 64
    assert file_spec.describe()["allocation_sha256"] == file_spec.allocation_sha256
    replay = prune(again, again_layers, file_spec, samples, progress=False)
    for name in layers:
        assert torch.equal(replay.changes[name].mask, record.changes[name].mask), name
        assert torch.equal(linear_weight(again_layers[name]), linear_weight(layers[name])), name
    assert replay.details["allocation"]["layers"] == mapping
    # a uniform run's mapping: every layer at the target
    assert set(allocation_mapping(None, layers, 0.6).values()) == {0.6}


def write(tmp_path, mapping, name="a.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(mapping))
    return str(path)


def test_bad_allocation_files(tmp_path):
    samples = calibration(count=2)
    model, layers = model_and_layers()
    sizes = {n: linear_weight(m).numel() for n, m in layers.items()}
    good = dict.fromkeys(layers, 0.5)

    def run(mapping, sparsity=0.5):
        spec = PruneSpec.create("wanda", sparsity, allocation=write(tmp_path, mapping), calib_seqlen=20)
        return prune(model, layers, spec, samples, progress=False)

    cases = [
        ({**good, "model.decoder.layers.9.fc1": 0.5}, "not a pruned module"),
        ({k: v for k, v in list(good.items())[1:]}, "no sparsity for pruned module"),
        ({**good, next(iter(good)): 1.0}, r"must be in \[0, 1\)"),
        ({**good, next(iter(good)): "half"}, r"must be in \[0, 1\)"),
        (dict.fromkeys(layers, 0.52), "does not match --sparsity"),
        ([0.5], "JSON object"),
    ]
    for mapping, message in cases:
        with pytest.raises(PrunescopeError, match=message) as caught:
            run(mapping)
        assert "\n" not in str(caught.value)
    # within the tolerance: a weighted mean off by < 1e-3 is accepted
    big = max(sizes, key=sizes.get)
    shifted = {**good, big: 0.5 + 0.0009 * sum(sizes.values()) / sizes[big]}
    run(shifted)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(PrunescopeError, match="not valid JSON"):
        PruneSpec.create("wanda", 0.5, allocation=str(tmp_path / "broken.json"))
    with pytest.raises(PrunescopeError, match="does not exist"):
        PruneSpec.create("wanda", 0.5, allocation=str(tmp_path / "missing.json"))
    path = write(tmp_path, good, "changed.json")
    with pytest.raises(PrunescopeError, match="changed"):
        PruneSpec.create("wanda", 0.5, allocation=path, allocation_sha256="0" * 64)


def test_cli_bad_allocation_file_exits_2(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from prunescope.cli import app
    from prunescope.models import load_model

    layers = prunable_layers(load_model(str(tiny_model_dir), "float32", "cpu").model)
    path = write(tmp_path, {**dict.fromkeys(layers, 0.5), "lm_head": 0.5})
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "prune", str(tiny_model_dir), "--out", str(out), "--method", "wanda", "--sparsity", "0.5",
            "--allocation", path, "--calib-samples", "2", "--calib-seqlen", "16", "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "not a pruned module" in result.output and not out.exists()


# --- pictures ----------------------------------------------------------------------------------------------


def test_heatmaps_and_generic_section(tmp_path):
    model, layers = model_and_layers()
    spec = PruneSpec.create("wanda", 0.7, allocation="dlp", calib_seqlen=20)
    record = prune(model, layers, spec, calibration(count=2), progress=False)
    allocation = record.details["allocation"]
    mapping = allocation_mapping(allocation, layers)
    plot_allocation_heatmap(mapping, tmp_path / "one.png", title="dlp")
    plot_allocation_heatmaps(
        {"uniform": allocation_mapping(None, layers, 0.7), "dlp": mapping}, tmp_path / "sweep.png"
    )
    plot_allocation(allocation, tmp_path / "bars.png")
    for name in ("one.png", "sweep.png", "bars.png"):
        assert (tmp_path / name).stat().st_size > 1000
    lines = allocation_section({"allocation": allocation})
    assert lines[0] == "## Block sparsity (dlp)" and any("model.decoder.layers.1" in line for line in lines)
