"""Magnitude pruning: exact counts, deterministic ties, streaming selection, scopes, patterns, restore."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prunescope import PrunescopeError, PruneSpec, prunable_layers, prune, restore
from prunescope.pruning import selection
from prunescope.pruning.record import pack_mask, unpack_mask
from tests.helpers import tiny_opt


def _weights(layers):
    return {n: m.weight.detach().clone() for n, m in layers.items()}


def test_global_magnitude_zeroes_exactly_round_s_n():
    model = tiny_opt()
    layers = prunable_layers(model)
    total = sum(m.weight.numel() for m in layers.values())
    for sparsity in (0.0, 0.3, 0.5, 0.77):
        record = prune(model, layers, PruneSpec.create("magnitude", sparsity), progress=False)
        zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
        assert zeros == round(sparsity * total) == record.pruned_count()
        restore(model, record)


def test_global_threshold_is_global_not_per_layer():
    # Two layers with very different scales: a global threshold prunes the small-scale layer far more.
    small, large = nn.Linear(16, 16, bias=False), nn.Linear(16, 16, bias=False)
    with torch.no_grad():
        small.weight.copy_(torch.linspace(0.01, 0.1, 256).view(16, 16))
        large.weight.copy_(torch.linspace(1.0, 10.0, 256).view(16, 16))
    prune(
        nn.Sequential(small, large),
        {"0": small, "1": large},
        PruneSpec.create("magnitude", 0.5),
        progress=False,
    )
    assert int((small.weight == 0).sum()) == 256 and int((large.weight == 0).sum()) == 0


def test_ties_are_broken_by_layer_then_index():
    a, b = nn.Linear(4, 2, bias=False), nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        a.weight.fill_(1.0)
        b.weight.fill_(1.0)
    prune(nn.Sequential(a, b), {"a": a, "b": b}, PruneSpec.create("magnitude", 0.25), progress=False)
    # 4 of 16 equal weights: the first four flat indices of the first layer.
    assert a.weight.flatten().tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert b.weight.eq(1).all()


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4),
    k_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
)
def test_streaming_selection_matches_a_full_sort(sizes, k_fraction, seed, ties):
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(n, generator=generator) for n in sizes]
    if ties:
        tensors = [t.round() for t in tensors]  # many equal values, negative zeros included
    k = round(k_fraction * sum(sizes))
    masks = selection.global_smallest_masks(lambda i: tensors[i], len(tensors), k)
    got = torch.cat([masks(i) for i in range(len(tensors))])
    flat = torch.cat(tensors)
    expected = torch.zeros_like(got)
    expected[torch.sort(flat, stable=True).indices[:k]] = True
    assert torch.equal(got, expected)


def test_float_keys_preserve_order():
    values = torch.tensor([-float("inf"), -3.5, -1e-30, 0.0, 1e-30, 2.0, float("inf")])
    keys = selection.float_keys(values)
    assert torch.all(keys[1:] > keys[:-1])
    assert selection.float_keys(torch.tensor([-0.0])) == selection.float_keys(torch.tensor([0.0]))


def test_layer_and_row_scopes():
    model = tiny_opt()
    layers = prunable_layers(model)
    record = prune(model, layers, PruneSpec.create("magnitude", 0.5, scope="layer"), progress=False)
    for m in layers.values():
        assert int((m.weight == 0).sum()) == round(0.5 * m.weight.numel())
    restore(model, record)
    prune(model, layers, PruneSpec.create("magnitude", 0.25, scope="row"), progress=False)
    for m in layers.values():
        per_row = (m.weight == 0).sum(dim=1)
        assert torch.all(per_row == round(0.25 * m.weight.shape[1]))


@pytest.mark.parametrize("method", ["magnitude", "random"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_n_m_pattern_is_exact_in_every_group(method, pattern):
    model = tiny_opt()
    layers = prunable_layers(model)
    n, m = map(int, pattern.split(":"))
    prune(model, layers, PruneSpec.create(method, pattern=pattern), progress=False)
    for module in layers.values():
        groups = module.weight.reshape(module.weight.shape[0], -1, m)
        assert torch.all((groups != 0).sum(-1) <= n)
        assert torch.all((groups == 0).sum(-1) >= m - n)


def test_random_is_seeded_and_differs_from_magnitude():
    masks = []
    for method, seed in (("random", 1), ("random", 1), ("random", 2), ("magnitude", 1)):
        model = tiny_opt()
        layers = prunable_layers(model)
        prune(model, layers, PruneSpec.create(method, 0.5, seed=seed), progress=False)
        masks.append(torch.cat([(m.weight == 0).flatten() for m in layers.values()]))
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2]) and not torch.equal(masks[0], masks[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_restore_is_exact_and_record_small(dtype):
    model = tiny_opt().to(dtype)
    layers = prunable_layers(model)
    before = _weights(layers)
    record = prune(model, layers, PruneSpec.create("magnitude", 0.3), progress=False)
    dense_bytes = sum(w.numel() * w.element_size() for w in before.values())
    # Packed mask (1 bit/weight) + removed values only: far below a copy of the pruned layers.
    assert record.nbytes < 0.35 * dense_bytes + sum(w.numel() for w in before.values()) / 8 + 64 * len(layers)
    restore(model, record)
    for name, module in layers.items():
        assert torch.equal(module.weight, before[name])


def test_pack_unpack_roundtrip():
    mask = torch.rand(7, 13) > 0.5
    assert torch.equal(unpack_mask(pack_mask(mask), mask.shape), mask)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sparsity=1.0), "sparsity must be in"),
        (dict(sparsity=-0.1), "sparsity must be in"),
        (dict(pattern="5:4"), "need 1 <= N <= M"),
        (dict(pattern="2:4", sparsity=0.3), "fixes sparsity"),
        (dict(pattern="2-4"), "pattern must be"),
        (dict(method="obs"), "unknown method"),
        (dict(scope="block"), "unknown scope"),
    ],
)
def test_bad_specs(kwargs, message):
    with pytest.raises(PrunescopeError, match=message):
        PruneSpec.create(**kwargs)


def test_pattern_needs_divisible_inputs():
    layer = nn.Linear(6, 4)
    with pytest.raises(PrunescopeError, match="divisible by 4"):
        prune(
            nn.Sequential(layer), {"0": layer}, PruneSpec.create("magnitude", pattern="2:4"), progress=False
        )
