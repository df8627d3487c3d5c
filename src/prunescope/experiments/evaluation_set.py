"""The evaluation a study, a sweep and a sensitivity map share: corpus, protocol windows, batches and the
dense reference, built once per loaded model and compared against any number of variants."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import PrunescopeError
from ..evaluation import datasets as corpus_sources
from ..evaluation import protocols
from ..evaluation.behaviour import Behaviour, DenseReference, compare, compute_reference
from ..evaluation.corpus import Batch, make_batches
from ..models import LoadedModel
from .config import EvaluationOptions

# A forward pass returns (batch, seqlen, vocab) float32 logits: with a 50k vocabulary a batch of 8 x 256
# would be 400 MB, as much as a 100M-parameter model. Batches are cut to stay within this budget.
LOGITS_BUDGET_BYTES = 64 * 2**20


def logits_width(model: nn.Module) -> int:
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return getattr(output, "out_features", None) or model.config.vocab_size


def fit_batch_size(requested: int, seqlen: int, vocab: int) -> int:
    """The requested batch size, reduced so one batch's logits fit LOGITS_BUDGET_BYTES (at least 1)."""
    return max(1, min(requested, LOGITS_BUDGET_BYTES // (seqlen * vocab * 4)))


@dataclass
class EvaluationSet:
    """Windows of the corpus under its perplexity protocol, batched, with the dense model's reference."""

    options: EvaluationOptions
    texts: list[str]
    protocol: protocols.Evaluation
    seqlen: int
    batch_size: int
    batches: list[Batch]
    reference: DenseReference
    dense: Behaviour  # the dense model's own behaviour (perplexity) on these windows
    seconds: float

    @classmethod
    def build(
        cls,
        loaded: LoadedModel,
        options: EvaluationOptions,
        model_name: str,
        spill_dir: str | Path | None = None,
        progress: bool = True,
    ) -> EvaluationSet:
        """Tokenize the corpus into the protocol's windows and run the dense model over them once."""
        context = loaded.context_length
        seqlen = options.seqlen or protocols.get(options.protocol).default_seqlen(context)[0]
        if seqlen > context:
            raise PrunescopeError(f"seqlen {seqlen} exceeds the model's context of {context} tokens")
        corpus = corpus_sources.resolve(options.corpus, model_name, "evaluation", options.text_column)
        built = protocols.build(
            loaded.tokenizer, corpus, options.protocol, context, options.seqlen, options.max_tokens
        )
        batch_size = fit_batch_size(options.batch_size, seqlen, logits_width(loaded.model))
        batches = make_batches(built.windows, batch_size, loaded.tokenizer.pad_token_id)
        start = time.perf_counter()
        reference, dense = compute_reference(loaded.model, batches, spill_dir, progress=progress)
        return cls(
            options,
            corpus.documents,
            built,
            seqlen,
            batch_size,
            batches,
            reference,
            dense,
            time.perf_counter() - start,
        )

    @property
    def windows(self) -> list:
        return self.protocol.windows

    def compare(self, model: nn.Module, label: str, progress: bool = True) -> Behaviour:
        """Behaviour of `model` as it is now against the dense reference, on the same batches."""
        return compare(model, self.batches, self.reference, label, progress)

    def perplexity_columns(self, behaviour: Behaviour) -> dict:
        """The protocol named next to the figures, and its own perplexities."""
        return {
            **self.protocol.columns(),
            **self.protocol.metrics(behaviour.perplexity, behaviour.predicted_tokens),
        }

    def describe(self) -> dict:
        """What run.json records of the evaluation set."""
        return {
            "seqlen": self.seqlen,
            "batch_size": self.batch_size,
            "documents": len(self.texts),
            "windows": len(self.windows),
            "tokens": sum(len(w.ids) for w in self.windows),
            **self.protocol.facts,
            "protocol": protocols.describe(self.protocol.facts),
            "batches": len(self.batches),
        }
