"""Behaviour of a variant against the dense reference: top-1 agreement, top-5 overlap, KL, perplexity.

The dense pass runs once; its log-probabilities are kept (in memory, or spilled batch by batch to a folder so
a large vocabulary does not hold gigabytes of RAM) and every variant is compared to them position by
position on the same tokenized batches. Padding positions never count.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..util.progress import track
from .corpus import Batch

TOP_K = 5


@dataclass
class Behaviour:
    top1_agreement: float  # share of positions whose argmax matches the dense argmax
    top5_overlap: float  # mean |top5(dense) ∩ top5(variant)| / 5
    kl_mean: float  # mean over positions of KL(dense || variant), nats
    perplexity: float  # exp(mean next-token cross-entropy) of this variant on the corpus
    positions: int  # positions compared (non-padding)
    predicted_tokens: int  # next-token predictions scored for perplexity
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def log_probs(model: nn.Module, batch: Batch) -> torch.Tensor:
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = out.logits.float()
    del out
    # In place: a (batch, length, vocab) tensor is the largest thing a study holds; never keep two.
    return logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True))


class DenseReference:
    """Dense log-probabilities per batch, in memory or spilled to `spill_dir`."""

    def __init__(self, spill_dir: str | Path | None = None) -> None:
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._memory: list[torch.Tensor] = []
        self.count = 0

    def append(self, lp: torch.Tensor) -> None:
        if self.spill_dir is None:
            self._memory.append(lp.cpu())
        else:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            torch.save(lp.cpu(), self.spill_dir / f"reference_{self.count:05d}.pt")
        self.count += 1

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.spill_dir is None:
            return self._memory[index]
        return torch.load(self.spill_dir / f"reference_{index:05d}.pt", weights_only=True)


@dataclass
class _Sums:
    agree: float = 0.0
    overlap: float = 0.0
    kl: float = 0.0
    nll: float = 0.0
    positions: int = 0
    predicted: int = 0


_CHUNK_POSITIONS = 64  # vocabulary-sized temporaries are this many positions tall, whatever the batch


def _row_spans(batch: Batch) -> tuple[list[tuple[int, int, int, int]], torch.Tensor]:
    """(agree_from, agree_to, loss_from, loss_to) per row and the targets; document rows when not given."""
    if batch.spans is not None and batch.targets is not None:
        return batch.spans, batch.targets
    # Right padding: the real tokens of a row are its first `length` positions; each but the last predicts
    # the following real token.
    lengths = batch.attention_mask.sum(dim=1).tolist()
    targets = torch.full_like(batch.input_ids, -100)
    targets[:, :-1] = batch.input_ids[:, 1:]
    return [(0, n, 0, max(n - 1, 0)) for n in lengths], targets.cpu()


def _accumulate(sums: _Sums, dense: torch.Tensor, variant: torch.Tensor, batch: Batch) -> None:
    spans, targets = _row_spans(batch)
    for row, (a0, a1, l0, l1) in enumerate(spans):
        first, last = min(a0, l0), max(a1, l1)
        for start in range(first, last, _CHUNK_POSITIONS):
            stop = min(start + _CHUNK_POSITIONS, last)
            lo, hi = max(start, a0), min(stop, a1)
            if hi > lo:
                d, v = dense[row, lo:hi], variant[row, lo:hi]  # views: (positions, vocab)
                sums.agree += int((d.argmax(-1) == v.argmax(-1)).sum())
                k = min(TOP_K, d.shape[-1])
                top_d, top_v = d.topk(k, dim=-1).indices, v.topk(k, dim=-1).indices
                sums.overlap += int((top_d.unsqueeze(-1) == top_v.unsqueeze(-2)).any(-1).sum()) / k
                # KL(p||q) = sum p (log p - log q), with 0·log 0 = 0.
                sums.kl += float(nn.functional.kl_div(v, d, reduction="sum", log_target=True))
            # Next-token loss on the scored positions only.
            lo, hi = max(start, l0), min(stop, l1)
            if hi > lo:
                predicting = variant[row, lo:hi]
                sums.nll -= float(predicting.gather(-1, targets[row, lo:hi].unsqueeze(-1)).sum())
        sums.positions += a1 - a0
        sums.predicted += l1 - l0


def _finish(sums: _Sums, seconds: float) -> Behaviour:
    positions = max(sums.positions, 1)
    return Behaviour(
        top1_agreement=sums.agree / positions,
        top5_overlap=sums.overlap / positions,
        kl_mean=sums.kl / positions,
        perplexity=math.exp(sums.nll / max(sums.predicted, 1)),
        positions=sums.positions,
        predicted_tokens=sums.predicted,
        seconds=seconds,
    )


@torch.no_grad()
def compute_reference(
    model: nn.Module, batches: list[Batch], spill_dir: str | Path | None = None, progress: bool = True
) -> tuple[DenseReference, Behaviour]:
    """Run the dense model once; returns the stored reference and the dense model's own behaviour."""
    device = next(model.parameters()).device
    reference = DenseReference(spill_dir)
    sums, start = _Sums(), time.perf_counter()
    for batch in track(batches, "dense reference", enabled=progress):
        lp = log_probs(model, batch.to(device)).cpu()
        reference.append(lp)
        _accumulate(sums, lp, lp, batch)
    return reference, _finish(sums, time.perf_counter() - start)


@torch.no_grad()
def compare(
    model: nn.Module,
    batches: list[Batch],
    reference: DenseReference,
    label: str = "variant",
    progress: bool = True,
) -> Behaviour:
    """Behaviour of `model` (in its current state) against the dense reference, batch by batch."""
    device = next(model.parameters()).device
    sums, start = _Sums(), time.perf_counter()
    for index, batch in enumerate(track(batches, label, enabled=progress)):
        lp = log_probs(model, batch.to(device)).cpu()
        _accumulate(sums, reference[index], lp, batch)
    return _finish(sums, time.perf_counter() - start)
