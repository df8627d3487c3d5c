"""Calibration samples for Wanda and SparseGPT: seeded random windows of a token stream.

As in the reference implementations, each sample is a random crop of `seqlen` tokens; the statistics they
feed (input norms, Hessians) only need representative activations, not whole documents.

Sources:
- None / "builtin": for the demo model (and a checkpoint `prune` made from it), its *train* split of stdlib
  modules (never the held-out modules it is evaluated on); for any other model, the builtin English texts
  joined by blank lines.
- a path: a .txt / .jsonl corpus (`prunescope.corpus.read_corpus`), documents joined by blank lines.
- any other source `evaluation/datasets.py` resolves (aliases, `hf:...`, .parquet/.arrow/save_to_disk) for
  calibration: the aliases' train split (c4: train shard 0), rows joined by the references' string
  (wikitext2 " ", ptb "\n\n"); c4 as the references sample it: each window from a random document with
  more than seqlen tokens.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from ..errors import PrunescopeError
from ..evaluation import datasets as corpus_sources
from ..evaluation.corpus import builtin_corpus_model, builtin_texts, read_corpus

# Tokenizing the whole demo train split (~12 MB of code) would cost more than pruning; a seeded random subset
# of documents holding this many characters per requested token keeps the windows diverse and cheap.
_CHARS_PER_TOKEN_BUDGET = 16


def _demo_train_documents(seed: int) -> list[str]:
    """Demo train-split documents in seeded random order (held-out modules and their packages excluded)."""
    from ..demo import corpus as demo

    docs = demo.stdlib_documents()
    listing = Path(demo.DEMO_MODEL_DIR) / demo.HELDOUT_FILE
    try:
        held = set(json.loads(listing.read_text(encoding="utf-8"))["modules"])
    except (OSError, ValueError, KeyError):
        # No saved list (e.g. a model being built): recompute the split the demo recipe uses.
        held = set(demo.split_modules(list(docs), seed=0)[1])
    held_top = {name.split(".")[0] for name in held}
    names = [name for name in docs if name not in held and name.split(".")[0] not in held_top]
    random.Random(seed).shuffle(names)
    return [docs[name] for name in names]


def _encode(tokenizer, texts: list[str]) -> list[int]:
    # The texts are far longer than the model context on purpose; silence the "too long" warning.
    encoded = tokenizer(texts, verbose=False)["input_ids"]
    return [token for ids in encoded for token in ids]


def _take_budget(texts: list[str], chars: int) -> list[str]:
    taken, total = [], 0
    for text in texts:
        taken.append(text)
        total += len(text)
        if total >= chars:
            break
    return taken


def calibration_stream(
    tokenizer,
    source: str | None,
    model_name: str,
    budget_tokens: int,
    seed: int,
    text_column: str | None = None,
) -> list[int]:
    """The token stream calibration windows are cut from."""
    if source is None or str(source) == "builtin":
        if builtin_corpus_model(model_name) == "demo":  # the demo, or a checkpoint pruned from it
            # Each module tokenized on its own (BOS first), like the demo's training stream.
            docs = _take_budget(_demo_train_documents(seed), budget_tokens * _CHARS_PER_TOKEN_BUDGET)
            return _encode(tokenizer, docs)
        return _encode(tokenizer, ["\n\n".join(builtin_texts())])
    if _is_text_file(source):
        return _encode(tokenizer, ["\n\n".join(read_corpus(source))])
    corpus = corpus_sources.resolve(source, model_name, corpus_sources.CALIBRATION, text_column)
    return _encode(tokenizer, [corpus.join.join(corpus.rows)])


def _is_text_file(source: str) -> bool:
    """A .txt/.jsonl path (read as before); anything else goes through evaluation/datasets.py."""
    path = Path(source)
    if path.is_dir() or path.suffix in corpus_sources.DATASET_FILES:
        return False
    if corpus_sources.is_alias(source) or str(source).lower().startswith("hf:"):
        return False
    if not path.is_file():
        corpus_sources.check_source(source, "calibration")  # unknown alias or a missing file: one line
        raise PrunescopeError(f"calibration file {str(source)!r} does not exist")
    return True


def _document_samples(tokenizer, rows: list[str], n: int, seqlen: int, seed: int) -> list[torch.Tensor]:
    """The references' c4 sampling: per sample, a random document with more than seqlen tokens, then a
    random crop of seqlen tokens of it (each document tokenized on its own, default special tokens)."""
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        for _attempt in range(100 * len(rows)):
            # A crop of seqlen tokens is taken below, so a document longer than the context is no
            # concern: no "sequence length is longer than the maximum" warning.
            ids = tokenizer(rows[rng.randint(0, len(rows) - 1)], verbose=False)["input_ids"]
            if len(ids) > seqlen:
                break
        else:
            raise PrunescopeError(f"no calibration document holds more than {seqlen} tokens")
        start = rng.randint(0, len(ids) - seqlen - 1)
        samples.append(torch.tensor(ids[start : start + seqlen], dtype=torch.long).unsqueeze(0))
    return samples


def calibration_samples(
    tokenizer,
    source: str | None,
    model_name: str,
    n: int,
    seqlen: int,
    seed: int = 0,
    text_column: str | None = None,
) -> list[torch.Tensor]:
    """`n` token windows, each a (1, seqlen) LongTensor, cropped at seeded random offsets of the stream."""
    if n < 1 or seqlen < 2:
        raise PrunescopeError(f"calibration needs n >= 1 samples of seqlen >= 2 tokens, got {n} x {seqlen}")
    if source not in (None, "builtin") and not _is_text_file(str(source)):
        corpus = corpus_sources.resolve(source, model_name, corpus_sources.CALIBRATION, text_column)
        if corpus.per_document:
            return _document_samples(tokenizer, corpus.documents, n, seqlen, seed)
        stream = _encode(tokenizer, [corpus.join.join(corpus.rows)])
    else:
        stream = calibration_stream(tokenizer, source, model_name, n * seqlen, seed, text_column)
    if len(stream) < seqlen + 1:
        where = "the builtin calibration text" if source in (None, "builtin") else repr(str(source))
        raise PrunescopeError(
            f"{where} gives {len(stream)} tokens; calibration windows of {seqlen} tokens need at least "
            f"{seqlen + 1}. Use a longer text or a smaller --calib-seqlen"
        )
    rng = random.Random(seed)
    ids = torch.tensor(stream, dtype=torch.long)
    starts = [rng.randint(0, len(stream) - seqlen - 1) for _ in range(n)]
    return [ids[start : start + seqlen].unsqueeze(0).clone() for start in starts]
