"""Perplexity protocols: how a corpus becomes scored windows. One class per protocol, one table entry each.

- `document`: prunescope's own convention (evaluation/corpus.py): each document tokenized on its own with
  the tokenizer's default special tokens, cut into windows of at most `seqlen` tokens.
- `joined`: Wanda `lib/eval.py:eval_ppl_wikitext` / SparseGPT `llama_eval`: rows joined by the dataset's
  join string ("\\n\\n"), tokenized once, non-overlapping windows of exactly `seqlen`, remainder dropped;
  ppl = exp(mean over windows of each window's mean next-token loss).
- `rolling`: lm-evaluation-harness `loglikelihood_rolling` (0.4): each document tokenized as lm-eval's HFLM
  does (default special tokens), the prefix token (BOS, else EOS) first, disjoint windows of `seqlen` inputs
  with one token of context, so every document token is predicted exactly once; token, word and byte
  perplexity and bits per byte as lm-eval defines them.

Top-1 / top-5 / KL are computed on the scored positions of the same windows (document: on every position of
its windows, as before).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from ..errors import PrunescopeError
from .corpus import Window, tokenize_windows
from .datasets import Corpus

JOINED_SEQLEN_CAP = 4096  # a 128k-context model must not get 128k windows (Wanda #44)
DOCUMENT_MAX_TOKENS = 4096


@dataclass
class Evaluation:
    """The windows a protocol produced and the facts every perplexity is reported with."""

    protocol: str
    windows: list[Window]
    facts: dict = field(default_factory=dict)
    words: int = 0  # rolling: words (lm-eval's re.split(r"\s+")) and UTF-8 bytes of the scored documents
    bytes: int = 0

    @property
    def tokens_scored(self) -> int:
        return sum(len(w.targets) for w in self.windows)

    def columns(self) -> dict:
        """Per-run facts as summary.csv columns."""
        keys = ("ppl_protocol", "dataset", "split", "seqlen", "join", "bos", "windows", "tokens_scored")
        return {key: self.facts.get(key) for key in keys}

    def metrics(self, perplexity: float, predicted: int) -> dict:
        """Per-variant perplexities beyond the token-level one (rolling: word, byte, bits per byte)."""
        return PROTOCOLS[self.protocol].metrics(self, perplexity, predicted)


def _encode(tokenizer, text: str, **kwargs) -> list[int]:
    # A joined split is far longer than the model context on purpose; silence the "too long" warning.
    return list(tokenizer(text, verbose=False, **kwargs)["input_ids"])


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    ids = tokenizer("a")["input_ids"]
    return bos is not None and bool(ids) and ids[0] == bos


def _join_text(join: str | None) -> str:
    return "none" if join is None else json.dumps(join)[1:-1]


class Protocol:
    name = ""
    used_by = ""

    def default_seqlen(self, context: int) -> tuple[int, str]:
        seqlen = min(context, JOINED_SEQLEN_CAP)
        if context > JOINED_SEQLEN_CAP:
            return seqlen, f"model context {context} capped at {JOINED_SEQLEN_CAP}"
        return seqlen, "the model context"

    def build(self, tokenizer, corpus: Corpus, seqlen: int, max_tokens: int | None) -> Evaluation:
        raise NotImplementedError

    def metrics(self, evaluation: Evaluation, perplexity: float, predicted: int) -> dict:
        return {}

    def _facts(self, corpus: Corpus, seqlen: int, windows: list[Window], **extra) -> dict:
        return {
            "ppl_protocol": self.name,
            "used_by": self.used_by,
            "dataset": corpus.dataset,
            "split": corpus.split,
            "seqlen": seqlen,
            "windows": len(windows),
            "tokens_scored": sum(len(w.targets) for w in windows),
            **extra,
        }


class DocumentProtocol(Protocol):
    name = "document"
    used_by = "prunescope"

    def default_seqlen(self, context: int) -> tuple[int, str]:
        return min(256, context), "min(256, model context)"

    def build(self, tokenizer, corpus: Corpus, seqlen: int, max_tokens: int | None) -> Evaluation:
        texts = corpus.documents
        windows = tokenize_windows(tokenizer, texts, seqlen, max_tokens or DOCUMENT_MAX_TOKENS)
        facts = self._facts(
            corpus,
            seqlen,
            [Window.document(w) for w in windows],
            join=_join_text(None),
            bos="each document" if _adds_bos(tokenizer) else "none",
            documents=len(texts),
            tokens=sum(len(w) for w in windows),
        )
        return Evaluation(self.name, [Window.document(w) for w in windows], facts)


class JoinedProtocol(Protocol):
    name = "joined"
    used_by = "Wanda eval_ppl_wikitext, SparseGPT llama_eval"

    def build(self, tokenizer, corpus: Corpus, seqlen: int, max_tokens: int | None) -> Evaluation:
        ids = _encode(tokenizer, corpus.join.join(corpus.rows))
        count = len(ids) // seqlen
        if corpus.max_windows is not None:
            count = min(count, corpus.max_windows)
        if max_tokens is not None:
            count = min(count, max_tokens // seqlen)
        if count < 1:
            raise PrunescopeError(
                f"{corpus.dataset} gives {len(ids)} tokens joined; the joined protocol needs at least one "
                f"window of {seqlen} (and --max-tokens >= seqlen). Use a longer corpus or a smaller --seqlen"
            )
        windows = [Window(w, w[1:]) for w in (ids[i * seqlen : (i + 1) * seqlen] for i in range(count))]
        bos = tokenizer.bos_token_id
        facts = self._facts(
            corpus,
            seqlen,
            windows,
            join=_join_text(corpus.join),
            bos="first window only" if bos is not None and ids and ids[0] == bos else "none",
            documents=len(corpus.rows),
            tokens=count * seqlen,
            dropped_tokens=len(ids) - count * seqlen,
        )
        return Evaluation(self.name, windows, facts)


class RollingProtocol(Protocol):
    name = "rolling"
    used_by = "lm-evaluation-harness loglikelihood_rolling"

    @staticmethod
    def prefix_token(tokenizer) -> int:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise PrunescopeError("the rolling protocol needs a BOS or EOS token; the tokenizer has neither")
        return prefix

    @staticmethod
    def document_windows(tokens: list[int], prefix: int, seqlen: int) -> list[Window]:
        """Disjoint windows with one token of context: every token predicted once (lm-eval's rolling)."""
        if not tokens:
            return []
        first = min(seqlen, len(tokens))
        windows = [Window([prefix, *tokens[: first - 1]], tokens[:first])]
        predicted = first
        while predicted < len(tokens):
            count = min(len(tokens) - predicted, seqlen)
            end = predicted + count
            # The input is the seqlen tokens before `end`'s last target; only the last `count` are scored.
            ids = tokens[max(0, end - seqlen - 1) : end - 1]
            windows.append(Window(ids, tokens[end - count : end], start=len(ids) - count))
            predicted = end
        return windows

    def build(self, tokenizer, corpus: Corpus, seqlen: int, max_tokens: int | None) -> Evaluation:
        prefix = self.prefix_token(tokenizer)
        prefix_text = tokenizer.decode(prefix)
        windows: list[Window] = []
        words = nbytes = documents = scored = 0
        for text in corpus.documents:
            if max_tokens is not None and scored >= max_tokens:
                break
            # As lm-eval's HFLM.tok_encode: default special tokens, none when the text starts with the prefix.
            special = {"add_special_tokens": False} if prefix_text and text.startswith(prefix_text) else {}
            tokens = _encode(tokenizer, text, **special)
            windows += self.document_windows(tokens, prefix, seqlen)
            scored += len(tokens)
            words += len(re.split(r"\s+", text))
            nbytes += len(text.encode("utf-8"))
            documents += 1
        if not windows:
            raise PrunescopeError(f"{corpus.dataset} yields no token to score")
        which = "BOS" if tokenizer.bos_token_id is not None else "EOS"
        facts = self._facts(
            corpus,
            seqlen,
            windows,
            join=_join_text(None),
            bos=f"prefix {which} (id {prefix}) per document",
            documents=documents,
            words=words,
            bytes=nbytes,
        )
        return Evaluation(self.name, windows, facts, words=words, bytes=nbytes)

    def metrics(self, evaluation: Evaluation, perplexity: float, predicted: int) -> dict:
        nll = math.log(perplexity) * predicted  # total negative log-likelihood, nats
        return {
            "word_perplexity": math.exp(nll / evaluation.words),
            "byte_perplexity": math.exp(nll / evaluation.bytes),
            "bits_per_byte": nll / evaluation.bytes / math.log(2),
        }


PROTOCOLS: dict[str, Protocol] = {
    protocol.name: protocol for protocol in (DocumentProtocol(), JoinedProtocol(), RollingProtocol())
}


def get(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise PrunescopeError(f"unknown perplexity protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def default_protocol(corpus_source: str | None) -> str:
    """joined for the papers' dataset aliases (wikitext2, c4, ptb), document otherwise."""
    from .datasets import is_alias

    return "joined" if is_alias(corpus_source) else "document"


def check(name: str | None) -> None:
    if name is not None:
        get(name)


def build(
    tokenizer,
    corpus: Corpus,
    protocol: str,
    context: int,
    seqlen: int | None = None,
    max_tokens: int | None = None,
) -> Evaluation:
    """Windows of `corpus` under `protocol`; `seqlen` None is the protocol's default for this context."""
    chosen = get(protocol)
    if seqlen is None:
        seqlen, note = chosen.default_seqlen(context)
    else:
        note = "--seqlen"
    if seqlen < 2:
        raise PrunescopeError("seqlen must be at least 2")
    evaluation = chosen.build(tokenizer, corpus, seqlen, max_tokens)
    evaluation.facts["seqlen_from"] = note
    return evaluation


def describe(facts: dict) -> str:
    """One line naming how every perplexity of a run was computed (CLI caption, report header)."""
    if not facts or "ppl_protocol" not in facts:
        return ""
    split = f" {facts['split']}" if facts.get("split") else ""
    join = facts.get("join")
    joined = f", joined by '{join}'" if join and join != "none" else ""
    seqlen_from = f" ({facts['seqlen_from']})" if facts.get("seqlen_from") else ""
    used_by = f" ({facts['used_by']})" if facts.get("used_by") else ""
    return (
        f"perplexity protocol {facts['ppl_protocol']}{used_by}: {facts['dataset']}{split}, "
        f"{facts['windows']:,} windows of seqlen {facts['seqlen']}{seqlen_from}{joined}, "
        f"BOS: {facts.get('bos', 'none')}, {facts['tokens_scored']:,} tokens scored"
    )
