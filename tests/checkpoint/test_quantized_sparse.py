"""`prune --quantize --format both`: the sparse layout stores the codes (int8, or int4 two per byte), scales
and zeros, and loads back to exactly the values the hf layout holds."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from prunescope.checkpoint import load_sparse, read_manifest
from prunescope.formats.bitmask_int8 import BitmaskInt8Linear
from prunescope.layers import linear_weight, prunable_layers
from tests.helpers import run_cli

CASES = [
    ("int8", ["--method", "magnitude"]),  # RTN after pruning, row block by row block
    (
        "int4",
        ["--method", "sparsegpt", "--quant-method", "gptq", "--calib-samples", "4", "--calib-seqlen", "16"],
    ),
]


@pytest.mark.parametrize(("bits", "method"), CASES, ids=["int8-rtn", "int4-gptq-joint"])
def test_sparse_layout_stores_codes_and_loads_the_hf_values(tiny_model_dir, tmp_path, bits, method):
    out = tmp_path / "pruned"
    args = ["prune", tiny_model_dir, "--out", out, "--format", "both", "--sparsity", "0.5", *method]
    run_cli([*args, "--quantize", bits, "--group-size", "16", "--no-progress"])
    manifest = read_manifest(out / "sparse")
    stored = {}
    for file in set(manifest["weight_map"].values()):
        stored.update(load_file(out / "sparse" / file))
    hf = AutoModelForCausalLM.from_pretrained(out / "hf")
    dense = load_sparse(out / "sparse")
    for name, info in manifest["layers"].items():
        out_features, in_features = info["shape"]
        group = 16 if bits == "int4" else in_features  # int8: one scale per row
        assert info["quantization"] == {"quantizer": bits, "group_size": group, "values": "codes"}
        values = stored[f"{info['tensor']}.values"]
        if bits == "int8":
            assert values.dtype == torch.int8 and values.numel() == info["nnz"]
            assert f"{info['tensor']}.zeros" not in stored
        else:
            assert values.dtype == torch.uint8 and values.numel() == (info["nnz"] + 1) // 2
            assert stored[f"{info['tensor']}.zeros"].shape == (out_features, in_features // 16)
        assert stored[f"{info['tensor']}.scales"].shape == (out_features, in_features // group)
        # the codes load back to the very values the hf layout holds, zeros where pruned
        expected = linear_weight(hf.get_submodule(name))
        assert torch.equal(linear_weight(dense.get_submodule(name)), expected)
        assert int((expected != 0).sum()) == info["nnz"]
    record = json.loads((out / "prune.json").read_text())
    assert record["quantization"]["values"] == "hf/: dequantized, sparse/: codes"
    sparse_bytes = sum(p.stat().st_size for p in (out / "sparse").glob("*.safetensors"))
    hf_bytes = sum(p.stat().st_size for p in (out / "hf").glob("*.safetensors"))
    assert sparse_bytes < hf_bytes

    if bits == "int8":  # in bitmask form the int8 codes run as BitmaskInt8Linear, on the stored buffers
        model = load_sparse(out / "sparse", "bitmask")
        layers = [model.get_submodule(name) for name in manifest["layers"]]
        assert all(isinstance(layer, BitmaskInt8Linear) for layer in layers)
        ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, hf(ids).logits, rtol=1e-4, atol=1e-4)
    assert len(manifest["layers"]) == len(prunable_layers(hf))
