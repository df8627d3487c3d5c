"""EvoPress's fitness from a checkpoint on disk, one decoder block in memory at a time.

A stage scores all its candidates in one pass over the blocks (`StreamedKL.many`), so the model is read
once per stage whatever the number of candidates: every candidate has its own hidden states for the
stage's sequences, starting from block 0's captured inputs; for each block, the block is loaded, each
candidate's levels are put into its matrices (`Assembler`, from the level database), that candidate's
hidden states run through it, the original weights go back and the block is released. After the last
block the final norm and output head (`capture.after_blocks`, in memory for the whole search) turn each
candidate's hidden states into logits and its token-mean KL to the dense side, which is one such pass of
the dense weights, made once (its final hidden states kept, as `DenseKL` keeps them).

Memory beyond one block (and its pruned matrices' original copy), the final norm and the head: the dense
final hidden states (calibration tokens x hidden x dtype) and a stage's per-candidate hidden states,
candidates x stage tokens x hidden x dtype (float32 from disk): on Llama-2-7B at the defaults, the last
stage's 3 x 4096 x 4096 x 4 B = 0.2 GB (the figures at the paper's options: `evo/__init__.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...capture import BlockInput, after_blocks, park
from ..context import AllocationContext
from .database import Assembler, LevelDatabase, MatrixLevels
from .fitness import DenseSide, kl_sum
from .search import Genome


class StreamedKL:
    """`many(genomes, ids)`: the candidates' KLs to the dense model, one pass over the blocks per call.

    The final norm and head are loaded (`context.load_tail`) for the object's life: call `close()`."""

    def __init__(
        self,
        context: AllocationContext,
        grid: dict[str, MatrixLevels],
        database: LevelDatabase,
        cache_bytes: int = 256 << 20,
    ) -> None:
        self.context, self.grid, self.database = context, grid, database
        self.position = {name: i for i, name in enumerate(n for block in context.per_block for n in block)}
        modules = list(after_blocks(context.model, context.blocks_name).values())  # refuses unknown ones
        self.tail, self.head = modules[:-1], modules[-1]
        if context.load_tail is not None:
            context.load_tail()
        self.passes = 0  # passes over the blocks (each reads the model once from disk)
        self.candidate_hidden_bytes = 0  # the largest stage's per-candidate hidden states
        every = range(len(context.inputs))
        dense = [park(self._head_input(item.hidden)) for item in self._run_blocks([None], every)[0]]
        self.dense = DenseSide(self.head, dense, cache_bytes)

    def _levels(self, genome: Genome | None, names: list[str]) -> list[int | None]:
        if genome is None:  # the dense weights
            return [None] * len(names)
        return [genome[self.position[name]] for name in names]

    @torch.no_grad()
    def _run_blocks(self, genomes: Sequence[Genome | None], ids: Sequence[int]) -> list[list[BlockInput]]:
        """Each candidate's last-block outputs for the sequences `ids` (module docstring)."""
        states = [[self.context.inputs[i].copy() for i in ids] for _ in genomes]
        self.candidate_hidden_bytes = max(
            self.candidate_hidden_bytes,
            len(genomes) * sum(item.hidden.numel() * item.hidden.element_size() for item in states[0]),
        )
        for index, block_layers in enumerate(self.context.per_block):
            with self.context.loaded(index) as block:
                assembler = Assembler(block_layers, self.grid, self.database)
                try:
                    for genome, candidate in zip(genomes, states, strict=True):
                        assembler.apply(self._levels(genome, assembler.names))
                        for item in candidate:
                            item.advance(block)
                finally:
                    assembler.restore()
        self.passes += 1
        return states

    @torch.no_grad()
    def _head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """One sequence's (1, tokens, hidden) last-block outputs through the final norm: (tokens, hidden)."""
        hidden = hidden.to(self.head.weight.device)
        for module in self.tail:
            hidden = module(hidden)
        return hidden[0]

    @torch.no_grad()
    def many(self, genomes: Sequence[Genome], ids: Sequence[int]) -> list[float]:
        """Token-mean KL(dense || candidate) over the sequences `ids`, for every genome."""
        outputs = self._run_blocks(genomes, ids)
        dense_of = self.dense.stage(ids)
        values = []
        for candidate in outputs:
            total, tokens = 0.0, 0
            for i, item in zip(ids, candidate, strict=True):
                kl, count = kl_sum(dense_of(i), self.head(self._head_input(item.hidden)))
                total += kl
                tokens += count
            values.append(total / tokens)
        return values

    def details(self) -> dict:
        return {
            "dense_hidden_bytes": self.dense.hidden_bytes,
            "candidate_hidden_bytes": self.candidate_hidden_bytes,
            "block_passes": self.passes,
        }

    def close(self) -> None:
        """The final norm and head out again (from disk)."""
        if self.context.release_tail is not None:
            self.context.release_tail()
