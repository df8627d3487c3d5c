"""`--allocation evo`: EvoPress (Sieberling et al., ICML 2025; IST-DASLab/EvoPress) per-matrix sparsities by
evolutionary search against the dense model's KL on calibration tokens.

1. `database.py`: every pruned matrix pruned by the chosen method at a grid of levels (equal steps in
   absolute weight count) from its original weights with dense inputs.
2. `fitness.py`: token-mean KL(dense || candidate) on calibration sequences (dense final hidden states kept,
   dense log-probs recomputed through the output head).
3. `search.py`: (1 + lambda) search with the level-swap mutation and staged selection.
The winner's per-matrix sparsities are the allocation; the driver's pass then prunes each matrix at its
sparsity as usual (calibrated methods on the pruned model's activations, so the final masks can differ a
little from the database's, which were made on dense inputs).

From disk (`prunescope prune`, `checkpoint.prune_calibrated`) the same search runs with one decoder block
in memory: the database is built block by block, and `streamed.py` scores a whole selection stage in one
pass over the blocks (each candidate's hidden states run through each block with its levels put in), so
with G generations and S stages the checkpoint's blocks are read G * S + 5 times (database, dense side,
uniform, winner, pruning pass), whatever the offspring; the levels are those of the search in memory
on the float32 model (tests/pruning/test_evo.py).
How it scales, Llama-2-7B fp16 (13.5 GB; P = 6.5e9 pruned weights, hidden 4096, vocab 32000, float32 from
disk), 70 %, L = 8 levels a side (2L + 1 = 17), calibration 128 x 256 tokens:
- disk: the database beyond --evo-memory-gb, in a temporary folder (TMPDIR): masks (2L + 1) * P / 8 =
  14 GB, + for SparseGPT kept weights (2L + 1) * (1 - s) * P * 4 B = 132 GB (float32 from disk).
- RAM: one block (0.8 GB float32) + its pruned matrices' original copy (0.8 GB) + final norm and head
  (vocab x hidden x 4 B = 0.5 GB) + block 0's inputs and the dense final hidden states (calibration tokens
  x hidden x 4 B, 0.5 GB each) + a stage's per-candidate hidden states (candidates x stage tokens x hidden
  x 4 B: default max(16 x 512, 3 x 4096) x 16 KB = 0.2 GB; paper max(64 x 2048, 8 x 16384, 3 x 65536) x
  16 KB = 3.2 GB, with >= 65536 calibration tokens) + the database's in-memory part (--evo-memory-gb).
- time: I/O (G * S + 5) block reads of ~13 GB: default (40 generations x 2 stages) 85 reads = 1.1 TB, ~9
  min at 2 GB/s; paper (400 x 3) 1205 reads = 16 TB, ~2.2 h. Compute: forward tokens G * sum over stages
  of candidates x tokens (+ the dense side and two reference passes): default 40 x (16 x 512 + 3 x 4096)
  = 8.2e5, paper 400 x (64 x 2048 + 8 x 16384 + 3 x 65536) = 1.8e8, at ~13 GFLOP a token: 1.1e16 and
  2.4e18 FLOP, hours of CPU for the default, GPU hours for the paper's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ....errors import PrunescopeError
from ....layers import linear_weight
from ....util.progress import track
from ...registry import register_allocation
from ..context import Allocation, AllocationContext
from .database import (
    LevelDatabase,
    MatrixLevels,
    check_levels,
    hidden_size,
    level_grid,
    level_spec,
    prune_level,
)
from .fitness import InMemoryKL
from .search import evolve, sequences_for
from .streamed import StreamedKL

PAPER = "paper: 400 generations, 64 offspring, stages 2048,16384,65536 tokens with 8,2,1 survivors, 8 levels"


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise PrunescopeError(f"--evo-{what} must be a comma list of integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise PrunescopeError(f"--evo-{what} must be a comma list of positive integers, got {text!r}")
    return values


@dataclass(frozen=True)
class EvoOptions:
    generations: int = field(
        default=40, metadata={"help": f"EvoPress: generations of the search (scaled down; {PAPER})."}
    )
    offspring: int = field(default=16, metadata={"help": "EvoPress: offspring per generation (paper 64)."})
    levels: int = field(
        default=8,
        metadata={"help": "EvoPress: sparsity levels on each side of the target per matrix (paper 8)."},
    )
    stage_tokens: str = field(
        default="512,4096",
        metadata={"help": "EvoPress: calibration tokens per selection stage (paper 2048,16384,65536)."},
    )
    survivors: str = field(
        default="2,1", metadata={"help": "EvoPress: survivors per selection stage, the last 1 (paper 8,2,1)."}
    )
    seed: int = field(default=0, metadata={"help": "EvoPress: seed of the mutations and stage samples."})
    memory_gb: float = field(
        default=4.0,
        metadata={
            "help": "EvoPress: level database kept in memory up to this size, the rest in a temp folder."
        },
    )

    def __post_init__(self) -> None:
        if self.generations < 0 or self.offspring < 1 or self.levels < 1 or self.memory_gb < 0:
            raise PrunescopeError("--evo-generations >= 0, --evo-offspring >= 1, --evo-levels >= 1 needed")
        tokens = _int_list(self.stage_tokens, "stage-tokens")
        survivors = _int_list(self.survivors, "survivors")
        if len(tokens) != len(survivors) or survivors[-1] != 1:
            raise PrunescopeError("--evo-survivors needs one count per --evo-stage-tokens stage, the last 1")


def build_database(
    context: AllocationContext, grid: dict[str, MatrixLevels], bound_bytes: int
) -> LevelDatabase:
    spec = context.spec
    method = spec.method_plugin
    database = LevelDatabase(bound_bytes)
    names = [name for block in context.per_block for name in block]
    index_of = {name: i for i, name in enumerate(names)}
    specs: dict[float, object] = {}

    def block_levels(block_layers, stats) -> None:
        for name, module in block_layers.items():
            levels = grid[name]
            for level in range(levels.low, levels.high + 1):
                sparsity = levels.sparsity(level)
                if sparsity not in specs:
                    specs[sparsity] = level_spec(spec, sparsity)
                mask, kept = prune_level(
                    module, stats.get(name) if stats else None, specs[sparsity], index_of[name]
                )
                database.put(name, level, mask, kept)

    if method.calibrated:
        for _, block_layers, stats in context.dense_statistics(method.stats, "EvoPress level database"):
            block_levels(block_layers, stats)
    else:
        blocks = track(range(len(context.per_block)), "EvoPress level database", enabled=context.progress)
        for index in blocks:
            if context.per_block[index]:
                with context.loaded(index):  # from disk, one block's weights in at a time
                    block_levels(context.per_block[index], None)
    return database


@contextmanager
def _kl_to_dense(
    context: AllocationContext,
    layers: dict[str, torch.nn.Module],
    grid: dict[str, MatrixLevels],
    database: LevelDatabase,
) -> Iterator[InMemoryKL | StreamedKL]:
    """The search's fitness, closed after (the model's weights back / the head released): in memory,
    candidate after candidate on the model; from disk, one pass over the blocks per stage."""
    kl = (
        InMemoryKL(context.model, context.samples, layers, grid, database)
        if context.load is None
        else StreamedKL(context, grid, database)
    )
    try:
        yield kl
    finally:
        kl.close()


def allocate_evo(context: AllocationContext) -> Allocation:
    spec = context.spec
    options: EvoOptions = spec.allocation_options
    if not context.samples:
        raise PrunescopeError("--allocation evo needs calibration samples")
    layers = {name: module for block in context.per_block for name, module in block.items()}
    sizes = {name: linear_weight(m).numel() for name, m in layers.items()}
    grid = level_grid(sizes, spec.sparsity, options.levels, hidden_size(context.model, sizes))
    check_levels(grid)
    start = time.perf_counter()
    database = build_database(context, grid, int(options.memory_gb * (1 << 30)))
    database_seconds = time.perf_counter() - start
    try:
        with _kl_to_dense(context, layers, grid, database) as kl:
            seqlen = max(s.shape[-1] for s in context.samples)
            available = len(context.samples)
            tokens = _int_list(options.stage_tokens, "stage-tokens")
            survivors = _int_list(options.survivors, "survivors")
            counts = [min(available, sequences_for(t, seqlen)) for t in tokens]

            names = list(layers)
            uniform = tuple(0 for _ in names)
            reference = list(range(counts[-1]))  # a fixed sample to compare uniform and the winner on
            kl_uniform = kl.many([uniform], reference)[0]
            bar = track(range(options.generations), "EvoPress search", enabled=context.progress)
            iterator = iter(bar)

            def step(generation: int, value: float) -> None:
                next(iterator, None)

            result = evolve(
                [grid[n].low for n in names],
                [grid[n].high for n in names],
                kl.many,
                available,
                options.generations,
                options.offspring,
                survivors,
                counts,
                options.seed,
                on_generation=step,
            )
            for _ in iterator:  # close the progress bar
                pass
            kl_final = kl.many([result.best], reference)[0]
            seconds = time.perf_counter() - start
            fitness_details = kl.details()
    finally:
        database_bytes = (database.memory_bytes, database.disk_bytes)
        database.close()
    levels = dict(zip(names, result.best, strict=True))
    mapping = {name: grid[name].sparsity(levels[name]) for name in names}
    blocks = []
    for index, block_layers in enumerate(context.per_block):
        if block_layers:
            count = sum(sizes[n] for n in block_layers)
            blocks.append(
                {
                    "block": context.block_name(index),
                    "sparsity": sum(mapping[n] * sizes[n] for n in block_layers) / count,
                }
            )
    total = sum(sizes.values())
    context.record(
        {
            "allocation": "evo",
            "target_sparsity": spec.sparsity,
            "nominal_sparsity": sum(grid[n].pruned(levels[n]) for n in names) / total,
            "blocks": blocks,
            "layers": mapping,
            "levels": levels,
            "search": {
                "generations": options.generations,
                "generations_run": len(result.best_fitness),
                "offspring": options.offspring,
                "levels": options.levels,
                "stage_tokens": tokens,
                "stage_sequences": counts,
                "survivors": survivors,
                "seed": options.seed,
                "weights_diff": next(iter(grid.values())).weights_diff,
                "calibration_sequences": available,
                "seqlen": seqlen,
                "best_kl": [kl_uniform, *result.best_fitness],
                "kl_uniform": kl_uniform,
                "kl_final": kl_final,
                "kl_reference_sequences": counts[-1],
                "evaluations": result.evaluations,
                "database_seconds": database_seconds,
                "database_memory_bytes": database_bytes[0],
                "database_disk_bytes": database_bytes[1],
                "from_disk": context.load is not None,
                **fitness_details,
                "seconds": seconds,
            },
        }
    )
    return Allocation(layers=mapping)


register_allocation(
    "evo",
    cite="Sieberling et al. 2025, EvoPress: Accurate Dynamic Model Compression via Evolutionary Search "
    "(ICML 2025, arXiv:2410.14649; github.com/IST-DASLab/EvoPress)",
    options=EvoOptions,
    prefix="evo",
    allocate=allocate_evo,
)
