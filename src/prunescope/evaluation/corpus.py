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


def read_text_file(path: Path) -> str:
    """The file as UTF-8 text; anything else is one line naming the file and the first bad byte."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        byte = error.object[error.start : error.start + 1].hex()
        raise PrunescopeError(
            f"{str(path)!r} is not UTF-8 text (byte 0x{byte} at offset {error.start}); save it as UTF-8"
        ) from None
    except OSError as error:
        raise PrunescopeError(f"cannot read {str(path)!r}: {error.strerror or error}") from None


def read_corpus(path: str | Path) -> list[str]:
    """.txt: one document per blank-line-separated block; .jsonl: one JSON object per line with `text`."""
    path = Path(path)
    if not path.is_file():
        raise PrunescopeError(f"corpus file {str(path)!r} does not exist")
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(read_text_file(path).splitlines(), 1):
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
        texts = split_blocks(read_text_file(path))
    else:
        raise PrunescopeError(f"corpus must be .txt or .jsonl, got {path.name!r}")
    if not texts:
        raise PrunescopeError(f"corpus {str(path)!r} holds no text")
    return texts


DEMO_CORPUS_LABEL = "builtin: the demo model's held-out Python stdlib modules"
ENGLISH_CORPUS_LABEL = "builtin: prunescope's English paragraphs"


def builtin_corpus_model(model_name: str) -> str:
    """The model whose builtin texts evaluate `model_name`: itself, or for a checkpoint `prunescope prune`
    wrote, the model it was pruned from (followed back through its records), so a pruned demo is evaluated
    on the demo's held-out modules exactly as `study` evaluates the demo."""
    from ..models import pruned_from

    seen: set[str] = set()
    while model_name != "demo" and model_name not in seen:
        seen.add(model_name)
        source = pruned_from(model_name)
        if source is None:
            break
        model_name = source
    return model_name


def builtin_label(model_name: str) -> str:
    """What a result says of the builtin texts that evaluate `model_name`."""
    return DEMO_CORPUS_LABEL if builtin_corpus_model(model_name) == "demo" else ENGLISH_CORPUS_LABEL


def default_texts(model_name: str) -> list[str]:
    """The demo model (and any checkpoint pruned from it) is evaluated on the demo's held-out stdlib
    modules; any other model on the English set."""
    if builtin_corpus_model(model_name) == "demo":
        from ..demo.corpus import heldout_texts

        return heldout_texts()
    return builtin_texts()


def load_texts(corpus: str | Path | None, model_name: str) -> list[str]:
    if corpus is None or str(corpus) == "builtin":
        return default_texts(model_name)
    return read_corpus(corpus)


@dataclass(frozen=True)
class Window:
    """One model input and what of it is scored (see evaluation/protocols.py).

    Position `start + i` predicts `targets[i]`; top-1/top-5/KL compare positions `agree` (default: the
    scored ones). A plain token list is the document convention: every position compared, each but the
    last predicting the next token.
    """

    ids: list[int]
    targets: list[int]
    start: int = 0
    agree: tuple[int, int] | None = None

    @classmethod
    def document(cls, ids: list[int]) -> Window:
        return cls(list(ids), list(ids[1:]), 0, (0, len(ids)))

    @property
    def spans(self) -> tuple[int, int, int, int]:
        """(agree_from, agree_to, loss_from, loss_to) positions."""
        loss = (self.start, self.start + len(self.targets))
        return (*(self.agree or loss), *loss)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (batch, length)
    attention_mask: torch.Tensor  # (batch, length), 1 for real tokens
    targets: torch.Tensor | None = None  # (batch, length): next-token target per position, -100 unscored
    spans: list[tuple[int, int, int, int]] | None = None  # per row, Window.spans; None: document rows
    window_ids: list[int] | None = None  # per row, the index of its window in the protocol's list

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device) -> Batch:
        # Targets stay on the CPU, where the metrics are accumulated.
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.targets,
            self.spans,
            self.window_ids,
        )


def tokenize_windows(
    tokenizer, texts: list[str], seqlen: int, max_tokens: int | None = None
) -> list[list[int]]:
    """Non-overlapping windows of at most `seqlen` tokens, document by document, up to `max_tokens` total."""
    if seqlen < 2:
        raise PrunescopeError("seqlen must be at least 2")
    windows: list[list[int]] = []
    total = 0
    for text in texts:
        # Documents longer than the model context are cut into windows below: transformers' "sequence
        # length is longer than the maximum" warning does not apply, and would only interrupt the output.
        ids = tokenizer(text, verbose=False)["input_ids"]
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


def make_batches(windows: list[list[int]] | list[Window], batch_size: int, pad_id: int) -> list[Batch]:
    """Right-padded batches; sorting by length first keeps padding small (order is fixed, so identical).

    Token lists are document windows (`Window.document`); protocols pass `Window`s.
    """
    windows = [w if isinstance(w, Window) else Window.document(w) for w in windows]
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i].ids))
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [windows[i] for i in order[start : start + batch_size]]
        length = max(len(w.ids) for w in chunk)
        ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        targets = torch.full((len(chunk), length), -100, dtype=torch.long)
        for row, window in enumerate(chunk):
            ids[row, : len(window.ids)] = torch.tensor(window.ids)
            mask[row, : len(window.ids)] = 1
            if window.targets:
                targets[row, window.start : window.start + len(window.targets)] = torch.tensor(window.targets)
        batches.append(Batch(ids, mask, targets, [w.spans for w in chunk], order[start : start + batch_size]))
    return batches
