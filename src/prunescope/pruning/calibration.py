"""Calibration samples for Wanda and SparseGPT: seeded random windows of a token stream.

As in the reference implementations, each sample is a random crop of `seqlen` tokens; the statistics they
feed (input norms, Hessians) only need representative activations, not whole documents.

Sources:
- None / "builtin": for the demo model, its *train* split of stdlib modules (never the held-out modules it is
  evaluated on); for any other model, the builtin English texts joined by blank lines.
- a path: a .txt / .jsonl corpus (`prunescope.corpus.read_corpus`), documents joined by blank lines.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from ..errors import PrunescopeError
from ..evaluation.corpus import builtin_texts, read_corpus

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
    saved = tokenizer.model_max_length
    tokenizer.model_max_length = int(1e30)
    try:
        encoded = tokenizer(texts)["input_ids"]
    finally:
        tokenizer.model_max_length = saved
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
    tokenizer, source: str | None, model_name: str, budget_tokens: int, seed: int
) -> list[int]:
    """The token stream calibration windows are cut from."""
    if source is None or str(source) == "builtin":
        if model_name == "demo":
            # Each module tokenized on its own (BOS first), like the demo's training stream.
            docs = _take_budget(_demo_train_documents(seed), budget_tokens * _CHARS_PER_TOKEN_BUDGET)
            return _encode(tokenizer, docs)
        return _encode(tokenizer, ["\n\n".join(builtin_texts())])
    if not Path(source).is_file():
        raise PrunescopeError(f"calibration file {str(source)!r} does not exist")
    return _encode(tokenizer, ["\n\n".join(read_corpus(source))])


def calibration_samples(
    tokenizer, source: str | None, model_name: str, n: int, seqlen: int, seed: int = 0
) -> list[torch.Tensor]:
    """`n` token windows, each a (1, seqlen) LongTensor, cropped at seeded random offsets of the stream."""
    if n < 1 or seqlen < 2:
        raise PrunescopeError(f"calibration needs n >= 1 samples of seqlen >= 2 tokens, got {n} x {seqlen}")
    stream = calibration_stream(tokenizer, source, model_name, n * seqlen, seed)
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
