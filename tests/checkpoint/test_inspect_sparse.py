"""`inspect` of a sparse-layout checkpoint (`prune --format sparse`, with or without `--quantize`): each
pruned weight is one "bitmask" weight of its module, at the real bytes of its stored parts, its nnz from
the manifest (checked against the mask bits with --zeros)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from prunescope.checkpoint import Checkpoint, inspect_checkpoint, load_sparse, read_manifest
from prunescope.errors import PrunescopeError
from prunescope.quantization import QuantOptions, quantized_storage_bytes
from tests.helpers import run_cli

QUANTIZE = [None, "int8", "int4"]


@pytest.fixture(scope="module", params=QUANTIZE, ids=lambda q: q or "plain")
def pruned(request, tiny_model_dir, tmp_path_factory):
    """(folder holding hf/ and sparse/ of one prune, quantizer or None)."""
    out = tmp_path_factory.mktemp("pruned") / "out"
    args = ["prune", tiny_model_dir, "--out", out, "--format", "both", "--sparsity", "0.5", "--no-progress"]
    if request.param:
        args += ["--quantize", request.param, "--group-size", "16"]
    run_cli(args)
    return out, request.param


def _label(bits: str | None) -> str:
    """The quantization column of a layer pruned with `--quantize bits --group-size 16` ("int4-g16")."""
    return QuantOptions(bits, 16).label if bits else ""


def _pruned_rows(layers: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    return layers.set_index("module").loc[list(manifest["layers"])]


def test_pruned_weights_are_rows_at_their_stored_bytes(pruned) -> None:
    out, bits = pruned
    folder = out / "sparse"
    result = inspect_checkpoint(folder)
    assert not result.missing and not result.unmapped
    manifest = read_manifest(folder)
    checkpoint = Checkpoint(folder)
    summary = result.summary
    assert summary["stored_bytes"] == summary["checkpoint_tensor_bytes"] == checkpoint.nbytes
    assert summary["layout"] == "sparse" and summary["pruned_layer_nonzero_from"] == "manifest"
    assert summary["pruned_layers"] == len(manifest["layers"])
    assert summary["quantization"] == (_label(bits) or "none")
    packed = load_sparse(folder, "bitmask")
    rows = _pruned_rows(result.layers, manifest)
    for module, info in manifest["layers"].items():
        row, (out_features, in_features) = rows.loc[module], info["shape"]
        # A hand count from the header: numel x itemsize of every stored part of the weight.
        parts = [e for name, e in checkpoint.entries.items() if name.startswith(info["tensor"] + ".")]
        hand = sum(e.numel * torch.empty(0, dtype=e.torch_dtype).element_size() for e in parts)
        assert len(parts) == {None: 3, "int8": 4, "int4": 5}[bits]
        assert row["weight_bytes"] == hand and row["stored_bytes"] == hand + 4 * out_features  # fp32 bias
        options = QuantOptions(bits, 16) if bits else None
        expected = quantized_storage_bytes(
            (out_features, in_features), info["nnz"], "bitmask", options, torch.float32
        )
        assert hand == sum(expected.values())
        if bits != "int4":  # the loaded layer (BitmaskLinear, or BitmaskInt8Linear) counts the same bytes
            assert hand == sum(packed.get_submodule(module).weight_bytes().values())
        assert row["format"] == "bitmask" and row["quantization"] == _label(bits)
        assert row["weights"] == out_features * in_features and row["weight_nonzero"] == info["nnz"]
        assert row["bits_per_weight"] == pytest.approx(8 * hand / row["weights"])
        assert row["flops_per_token"] == 2 * out_features * in_features
        assert row["nonzero_flops_per_token"] == 2 * info["nnz"]
    # 32/64 inputs, fp32: values or codes of half the weights + 1 bit of mask + 64 bits of offset per row
    # (+ scales, int4 zeros, per 16 columns): far below the 32 bits of the dense weight.
    low, high = {None: (17, 20), "int8": (7, 8.5), "int4": (6.5, 8)}[bits]
    assert low < summary["pruned_layer_bits_per_weight"] < high
    # The tied lm_head is counted once, on the embedding.
    head = result.layers.set_index("module").loc["lm_head"]
    assert head["tied_to"] and head["params"] == 0 and head["flops_per_token"] > 0
    checkpoint.close()


def test_manifest_sparsity_matches_the_hf_layout_and_the_mask_bits(pruned) -> None:
    out, _ = pruned
    manifest = read_manifest(out / "sparse")
    sparse = inspect_checkpoint(out / "sparse")
    audited = inspect_checkpoint(out / "sparse", count_zeros=True)
    hf = inspect_checkpoint(out / "hf", count_zeros=True)
    assert sparse.summary["pruned_layer_sparsity"] == hf.summary["pruned_layer_sparsity"] > 0.45
    assert audited.summary["pruned_layer_nonzero_from"] == "mask bits"
    same = ["module", "params", "nonzero", "weights", "weight_nonzero", "flops_per_token"]
    same += ["nonzero_flops_per_token"]
    assert audited.layers[same].to_dict("records") == hf.layers[same].to_dict("records")
    for key in ("nonzero", "sparsity", "pruned_layer_sparsity", "nonzero_flops_per_token", "params"):
        assert audited.summary[key] == hf.summary[key]
    rows = _pruned_rows(sparse.layers, manifest)
    assert rows["weight_nonzero"].tolist() == _pruned_rows(hf.layers, manifest)["weight_nonzero"].tolist()


def _copy(pruned, tmp_path):
    folder = tmp_path / "sparse"
    shutil.copytree(pruned[0] / "sparse", folder)
    return folder


def test_a_manifest_nnz_that_disagrees_with_the_header_is_corrupt(pruned, tmp_path) -> None:
    folder = _copy(pruned, tmp_path)
    manifest = json.loads((folder / "sparse_manifest.json").read_text())
    first = next(iter(manifest["layers"].values()))
    first["nnz"] -= 2  # int4 packs two codes a byte: 2 fewer is one byte fewer
    (folder / "sparse_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PrunescopeError, match=r"^corrupt sparse checkpoint .*\.values holds") as error:
        inspect_checkpoint(folder)
    assert "\n" not in str(error.value)


def test_zeros_checks_the_mask_bits_against_the_manifest(pruned, tmp_path) -> None:
    folder = _copy(pruned, tmp_path)
    name = next(iter(read_manifest(folder)["layers"].values()))["tensor"] + ".mask"
    file = next(folder.glob("sparse*.safetensors"))
    metadata = Checkpoint(folder).metadata
    tensors = load_file(file)
    tensors[name][0, 0] ^= 1 << 3  # one more or one fewer non-zero than the manifest says
    save_file(tensors, file, metadata=metadata)
    assert inspect_checkpoint(folder).summary["stored_bytes"] > 0  # the header alone still reads fine
    with pytest.raises(PrunescopeError, match=rf"^corrupt sparse checkpoint .*{name} has \d+ set bits"):
        inspect_checkpoint(folder, count_zeros=True)


def test_cli_inspect_sparse_layers(pruned, tmp_path) -> None:
    out, bits = pruned
    table = tmp_path / "table"
    result = run_cli(["inspect", out / "sparse", "--layers", "--out", table])
    text = " ".join(result.output.split())  # the console wraps long lines
    assert "missing parameters" not in text and "prunable layers nan" not in text
    assert "nnz from the manifest" in text and "sparse layout: 12 bitmask layers" in text  # 2 blocks x 6
    layers = pd.read_csv(table / "layers.csv", keep_default_na=False)
    manifest = read_manifest(out / "sparse")
    rows = _pruned_rows(layers, manifest)
    assert (rows["format"] == "bitmask").all() and (rows["quantization"] == _label(bits)).all()
    assert (
        int(layers["stored_bytes"].sum())
        == json.loads((table / "summary.json").read_text())["checkpoint_tensor_bytes"]
    )
