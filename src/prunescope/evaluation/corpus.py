"""Evaluation texts and their tokenization into identical windows for every variant.

Convention (see docs/metrics.md): each document is tokenized on its own with the tokenizer's default special
tokens, then cut into non-overlapping windows of at most `seqlen` tokens (nothing is dropped except windows
shorter than 2 tokens, which hold no next-token prediction). Windows are batched with right padding and an
attention mask; padding never enters a metric.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from ..errors import PrunescopeError


def builtin_texts() -> list[str]:
    """The small English set written for this project (used for any model but the demo)."""
    text = resources.files("prunescope").joinpath("evaluation/data/english.txt").read_text(encoding="utf-8")
    return split_blocks(text)


def split_blocks(text: str) -> list[str]:
    blocks = [block.strip() for block in text.replace("\r\n", "\n").split("\n\n")]
    return [block for block in blocks if block]


def read_corpus(path: str | Path) -> list[str]:
    """.txt: one document per blank-line-separated block; .jsonl: one JSON object per line with `text`."""
    path = Path(path)
    if not path.is_file():
        raise PrunescopeError(f"corpus file {str(path)!r} does not exist")
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise PrunescopeError(f"{path}:{number}: not valid JSON") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise PrunescopeError(f"{path}:{number}: each line needs a string field 'text'")
            if record["text"].strip():
                texts.append(record["text"])
    elif path.suffix in (".txt", ".md", ""):
        texts = split_blocks(path.read_text(encoding="utf-8"))
    else:
        raise PrunescopeError(f"corpus must be .txt or .jsonl, got {path.name!r}")
    if not texts:
        raise PrunescopeError(f"corpus {str(path)!r} holds no text")
    return texts


def default_texts(model_name: str) -> list[str]:
    """The demo model is evaluated on its held-out stdlib modules; any other model on the English set."""
    if model_name == "demo":
        from ..demo.corpus import heldout_texts

        return heldout_texts()
    return builtin_texts()


def load_texts(corpus: str | Path | None, model_name: str) -> list[str]:
    if corpus is None or str(corpus) == "builtin":
        return default_texts(model_name)
    return read_corpus(corpus)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (batch, length)
    attention_mask: torch.Tensor  # (batch, length), 1 for real tokens

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device))


def tokenize_windows(
    tokenizer, texts: list[str], seqlen: int, max_tokens: int | None = None
) -> list[list[int]]:
    """Non-overlapping windows of at most `seqlen` tokens, document by document, up to `max_tokens` total."""
    if seqlen < 2:
        raise PrunescopeError("seqlen must be at least 2")
    windows: list[list[int]] = []
    total = 0
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        for start in range(0, len(ids), seqlen):
            window = ids[start : start + seqlen]
            if max_tokens is not None and total + len(window) > max_tokens:
                window = window[: max_tokens - total]
            if len(window) >= 2:
                windows.append(window)
                total += len(window)
            if max_tokens is not None and total >= max_tokens:
                return windows
    if not windows:
        raise PrunescopeError("the corpus yields no window of at least 2 tokens")
    return windows


def make_batches(windows: list[list[int]], batch_size: int, pad_id: int) -> list[Batch]:
    """Right-padded batches; sorting by length first keeps padding small (order is fixed, so identical)."""
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [windows[i] for i in order[start : start + batch_size]]
        length = max(len(w) for w in chunk)
        ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for row, window in enumerate(chunk):
            ids[row, : len(window)] = torch.tensor(window)
            mask[row, : len(window)] = 1
        batches.append(Batch(ids, mask))
    return batches
