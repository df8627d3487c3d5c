"""Perplexity protocols against plain re-implementations of their formulas, and calibration seeds.

`joined` is recomputed as Wanda's eval_ppl_wikitext does it, `rolling` token by token with each token's
context written out from lm-eval's rule; both must agree with what `prunescope study` writes to 1e-4.
"""

from __future__ import annotations

import json
import math
import random
import re

import pandas as pd
import pytest
import torch

from prunescope.evaluation.corpus import builtin_texts
from prunescope.evaluation.protocols import RollingProtocol
from tests.helpers import QUICK_CALIBRATED, flags, run_cli, study_cli


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    texts = builtin_texts()[:6]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path, texts


def _dense_and_masked(model_dir, out, *args, **options):
    """`prunescope study` of the dense and masked variants; `args` and `options` (as flags) add to it."""
    return study_cli(*flags(model=model_dir, variants="dense,masked", out=out, **options), *args)


def wanda_joined_ppl(model, tokenizer, texts: list[str], seqlen: int) -> float:
    """Wanda lib/eval.py eval_ppl_wikitext written out: join, tokenize once, seqlen windows, rest dropped."""
    ids = tokenizer("\n\n".join(texts), return_tensors="pt").input_ids
    nsamples = ids.numel() // seqlen
    nlls = []
    with torch.no_grad():
        for i in range(nsamples):
            inputs = ids[:, i * seqlen : (i + 1) * seqlen]
            logits = model(inputs).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1, :].reshape(-1, logits.shape[-1]).float(), inputs[:, 1:].reshape(-1)
            )
            nlls.append(loss.float() * seqlen)
    return math.exp(torch.stack(nlls).sum().item() / (nsamples * seqlen))


def rolling_loglikelihoods(model, tokenizer, texts: list[str], seqlen: int) -> list[float]:
    """lm-eval's rolling rule per token: token i of a document of n tokens is predicted from the tokens
    since the start of its seqlen block (the prefix token stands before the first block); the last, short
    block is predicted from the seqlen tokens before the document's last token."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    totals = []
    with torch.no_grad():
        for text in texts:
            tokens = tokenizer(text)["input_ids"]
            n, total = len(tokens), 0.0
            for block in range(0, n, seqlen):
                last_short = block > 0 and block + seqlen > n
                if block == 0:
                    context_start, inputs = 0, [prefix, *tokens[: min(seqlen, n) - 1]]
                elif last_short:
                    context_start = n - seqlen - 1
                    inputs = tokens[context_start : n - 1]
                else:
                    context_start, inputs = block - 1, tokens[block - 1 : block + seqlen - 1]
                logp = torch.log_softmax(model(torch.tensor([inputs])).logits[0].float(), dim=-1)
                for i in range(block, min(block + seqlen, n)):
                    position = i if block == 0 else i - 1 - context_start
                    total += logp[position, tokens[i]].item()
            totals.append(total)
    return totals


def test_joined_equals_the_wanda_formula(model_and_tokenizer, corpus_file, tiny_model_dir, tmp_path):
    model, tokenizer = model_and_tokenizer
    path, texts = corpus_file
    out = tmp_path / "joined"
    result = _dense_and_masked(tiny_model_dir, out, corpus=path, ppl_protocol="joined", seqlen=48)
    assert "perplexity protocol joined" in result.output
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    expected = wanda_joined_ppl(model, tokenizer, texts, 48)
    assert summary.loc["dense", "perplexity"] == pytest.approx(expected, rel=1e-4)
    ids = tokenizer("\n\n".join(texts))["input_ids"]
    windows = len(ids) // 48
    assert (
        summary.loc["dense", "windows"] == windows and summary.loc["dense", "tokens_scored"] == windows * 47
    )
    # top-1 / top-5 / KL on the same positions as the perplexity
    assert summary.loc["masked", "positions"] == windows * 47
    assert summary.loc["dense", "join"] == "\\n\\n"


def test_rolling_equals_the_lm_eval_formulas(model_and_tokenizer, corpus_file, tiny_model_dir, tmp_path):
    model, tokenizer = model_and_tokenizer
    path, texts = corpus_file
    out = tmp_path / "rolling"
    _dense_and_masked(tiny_model_dir, out, corpus=path, ppl_protocol="rolling", seqlen=40)
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    ll = rolling_loglikelihoods(model, tokenizer, texts, 40)
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in texts)
    words = sum(len(re.split(r"\s+", t)) for t in texts)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    dense = summary.loc["dense"]
    assert dense["tokens_scored"] == tokens and summary.loc["masked", "positions"] == tokens
    assert dense["perplexity"] == pytest.approx(math.exp(-sum(ll) / tokens), rel=1e-4)
    assert dense["word_perplexity"] == pytest.approx(math.exp(-sum(ll) / words), rel=1e-4)
    assert dense["byte_perplexity"] == pytest.approx(math.exp(-sum(ll) / nbytes), rel=1e-4)
    assert dense["bits_per_byte"] == pytest.approx(-sum(ll) / nbytes / math.log(2), rel=1e-4)


@pytest.mark.lm_eval
def test_rolling_windows_match_lm_eval_and_score_each_token_once():
    utils = pytest.importorskip("lm_eval.utils")
    rng = random.Random(0)
    for _ in range(200):
        n, seqlen = rng.randint(1, 60), rng.randint(2, 12)
        tokens = [rng.randint(2, 99) for _ in range(n)]
        ours = RollingProtocol.document_windows(tokens, 1, seqlen)
        theirs = [
            utils.make_disjoint_window(pair)
            for pair in utils.get_rolling_token_windows(tokens, 1, max_seq_len=seqlen, context_len=1)
        ]
        assert [t for w in ours for t in w.targets] == tokens
        assert len(ours) == len(theirs)
        for window, (context, continuation) in zip(ours, theirs, strict=True):
            # lm-eval feeds (context + continuation)[:-1] and scores the last len(continuation) logits.
            assert window.ids == (context + continuation)[:-1] and window.targets == continuation
            assert window.start == len(window.ids) - len(continuation) and len(window.ids) <= seqlen


def test_default_protocol_is_document_for_files(corpus_file, tiny_model_dir, tmp_path):
    path, _ = corpus_file
    result = study_cli(
        *flags(
            model=tiny_model_dir, corpus=path, variants="dense", seqlen=32, max_tokens=200, out=tmp_path / "d"
        )
    )
    assert "perplexity protocol document" in result.output
    assert pd.read_csv(tmp_path / "d" / "summary.csv").loc[0, "ppl_protocol"] == "document"


def test_seeds_give_mean_and_std(tiny_model_dir, tmp_path):
    out = tmp_path / "seeds"
    _dense_and_masked(tiny_model_dir, out, *QUICK_CALIBRATED, method="wanda", sparsity=0.5, seeds="0,1,2")
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    per_seed = pd.read_csv(out / "seeds.csv")
    masked = per_seed[per_seed["variant"] == "masked"]
    assert sorted(masked["seed"]) == [0, 1, 2]
    for metric in ("perplexity", "top1_agreement", "kl_mean"):
        assert summary.loc["masked", metric] == pytest.approx(masked[metric].mean(), rel=1e-12)
        assert summary.loc["masked", f"{metric}_std"] == pytest.approx(masked[metric].std(ddof=1), rel=1e-9)
    assert summary.loc["masked", "perplexity_std"] > 0  # other calibration samples, another mask
    assert summary.loc["dense", "perplexity_std"] == 0 and summary.loc["masked", "seeds"] == "0,1,2"


def test_sweep_seeds_write_summary_and_bands(tiny_model_dir, tmp_path):
    out = tmp_path / "sweep"
    args = flags(
        model=tiny_model_dir,
        method="wanda,magnitude",
        sparsity="0.3,0.6",
        seeds="0,1",
        variants="masked",
        out=out,
    )
    run_cli(["sweep", "--no-progress", *args, *QUICK_CALIBRATED])
    rows = pd.read_csv(out / "results.csv")
    assert len(rows[rows["method"] == "wanda"]) == 4 and len(rows[rows["method"] == "magnitude"]) == 2
    summary = pd.read_csv(out / "summary.csv")
    wanda = summary[summary["method"] == "wanda"]
    assert (wanda["n_seeds"] == 2).all() and "top1_agreement_std" in summary.columns
    assert (out / "behaviour.png").is_file() and "--seeds" in (out / "report.md").read_text()
