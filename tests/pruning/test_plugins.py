"""Pruning plug-ins: a toy method registered from this file alone runs through `prune` / `restore`, the
block-by-block driver and the from-disk path; its options validate, describe and flatten like the built-ins'.

The `toy_method` fixture registers it for one test (and unregisters it after), so command-line tests of
study, sweep and prune can use it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import pytest
import torch

from prunescope.errors import PrunescopeError
from prunescope.layers import linear_weight, prunable_layers
from prunescope.pruning import METHODS, PruneSpec, option_fields, prune, restore
from prunescope.pruning import spec as spec_module
from prunescope.pruning.registry import NoOptions, register_method
from tests.helpers import TOY, LargestOptions, largest_scores, tiny_opt, token_samples

calibration = partial(token_samples, count=3, seqlen=16)


def dense_weights(layers) -> dict[str, torch.Tensor]:
    return {name: linear_weight(module).detach().clone() for name, module in layers.items()}


@pytest.mark.parametrize("scope", ["layer", "row", "global"])
def test_toy_method_prunes_the_largest_weights(toy_method, scope):
    model = tiny_opt()
    layers = prunable_layers(model)
    dense = dense_weights(layers)
    spec = PruneSpec.create(TOY, 0.5, scope=scope, largest_power=2.0)
    record = prune(model, layers, spec, progress=False)
    # In score space: ties of 1 / (1 + |W|^2) in float32 make |W| itself an unsafe reference.
    scores = {name: largest_scores(weight, spec, 0) for name, weight in dense.items()}
    pruned = torch.cat([scores[n][c.mask] for n, c in record.changes.items()])
    kept = torch.cat([scores[n][~c.mask] for n, c in record.changes.items()])
    assert pruned.numel() == round(0.5 * (pruned.numel() + kept.numel()))
    assert float(pruned.mean()) < float(kept.mean())
    for name, change in record.changes.items():
        weight, mask = dense[name], change.mask
        assert bool((linear_weight(layers[name])[mask] == 0).all())
        assert torch.equal(linear_weight(layers[name])[~mask], weight[~mask])
        if scope == "layer":
            assert int(mask.sum()) == round(0.5 * mask.numel())
            assert float(scores[name][mask].max()) <= float(scores[name][~mask].min())
        if scope == "row":
            assert bool((mask.sum(1) == mask.shape[1] // 2).all())
            high = scores[name].masked_fill(~mask, -1.0).max(1).values
            assert bool((high <= scores[name].masked_fill(mask, 2.0).min(1).values).all())
    if scope == "global":
        assert float(pruned.max()) <= float(kept.min())
    restore(model, record)
    assert all(torch.equal(linear_weight(m), dense[n]) for n, m in layers.items())


def test_toy_method_through_the_block_driver(toy_method):
    """With a refinement the toy runs block by block; its masks depend on the weights only, so every row
    keeps the number of zeros of the plain run."""
    model = tiny_opt()
    layers = prunable_layers(model)
    dense = dense_weights(layers)
    plain = prune(model, layers, PruneSpec.create(TOY, 0.5), progress=False)
    rows = {name: change.mask.sum(1) for name, change in plain.changes.items()}
    restore(model, plain)
    spec = PruneSpec.create(TOY, 0.5, refine="dsnot", refine_threshold=0.0, calib_seqlen=16)
    record = prune(model, layers, spec, calibration(), progress=False)
    assert set(record.details["refine"]) == set(layers)
    assert all(torch.equal(change.mask.sum(1), rows[name]) for name, change in record.changes.items())
    assert any(not torch.equal(c.mask, plain.changes[n].mask) for n, c in record.changes.items())
    restore(model, record)
    assert all(torch.equal(linear_weight(m), dense[n]) for n, m in layers.items())


def test_toy_method_from_disk_matches_memory(toy_method, tiny_model_dir, tmp_path):
    from prunescope.checkpoint import prune_checkpoint
    from prunescope.models import load_model

    spec = PruneSpec.create(TOY, 0.4, scope="global", largest_power=0.5)
    result = prune_checkpoint(tiny_model_dir, tmp_path / "out", spec, progress=False)
    loaded = load_model(str(tiny_model_dir), "float32", "cpu")
    record = prune(loaded.model, prunable_layers(loaded.model), spec, progress=False)
    assert {n: v["pruned"] for n, v in result.layers.items()} == {
        n: int(c.mask.sum()) for n, c in record.changes.items()
    }
    on_disk = load_model(str(tmp_path / "out"), "float32", "cpu").model
    for name, module in prunable_layers(on_disk).items():
        assert torch.equal(linear_weight(module), linear_weight(loaded.model.get_submodule(name))), name


def test_toy_options_validate_describe_and_flatten(toy_method):
    spec = PruneSpec.create(TOY, 0.5, largest_power=2.0, ria_alpha=0.3, owl_m=4.0)  # others: ignored
    assert spec.method_options == LargestOptions(power=2.0)
    assert spec.flat_options() == {"largest_power": 2.0}
    assert spec.describe() == {
        "method": TOY, "sparsity": 0.5, "scope": "layer", "pattern": "unstructured", "seed": 0,
        "largest_power": 2.0,
    }  # fmt: skip
    assert not spec.needs_calibration
    assert PruneSpec.create(**{"method": TOY, **spec.flat_options()}).method_options == spec.method_options
    owl = PruneSpec.create(TOY, 0.5, allocation="owl", owl_lambda=0.1)
    assert owl.flat_options() == {"largest_power": 1.0, "owl_m": 5.0, "owl_lambda": 0.1}
    assert owl.describe()["allocation"] == "owl" and owl.needs_calibration
    with pytest.raises(PrunescopeError, match="largest-power"):
        PruneSpec.create(TOY, 0.5, largest_power=0.0)
    with pytest.raises(PrunescopeError, match="ria-alpha"):  # a bad value is an error even when unused
        PruneSpec.create(TOY, 0.5, ria_alpha=-1.0)
    with pytest.raises(PrunescopeError, match="unknown pruning option 'power'"):
        PruneSpec.create(TOY, 0.5, power=2.0)
    with pytest.raises(PrunescopeError, match="must be LargestOptions"):
        PruneSpec(method=TOY, method_options=NoOptions())
    toy = [f for f in option_fields() if f.plugin == TOY]
    assert [(f.name, f.type, f.default, f.kind, f.attribute) for f in toy] == [
        ("largest_power", float, 1.0, "method", "power")
    ]
    assert toy[0].help.startswith("largest:")
    # The older table names are views of the registry, computed when read.
    assert spec_module.NATURAL_SCOPE[TOY] == "layer" and TOY not in spec_module.CALIBRATED


def test_registry_names_errors_and_clashes(toy_method):
    assert METHODS.names() == ("magnitude", "random", "wanda", "sparsegpt", "ria", TOY)
    with pytest.raises(PrunescopeError, match=f"unknown method 'obs'; choose one of magnitude, .*, {TOY}"):
        PruneSpec.create("obs")
    with pytest.raises(ValueError, match="already registered"):
        METHODS.register(toy_method)
    with pytest.raises(ValueError, match="'ria_alpha' is already registered"):
        register_method(
            "other", cite="", natural_scope="global", score=largest_scores, options=_Alpha, prefix="ria"
        )
    with pytest.raises(TypeError, match="either stats and prune_layer, or score"):
        register_method("neither", cite="", natural_scope="global")
    assert "other" not in METHODS and "neither" not in METHODS


@dataclass(frozen=True)
class _Alpha:
    alpha: float = field(default=1.0, metadata={"help": "clashes with RIA's flat name."})


def test_built_in_options_keep_their_names_and_defaults():
    flat = {f.name: f.default for f in option_fields()}
    assert flat == {
        "sparsegpt_damp": 0.01, "sparsegpt_blocksize": 128, "ria_alpha": 0.5, "owl_m": 5.0,
        "owl_lambda": 0.08, "dlp_alpha": 0.15, "lsa_beta": -1.0, "evo_generations": 40, "evo_offspring": 16,
        "evo_levels": 8, "evo_stage_tokens": "512,4096", "evo_survivors": "2,1", "evo_seed": 0,
        "evo_memory_gb": 4.0, "refine_cycles": 50, "refine_threshold": 0.1,
    }  # fmt: skip
    old = PruneSpec.create("sparsegpt", 0.5, damp=0.02, blocksize=64)
    assert old.flat_options() == {"sparsegpt_damp": 0.02, "sparsegpt_blocksize": 64}
    assert (old.describe()["damp"], old.describe()["blocksize"]) == (0.02, 64)  # run.json keys unchanged
    with pytest.raises(PrunescopeError, match="given twice"):
        PruneSpec.create("sparsegpt", 0.5, damp=0.02, sparsegpt_damp=0.03)
    with pytest.raises(PrunescopeError, match="sparsegpt-blocksize"):
        PruneSpec.create("sparsegpt", 0.5, sparsegpt_blocksize=0)
    full = PruneSpec.create("ria", 0.5, allocation="owl", refine="dsnot", ria_alpha=0.25, refine_cycles=3)
    assert full.flat_options() == {
        "ria_alpha": 0.25, "owl_m": 5.0, "owl_lambda": 0.08, "refine_cycles": 3, "refine_threshold": 0.1,
    }  # fmt: skip
