"""Behaviour metrics: identity is perfect, padding never counts, perplexity matches the usual loss."""

from __future__ import annotations

import math

import torch

from prunescope.evaluation.behaviour import compare, compute_reference
from prunescope.evaluation.corpus import builtin_texts, make_batches, tokenize_windows
from tests.helpers import make_tokenizer, tiny_opt


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


# ------------------------------------------------------------------------------------------------------
# The reference keeps hidden states, not log-probabilities; every metric stays exact (issue 22).
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from torch import nn  # noqa: E402

from prunescope.errors import PrunescopeError  # noqa: E402
from prunescope.evaluation.behaviour import TOP_K, Behaviour, log_probs  # noqa: E402
from prunescope.evaluation.corpus import Window  # noqa: E402
from tests.helpers import plain_percentile  # noqa: E402


def tiny_llama(vocab_size: int, hidden: int = 16, seed: int = 0, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
        **extra,
    )
    return LlamaForCausalLM(config).eval()


def random_batches(vocab: int, windows: int, length: int = 32, batch_size: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = [torch.randint(1, vocab, (length,), generator=generator).tolist() for _ in range(windows)]
    return make_batches([Window.document(w) for w in ids], batch_size, 0)


def brute_force(dense: list[torch.Tensor], model, batches) -> dict:
    """Every metric from full float32 log-probabilities of both models (the old mechanism), in float64."""
    kl, agree, overlap, nll, compared, scored = [], 0, 0.0, 0.0, 0, 0
    for lp_d, batch in zip(dense, batches, strict=True):
        lp_v = log_probs(model, batch)
        for row, (a0, a1, l0, l1) in enumerate(batch.spans):
            d, v = lp_d[row, a0:a1].double(), lp_v[row, a0:a1].double()
            kl += (d.exp() * (d - v)).sum(-1).tolist()
            agree += int((d.argmax(-1) == v.argmax(-1)).sum())
            top_d, top_v = d.topk(TOP_K).indices, v.topk(TOP_K).indices
            overlap += float((top_d.unsqueeze(-1) == top_v.unsqueeze(-2)).any(-1).sum()) / TOP_K
            targets = batch.targets[row, l0:l1]
            nll -= float(lp_v[row, l0:l1].double().gather(-1, targets.unsqueeze(-1)).sum())
            compared += a1 - a0
            scored += l1 - l0
    return {
        "kl": np.array(kl),
        "kl_mean": sum(kl) / compared,
        "top1_agreement": agree / compared,
        "top5_overlap": overlap / compared,
        "perplexity": math.exp(nll / scored),
    }


def test_reference_space_grows_with_tokens_times_hidden_not_vocabulary(tmp_path):
    vocab, hidden = 32_000, 16
    model = tiny_llama(vocab, hidden)
    sizes = {}
    for windows in (4, 8):
        batches = random_batches(vocab, windows)
        folder = tmp_path / f"ref{windows}"
        reference, _ = compute_reference(model, batches, spill_dir=folder, progress=False)
        on_disk = sum(p.stat().st_size for p in folder.glob("*.pt"))
        tokens = sum(b.tokens for b in batches)
        sizes[windows] = (reference.nbytes, on_disk, tokens)
        # hidden states (4 bytes each) + 8 facts per position, far from 4 bytes x 32,000 per position
        assert reference.nbytes == tokens * (hidden * 4 + 8 + TOP_K * 4 + 4 + 4)
        assert on_disk < tokens * 200
        assert (
            reference.head.nbytes == vocab * hidden * 4
        )  # the private head copy: fixed, whatever the tokens
    (small, small_disk, small_tokens), (large, large_disk, large_tokens) = sizes[4], sizes[8]
    assert large_tokens == 2 * small_tokens and large == 2 * small
    assert large_disk < 2.1 * small_disk


def test_large_vocabulary_metrics_equal_brute_force_even_with_the_head_changed(tmp_path):
    vocab = 32_000
    model = tiny_llama(vocab, initializer_range=0.5)  # sharp enough that top-1 means something
    batches = random_batches(vocab, 6)
    dense = [log_probs(model, batch) for batch in batches]
    reference, _ = compute_reference(model, batches, spill_dir=tmp_path, progress=False)
    with torch.no_grad():  # perturb everything, the output head included (`--include lm_head`)
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        model.lm_head.weight.mul_(model.lm_head.weight.abs() > 0.2)
    got = compare(model, batches, reference, progress=False)
    expected = brute_force(dense, model, batches)
    assert got.kl_mean == pytest.approx(expected["kl_mean"], rel=1e-6)
    assert got.top1_agreement == pytest.approx(expected["top1_agreement"], abs=1e-12)
    assert got.top5_overlap == pytest.approx(expected["top5_overlap"], abs=1e-12)
    assert got.perplexity == pytest.approx(expected["perplexity"], rel=1e-6)
    kl = got.tokens["kl"][got.tokens["compared"]]
    assert np.allclose(kl, expected["kl"], rtol=1e-4, atol=1e-6)
    assert 0.0 < got.top1_agreement < 1.0


def old_formulas(dense: list[torch.Tensor], model, batches) -> dict:
    """The former implementation: full log-probabilities, 64-position chunks, float32 reductions."""
    agree = overlap = kl = nll = 0.0
    positions = predicted = 0
    for lp_d, batch in zip(dense, batches, strict=True):
        lp_v = log_probs(model, batch)
        for row, (a0, a1, l0, l1) in enumerate(batch.spans):
            first, last = min(a0, l0), max(a1, l1)
            for start in range(first, last, 64):
                stop = min(start + 64, last)
                lo, hi = max(start, a0), min(stop, a1)
                if hi > lo:
                    d, v = lp_d[row, lo:hi], lp_v[row, lo:hi]
                    agree += int((d.argmax(-1) == v.argmax(-1)).sum())
                    top_d, top_v = d.topk(TOP_K, dim=-1).indices, v.topk(TOP_K, dim=-1).indices
                    overlap += int((top_d.unsqueeze(-1) == top_v.unsqueeze(-2)).any(-1).sum()) / TOP_K
                    kl += float(nn.functional.kl_div(v, d, reduction="sum", log_target=True))
                lo, hi = max(start, l0), min(stop, l1)
                if hi > lo:
                    nll -= float(lp_v[row, lo:hi].gather(-1, batch.targets[row, lo:hi].unsqueeze(-1)).sum())
            positions += a1 - a0
            predicted += l1 - l0
    return {
        "top1_agreement": agree / positions,
        "top5_overlap": overlap / positions,
        "kl_mean": kl / positions,
        "perplexity": math.exp(nll / predicted),
    }


def test_figures_are_bit_for_bit_those_of_the_former_full_log_prob_reference():
    model, _, _, batches = _setup(batch_size=4, seqlen=48)
    dense = [log_probs(model, batch) for batch in batches]
    before = old_formulas(dense, model, batches)
    reference, own = compute_reference(model, batches, progress=False)
    assert own.perplexity == before["perplexity"] and own.kl_mean == 0.0 and own.top1_agreement == 1.0
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(parameter.abs() > parameter.abs().median())
    after, got = old_formulas(dense, model, batches), compare(model, batches, reference, progress=False)
    for key, value in after.items():
        assert getattr(got, key) == value, key


def test_every_statistic_equals_its_formula_on_the_per_token_values():
    model, _, _, batches = _setup(batch_size=3)
    reference, dense = compute_reference(model, batches, progress=False)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    got = compare(model, batches, reference, progress=False)
    t = got.tokens
    compared, scored = t["compared"], t["scored"]
    kl = t["kl"][compared].astype(float)
    assert compared.sum() == got.positions and scored.sum() == got.predicted_tokens
    assert kl.sum() / kl.size == pytest.approx(got.kl_mean, rel=1e-5)
    assert np.mean(t["dense_top1"][compared] == t["variant_top1"][compared]) == got.top1_agreement
    for name, q in (("kl_median", 50), ("kl_p90", 90), ("kl_p99", 99), ("kl_p999", 99.9), ("kl_max", 100)):
        assert getattr(got, name) == pytest.approx(plain_percentile(kl, q), rel=1e-9), name
    dp = (t["p_variant"][scored] - t["p_dense"][scored]).astype(float)
    assert got.delta_p_mean == pytest.approx(sum(dp) / len(dp), rel=1e-9)
    assert got.delta_p_rms == pytest.approx(math.sqrt(sum(x * x for x in dp) / len(dp)), rel=1e-9)
    assert got.delta_p_p01 == pytest.approx(plain_percentile(dp, 1), rel=1e-9)
    assert got.delta_p_p99 == pytest.approx(plain_percentile(dp, 99), rel=1e-9)
    nv, nd = t["nll_variant"][scored].astype(float), t["nll_dense"][scored].astype(float)
    assert np.allclose(t["p_dense"][scored], np.exp(-nd), rtol=1e-6)
    assert got.ln_ppl_ratio == pytest.approx(nv.mean() - nd.mean(), rel=1e-9)
    assert got.ln_ppl_ratio == pytest.approx(math.log(got.perplexity / dense.perplexity), rel=1e-4)
    n = len(nv)
    se_v2 = (np.mean(nv**2) - nv.mean() ** 2) / (n - 1)
    se_d2 = (np.mean(nd**2) - nd.mean() ** 2) / (n - 1)
    cov = (np.mean(nv * nd) - nv.mean() * nd.mean()) / (n - 1)
    assert got.ln_ppl_ratio_stderr == pytest.approx(math.sqrt(se_v2 + se_d2 - 2 * cov), rel=1e-6)
    assert got.nll_correlation == pytest.approx(cov / math.sqrt(se_v2 * se_d2), rel=1e-6)
    assert got.kl_mean_ci_low < got.kl_mean < got.kl_mean_ci_high
    assert got.top1_ci_low <= got.top1_agreement <= got.top1_ci_high
    assert got.ppl_ratio_ci_low < got.perplexity / dense.perplexity < got.ppl_ratio_ci_high
    # the dense model against itself: zeros, a correlation of 1 and degenerate intervals
    assert (dense.kl_max, dense.delta_p_rms, dense.ln_ppl_ratio, dense.ln_ppl_ratio_stderr) == (0, 0, 0, 0)
    assert dense.nll_correlation == pytest.approx(1.0)
    assert (dense.top1_ci_low, dense.ppl_ratio_ci_high, dense.kl_mean_ci_high) == (1.0, 1.0, 0.0)
    # per-position values stay out of summary rows
    assert "tokens" not in got.as_dict() and "kl_p999" in got.as_dict()


def test_windows_are_the_batches_window_ids_when_given():
    model, _, _, batches = _setup(batch_size=4)
    offset = 0
    for batch in batches:
        batch.window_ids = [100 + offset + i for i in range(batch.input_ids.shape[0])]
        offset += batch.input_ids.shape[0]
    _, dense = compute_reference(model, batches, progress=False)
    assert set(np.unique(dense.tokens["window"])) == set(range(100, 100 + offset))


def test_softcapped_logits_are_reproduced_and_an_unknown_transform_is_one_error():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=300,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
        final_logit_softcapping=2.0,
        pad_token_id=0,
    )
    model = Gemma2ForCausalLM(config).eval()
    batches = random_batches(300, 3, length=16)
    reference, dense = compute_reference(model, batches, progress=False)
    assert reference.head.transform_name.startswith("final_logit_softcapping")
    again = compare(model, batches, reference, progress=False)
    assert again.kl_mean == 0.0 and again.top1_agreement == 1.0 and again.perplexity == dense.perplexity

    class Shifted(nn.Module):  # logits changed after the head in a way no config names
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def forward(self, **kwargs):
            out = self.inner(**kwargs)
            out.logits = out.logits * 1.5
            return out

    with pytest.raises(PrunescopeError, match="does not reproduce the model's logits"):
        compute_reference(Shifted(tiny_llama(300)), batches, progress=False)


def test_write_tokens_rows_and_unwritable_folder(tmp_path, monkeypatch):
    import os
    from pathlib import Path
    from types import SimpleNamespace

    import pandas as pd

    from prunescope.report.disagreement import TOKEN_TABLE_COLUMNS, write_tokens

    model, _, _, batches = _setup(batch_size=4)
    reference, dense = compute_reference(model, batches, progress=False)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    masked = compare(model, batches, reference, progress=False)
    result = SimpleNamespace(
        variants={"dense": SimpleNamespace(behaviour=dense), "masked": SimpleNamespace(behaviour=masked)}
    )
    path = write_tokens(result, tmp_path)
    table = pd.read_parquet(path)
    assert list(table.columns) == TOKEN_TABLE_COLUMNS
    assert len(table) == masked.positions and set(table["variant"]) == {"masked"}
    assert table["kl"].mean() == pytest.approx(masked.kl_mean, rel=1e-5)
    # An unwritable folder (root ignores permission bits: the check itself is simulated), and a write that
    # fails half-way: one line each, nothing left behind.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode)
    )
    with pytest.raises(PrunescopeError, match="not writable"):
        write_tokens(result, locked)
    monkeypatch.setattr(os, "access", real_access)

    def disk_full(self, path, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full)
    with pytest.raises(PrunescopeError, match="No space left"):
        write_tokens(result, locked)
    assert list(locked.iterdir()) == []
    with pytest.raises(PrunescopeError, match="not an existing folder"):
        write_tokens(result, tmp_path / "missing")
    assert isinstance(dense, Behaviour)
