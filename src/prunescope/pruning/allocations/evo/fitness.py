"""EvoPress's fitness: token-mean KL(dense || candidate) of the next-token distributions, on calibration
sequences only.

The dense side is computed once: one pass of the dense model keeps each calibration sequence's final
hidden states (the output head's inputs: tokens x hidden per sequence, never tokens x vocabulary for the
set), and a stage's dense log-probabilities are recomputed from them through `model.get_output_embeddings()`.
Sequences of equal length run in batches of up to `batch_tokens` tokens. A stage's dense log-probs are
cached while the stage's candidates are scored when they fit in `cache_bytes` (tokens x vocab x 4 bytes),
else recomputed per candidate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ....errors import PrunescopeError


class DenseKL:
    def __init__(
        self,
        model: nn.Module,
        samples: Sequence[torch.Tensor],
        cache_bytes: int = 256 << 20,
        batch_tokens: int = 2048,
    ) -> None:
        self.model = model
        self.samples = list(samples)
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise PrunescopeError(
                "evo needs the model's output head (get_output_embeddings) for the dense KL"
            )
        self.device = next(model.parameters()).device
        self.cache_bytes = cache_bytes
        self.batch_tokens = batch_tokens  # sequences of one length run together up to this many tokens
        self._cache_key: tuple[int, ...] | None = None
        self._cache: list[torch.Tensor] | None = None
        self.hidden = self._dense_hidden()

    @torch.no_grad()
    def _dense_hidden(self) -> list[torch.Tensor]:
        kept: list[torch.Tensor] = []

        def hook(module: nn.Module, args: tuple) -> None:
            kept.extend(row.clone() for row in args[0].detach())

        handle = self.head.register_forward_pre_hook(hook)
        try:
            for batch in self._batches(range(len(self.samples))):
                self._forward(batch)
        finally:
            handle.remove()
        return kept

    @property
    def hidden_bytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.hidden)

    def _dense_logprobs(self, index: int) -> torch.Tensor:
        return F.log_softmax(self.head(self.hidden[index]).float(), dim=-1)

    def _stage_dense(self, ids: Sequence[int]) -> list[torch.Tensor] | None:
        key = tuple(ids)
        if key == self._cache_key:
            return self._cache
        vocab = self.head.weight.shape[0]
        size = sum(self.samples[i].numel() for i in ids) * vocab * 4
        self._cache_key = key
        self._cache = [self._dense_logprobs(i) for i in ids] if size <= self.cache_bytes else None
        return self._cache

    def _batches(self, ids: Sequence[int]) -> list[list[int]]:
        """`ids` in batches of equal-length sequences of at most `batch_tokens` tokens together."""
        batches: list[list[int]] = []
        for i in ids:
            last = batches[-1] if batches else None
            if (
                last is not None
                and self.samples[last[0]].shape == self.samples[i].shape
                and (len(last) + 1) * self.samples[i].numel() <= self.batch_tokens
            ):
                last.append(i)
            else:
                batches.append([i])
        return batches

    def _forward(self, batch: list[int]) -> torch.Tensor:
        ids = torch.cat([self.samples[i] for i in batch]).to(self.device)
        return self.model(input_ids=ids, use_cache=False).logits

    @torch.no_grad()
    def __call__(self, ids: Sequence[int]) -> float:
        """Token-mean KL(dense || current model) over the sequences `ids`."""
        cached = self._stage_dense(ids)
        position = {i: k for k, i in enumerate(ids)}
        total, tokens = 0.0, 0
        for batch in self._batches(ids):
            logits = self._forward(batch)
            for row, i in enumerate(batch):
                candidate = F.log_softmax(logits[row].float(), dim=-1)
                dense = cached[position[i]] if cached is not None else self._dense_logprobs(i)
                kl = (dense.exp() * (dense - candidate)).sum(-1)
                total += float(kl.sum())
                tokens += kl.numel()
        return total / tokens
