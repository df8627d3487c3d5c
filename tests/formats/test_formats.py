"""Every registered format plugs into the study the same way: same predictions, its own bytes and FLOPs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from prunescope import PrunescopeError, prunable_layers
from prunescope.formats import FORMATS, SparseFormat, check_format_support, convert, format_class
from prunescope.formats.base import NoOptions
from prunescope.formats.bsr import BSRLinear, BSROptions
from prunescope.formats.semi_structured import SemiStructuredLinear
from prunescope.structure import layer_table
from tests.helpers import magnitude_pruned_opt


def test_each_format_matches_masked_and_reverts():
    model, layers = magnitude_pruned_opt()
    ids = torch.randint(0, 320, (2, 12))
    masked = model(ids).logits
    before = {n: m.weight.clone() for n, m in layers.items()}
    for name in FORMATS:
        try:
            check_format_support(name, torch.float32, "cpu")
        except PrunescopeError:
            assert name == "semi-structured"  # CUDA only (tests/hardware/test_cuda.py)
            continue
        conversion = convert(model, list(layers), name)
        if format_class(name).lossless:
            why = f"{name} differs from masked (a quantizing format declares `lossless = False`)"
            torch.testing.assert_close(model(ids).logits, masked, rtol=1e-4, atol=1e-4, msg=why)
        else:  # a quantizing format: close, not equal; its revert is exact all the same
            assert (model(ids).logits - masked).abs().max() <= 0.1 * masked.abs().max(), name
        table = layer_table(model).set_index("module")
        rows = table.loc[list(layers)]
        kept = [int((w != 0).sum()) for w in before.values()]
        if format_class(name).lossless:
            assert (rows["weight_nonzero"] == kept).all(), name
        else:  # a code rounded to 0 is not stored
            assert (rows["weight_nonzero"] <= kept).all(), name
        if name == "bitmask":  # load sparse, compute dense: fewer bytes, the same arithmetic
            assert (rows["flops_per_token"] == 2 * rows["weights"]).all()
            assert (rows["stored_bytes"] < 4 * rows["params"]).all()
        if name == "auto":
            assert set(rows["format"]) <= {"dense", "bitmask", "csr16"}
        conversion.revert()
        for layer_name, module in prunable_layers(model).items():
            assert torch.equal(module.weight, before[layer_name]), (name, layer_name)


def test_every_registered_format_keeps_the_contract():
    for name in FORMATS:
        cls = format_class(name)
        assert issubclass(cls, SparseFormat) and cls.format_name == name, name
        assert dataclasses.is_dataclass(cls.Options), name
        assert isinstance(cls.options(None), cls.Options), name
        with pytest.raises(PrunescopeError, match="has no option 'nope'"):
            cls.options({"nope": 1})


def test_options_are_typed_and_validated_before_any_layer():
    assert BSRLinear.options({"block_size": 8}) == BSROptions(block_size=8)
    assert BSRLinear.options_from({"block_size": 4, "n_tokens": (1,)}) == BSROptions(4)  # others ignored
    assert format_class("csr").Options is NoOptions
    with pytest.raises(PrunescopeError, match="block size"):
        BSROptions(block_size=0)
    model = _pruned_tiny()
    layers = list(prunable_layers(model))
    before = {n: model.get_submodule(n).weight.clone() for n in layers}
    with pytest.raises(PrunescopeError, match="has no option"):
        convert(model, layers, "bsr", {"blocksize": 8})
    assert all(torch.equal(model.get_submodule(n).weight, w) for n, w in before.items())  # untouched
    conversion = convert(model, layers, "bsr", BSROptions(block_size=8))
    assert {model.get_submodule(n).block_size for n in layers} == {8}
    conversion.revert()
    assert all(torch.equal(model.get_submodule(n).weight, w) for n, w in before.items())


def _pruned_tiny():
    return magnitude_pruned_opt()[0]


def test_support_is_checked_on_the_base_class_and_by_from_dense():
    class Anywhere(SparseFormat):
        format_name = "anywhere"

    Anywhere.check_support(torch.float64, torch.device("meta"))  # the default accepts
    with pytest.raises(PrunescopeError, match="need CUDA"):
        check_format_support("semi-structured", torch.float16, "cpu")
    with pytest.raises(PrunescopeError, match="need CUDA"):
        SemiStructuredLinear.from_dense(torch.zeros(8, 8, dtype=torch.float16))


def test_semi_structured_refuses_old_gpus_and_other_dtypes_in_one_line(monkeypatch):
    import prunescope.formats.semi_structured as semi

    monkeypatch.setattr(semi, "compute_capability", lambda device: (7, 5))  # a T4
    with pytest.raises(PrunescopeError, match=r"compute capability >= 8.0; this GPU has 7.5"):
        SemiStructuredLinear.check_support(torch.float16, torch.device("cuda"))
    with pytest.raises(PrunescopeError, match="float16 or bfloat16"):
        SemiStructuredLinear.check_support(torch.float32, torch.device("cuda"))
    monkeypatch.setattr(semi, "compute_capability", lambda device: (8, 0))
    SemiStructuredLinear.check_support(torch.bfloat16, torch.device("cuda"))


def test_every_format_but_two_four_accepts_cuda_and_auto_picks_among_the_cuda_ones():
    from prunescope.formats.auto import CANDIDATES, CUDA_CANDIDATES, choose_format, default_candidates
    from prunescope.formats.gpu import triton_bitmask

    for name in ("bitmask", "csr16", "auto"):  # static checks: no GPU needed to say yes
        check_format_support(name, torch.float16, "cuda")
    assert default_candidates("cpu") == CANDIDATES
    assert default_candidates(torch.device("cuda", 0)) == CUDA_CANDIDATES
    assert set(CUDA_CANDIDATES) >= {"dense", "bitmask", "csr16", "csr"}
    # the same choice code on the CPU, with cuSPARSE's candidate among them
    weight = torch.randn(32, 64)
    weight[torch.rand(32, 64) < 0.8] = 0
    bias = torch.randn(32)
    module = choose_format(weight, bias, n_tokens=(1, 4), candidates=CUDA_CANDIDATES, repeats=2, cache="hot")
    # the Triton kernel is a candidate only where it can run (CUDA, or the CPU under TRITON_INTERPRET=1)
    try:
        triton_bitmask.check_usable(weight.device)
        runnable = set(CUDA_CANDIDATES)
    except PrunescopeError:
        runnable = set(CUDA_CANDIDATES) - {"bitmask-triton"}
    assert module.auto_choice in runnable and set(module.auto_timings) == runnable
    x = torch.randn(3, 64)
    torch.testing.assert_close(module(x), torch.nn.functional.linear(x, weight, bias), rtol=1e-4, atol=1e-4)


def test_auto_options_are_typed():
    from prunescope.formats.auto import AutoFormat, AutoOptions

    assert AutoFormat.options({"n_tokens": 8}) == AutoOptions(n_tokens=(8,))
    with pytest.raises(PrunescopeError, match="token counts"):
        AutoOptions(n_tokens=(0,))
    with pytest.raises(PrunescopeError, match="cache mode"):
        AutoOptions(cache="warm")
