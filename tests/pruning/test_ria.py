"""RIA: first-block masks against the formula recomputed here from the dense block's inputs."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from prunescope.errors import PrunescopeError
from prunescope.layers import linear_weight, prunable_layers
from prunescope.pruning import PruneSpec, prune, restore
from tests.helpers import layer_inputs, tiny_llama, tiny_opt, token_samples

VOCAB = 96


pytestmark = pytest.mark.usefixtures("one_thread")


def build(arch: str) -> torch.nn.Module:
    return tiny_opt(VOCAB, heads=2) if arch == "opt" else tiny_llama(VOCAB)


calibration = partial(token_samples, seqlen=20, seed=3, vocab_size=VOCAB)


def expected_mask(weight: torch.Tensor, inputs: list[torch.Tensor], alpha: float, scope: str, pattern=None):
    """(|W|/column sum + |W|/row sum) * (||X_j||_2)^a; ||X_j||^2 = mean over samples of sum over tokens."""
    w = weight.double().abs()
    sq = torch.stack([x.double().reshape(-1, x.shape[-1]).pow(2).sum(0) for x in inputs]).mean(0)
    score = (w / w.sum(0, keepdim=True) + w / w.sum(1, keepdim=True)) * sq.sqrt().pow(alpha)
    mask = torch.zeros_like(score, dtype=torch.bool)
    if pattern is not None:
        n, m = pattern
        groups = score.reshape(score.shape[0], -1, m)
        low = groups.argsort(dim=2)[:, :, : m - n]
        return mask.reshape(groups.shape).scatter_(2, low, True).reshape(score.shape)
    if scope == "row":
        k = round(0.5 * score.shape[1])
        return mask.scatter_(1, score.argsort(dim=1)[:, :k], True)
    k = round(0.5 * score.numel())
    flat = mask.reshape(-1)
    flat[score.reshape(-1).argsort()[:k]] = True
    return flat.reshape(score.shape)


@pytest.mark.parametrize(
    ("arch", "scope", "alpha", "pattern"),
    [
        ("opt", None, 0.5, None),
        ("llama", None, 0.5, None),
        ("opt", "row", 1.0, None),
        ("llama", None, 0.5, (2, 4)),
    ],
)
def test_first_block_masks_equal_formula(arch, scope, alpha, pattern):
    model = build(arch)
    layers = prunable_layers(model)
    first = {n: m for n, m in layers.items() if ".layers.0." in n}
    samples = calibration()
    inputs = layer_inputs(model, first, samples)
    dense = {n: linear_weight(m).detach().clone() for n, m in layers.items()}
    spec = PruneSpec.create(
        "ria",
        None if pattern else 0.5,
        f"{pattern[0]}:{pattern[1]}" if pattern else "unstructured",
        scope=scope,
        ria_alpha=alpha,
        calib_seqlen=20,
    )
    record = prune(model, layers, spec, samples, progress=False)
    total = agree = 0
    for name in first:
        expected = expected_mask(dense[name], inputs[name], alpha, scope or "layer", pattern)
        got = record.changes[name].mask
        agree += int((got == expected).sum())
        total += got.numel()
        assert torch.equal(got, expected), f"{name}: {(got != expected).sum()} of {got.numel()} differ"
        kept = ~got
        assert torch.equal(linear_weight(first[name])[kept], dense[name][kept])  # no weight update
    assert agree == total
    assert record.pruned_count() == round(0.5 * record.total_count())
    restore(model, record)
    assert all(torch.equal(linear_weight(m), dense[n]) for n, m in layers.items())


def test_ria_differs_from_wanda_and_validates_scope():
    model = build("opt")
    layers = prunable_layers(model)
    samples = calibration()
    ria = prune(model, layers, PruneSpec.create("ria", 0.5, calib_seqlen=20), samples, progress=False)
    ria_masks = {n: c.mask for n, c in ria.changes.items()}
    restore(model, ria)
    wanda = prune(model, layers, PruneSpec.create("wanda", 0.5, calib_seqlen=20), samples, progress=False)
    differing = sum(int((ria_masks[n] != c.mask).sum()) for n, c in wanda.changes.items())
    assert differing > 0  # a per-matrix relative score, not Wanda's per-row ranking
    assert PruneSpec.create("ria", 0.5).effective_scope == "layer"
    with pytest.raises(PrunescopeError, match="layer or row"):
        PruneSpec.create("ria", 0.5, scope="global")
    with pytest.raises(PrunescopeError, match="ria-alpha"):
        PruneSpec.create("ria", 0.5, ria_alpha=-1.0)
