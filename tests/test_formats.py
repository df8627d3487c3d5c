"""Every registered format plugs into the study the same way: same predictions, its own bytes and FLOPs."""

from __future__ import annotations

import torch

from prunescope import PruneSpec, prunable_layers, prune
from prunescope.formats import FORMATS, convert
from prunescope.structure import layer_table

from .conftest import tiny_opt


def test_each_format_matches_masked_and_reverts():
    model = tiny_opt()
    layers = prunable_layers(model)
    prune(model, layers, PruneSpec.create("magnitude", 0.5), progress=False)
    ids = torch.randint(0, 320, (2, 12))
    masked = model(ids).logits
    before = {n: m.weight.clone() for n, m in layers.items()}
    for name in FORMATS:
        conversion = convert(model, list(layers), name)
        torch.testing.assert_close(model(ids).logits, masked, rtol=1e-4, atol=1e-4, msg=name)
        table = layer_table(model).set_index("module")
        rows = table.loc[list(layers)]
        assert (rows["weight_nonzero"] == [int((w != 0).sum()) for w in before.values()]).all(), name
        if name == "bitmask":  # load sparse, compute dense: fewer bytes, the same arithmetic
            assert (rows["flops_per_token"] == 2 * rows["weights"]).all()
            assert (rows["stored_bytes"] < 4 * rows["params"]).all()
        if name == "auto":
            assert set(rows["format"]) <= {"dense", "bitmask", "csr16"}
        conversion.revert()
        for layer_name, module in prunable_layers(model).items():
            assert torch.equal(module.weight, before[layer_name]), (name, layer_name)
