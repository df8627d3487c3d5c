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

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ....errors import PrunescopeError
from .database import Assembler, LevelDatabase, MatrixLevels
from .search import Fitness, Genome, one_by_one


class DenseSide:
    """The dense model's final hidden states (the output head's inputs, tokens x hidden per sequence) and
    the head that turns them back into log-probabilities; a stage's log-probs cached (module docstring)."""

    def __init__(self, head: nn.Module, hidden: list[torch.Tensor], cache_bytes: int = 256 << 20) -> None:
        self.head, self.hidden, self.cache_bytes = head, hidden, cache_bytes
        self._cache_key: tuple[int, ...] | None = None
        self._cache: list[torch.Tensor] | None = None

    @property
    def hidden_bytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.hidden)

    def logprobs(self, index: int) -> torch.Tensor:
        head_device = self.head.weight.device
        return F.log_softmax(self.head(self.hidden[index].to(head_device)).float(), dim=-1)

    def stage(self, ids: Sequence[int]) -> Callable[[int], torch.Tensor]:
        """Sequence index -> its dense log-probs, from the stage's cache when the stage fits in it."""
        key = tuple(ids)
        if key != self._cache_key:
            vocab = self.head.weight.shape[0]
            size = sum(self.hidden[i].shape[0] for i in ids) * vocab * 4
            self._cache_key = key
            self._cache = [self.logprobs(i) for i in ids] if size <= self.cache_bytes else None
        if self._cache is None:
            return self.logprobs
        position = {i: k for k, i in enumerate(ids)}
        cache = self._cache
        return lambda i: cache[position[i]]


def kl_sum(dense: torch.Tensor, logits: torch.Tensor) -> tuple[float, int]:
    """(sum over tokens of KL(dense || candidate), tokens) for one sequence's dense log-probs and
    candidate logits."""
    candidate = F.log_softmax(logits.float(), dim=-1)
    kl = (dense.exp() * (dense - candidate)).sum(-1)
    return float(kl.sum()), kl.numel()


class DenseKL:
    """The fitness of the model in memory: its current weights against the dense side, whole-model
    forwards in batches."""

    def __init__(
        self,
        model: nn.Module,
        samples: Sequence[torch.Tensor],
        cache_bytes: int = 256 << 20,
        batch_tokens: int = 2048,
    ) -> None:
        self.model = model
        self.samples = list(samples)
        head = model.get_output_embeddings()
        if head is None:
            raise PrunescopeError(
                "evo needs the model's output head (get_output_embeddings) for the dense KL"
            )
        self.device = next(model.parameters()).device
        self.batch_tokens = batch_tokens  # sequences of one length run together up to this many tokens
        self.dense = DenseSide(head, self._dense_hidden(head), cache_bytes)

    @torch.no_grad()
    def _dense_hidden(self, head: nn.Module) -> list[torch.Tensor]:
        kept: list[torch.Tensor] = []

        def hook(module: nn.Module, args: tuple) -> None:
            kept.extend(row.clone() for row in args[0].detach())

        handle = head.register_forward_pre_hook(hook)
        try:
            for batch in self._batches(range(len(self.samples))):
                self._forward(batch)
        finally:
            handle.remove()
        return kept

    @property
    def hidden_bytes(self) -> int:
        return self.dense.hidden_bytes

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
        dense_of = self.dense.stage(ids)
        total, tokens = 0.0, 0
        for batch in self._batches(ids):
            logits = self._forward(batch)
            for row, i in enumerate(batch):
                kl, count = kl_sum(dense_of(i), logits[row])
                total += kl
                tokens += count
        return total / tokens


class InMemoryKL:
    """The search's fitness on the model in memory: each candidate's levels put into the model's matrices
    (`Assembler`), then its KL (`DenseKL`), one candidate after the other."""

    def __init__(
        self,
        model: nn.Module,
        samples: Sequence[torch.Tensor],
        layers: dict[str, nn.Module],
        grid: dict[str, MatrixLevels],
        database: LevelDatabase,
    ) -> None:
        self.kl = DenseKL(model, samples)
        self.assembler = Assembler(layers, grid, database)
        self.many: Fitness = one_by_one(self.one)

    def one(self, genome: Genome, ids: Sequence[int]) -> float:
        self.assembler.apply(genome)
        return self.kl(ids)

    def details(self) -> dict:
        return {"dense_hidden_bytes": self.kl.hidden_bytes}

    def close(self) -> None:
        """The model's original weights back."""
        self.assembler.restore()
