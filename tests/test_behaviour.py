"""Behaviour metrics: identity is perfect, padding never counts, perplexity matches the usual loss."""

from __future__ import annotations

import math

import torch

from prunescope.evaluation.behaviour import compare, compute_reference
from prunescope.evaluation.corpus import builtin_texts, make_batches, tokenize_windows

from .conftest import make_tokenizer, tiny_opt


def _setup(batch_size: int, seqlen: int = 24):
    tokenizer = make_tokenizer()
    model = tiny_opt(vocab_size=len(tokenizer))
    windows = tokenize_windows(tokenizer, builtin_texts()[:4], seqlen, max_tokens=300)
    return model, tokenizer, windows, make_batches(windows, batch_size, tokenizer.pad_token_id)


def test_model_against_itself_is_perfect():
    model, _, _, batches = _setup(batch_size=4)
    reference, dense = compute_reference(model, batches, progress=False)
    again = compare(model, batches, reference, progress=False)
    assert again.top1_agreement == 1.0 and again.top5_overlap == 1.0
    assert abs(again.kl_mean) < 1e-6
    assert math.isclose(again.perplexity, dense.perplexity, rel_tol=1e-6)


def test_padding_is_excluded():
    # Different batch sizes change padding; every metric must stay the same.
    model, _, _, padded = _setup(batch_size=5)
    _, _, _, single = _setup(batch_size=1)
    _, a = compute_reference(model, padded, progress=False)
    _, b = compute_reference(model, single, progress=False)
    assert a.positions == b.positions and a.predicted_tokens == b.predicted_tokens
    assert math.isclose(a.perplexity, b.perplexity, rel_tol=1e-4)


def test_perplexity_equals_exp_of_mean_cross_entropy():
    model, _, windows, batches = _setup(batch_size=1)
    _, dense = compute_reference(model, batches, progress=False)
    nll, count = 0.0, 0
    for window in windows:
        ids = torch.tensor([window])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss  # mean over len-1 predictions
        nll += float(loss) * (len(window) - 1)
        count += len(window) - 1
    assert dense.predicted_tokens == count
    assert math.isclose(dense.perplexity, math.exp(nll / count), rel_tol=1e-4)


def test_a_perturbed_model_drifts(tmp_path):
    model, _, _, batches = _setup(batch_size=4)
    reference, _ = compute_reference(model, batches, spill_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.pt"))) == len(batches)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    drift = compare(model, batches, reference, progress=False)
    assert drift.top1_agreement < 1.0 and drift.kl_mean > 0.0 and drift.top5_overlap < 1.0
