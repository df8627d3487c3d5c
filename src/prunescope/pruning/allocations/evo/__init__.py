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

In memory only: from a checkpoint on disk, search on a model that fits (or a smaller calibration set) and
apply the written allocation.json with `--allocation PATH.json`. Scale to a 7B model: database on disk
(see `database.py`: ~14 GB of masks for masking methods, + ~70 GB for SparseGPT's kept weights, fp16, 70 %),
RAM = the model + its pruned weights' dense copy + the dense hidden states (calibration tokens x hidden x
the dtype: 2^19 tokens x 4096 x 2 B = 4 GB); time ~ generations x (offspring x stage-1 tokens + ... ) forward
tokens: the paper's 400 x (64 x 2048 + 8 x 16384 + 3 x 65536) ~ 1.8e8 tokens, GPU hours, not CPU.
"""

from __future__ import annotations

import time
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
from .fitness import DenseKL
from .search import evolve, sequences_for

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


class Assembler:
    """Puts a genome's level weights into the model (only the matrices whose level changed)."""

    def __init__(
        self, layers: dict[str, torch.nn.Module], grid: dict[str, MatrixLevels], database: LevelDatabase
    ):
        self.layers, self.grid, self.database = layers, grid, database
        self.names = list(layers)
        self.original = {name: linear_weight(m).detach().clone() for name, m in layers.items()}
        self.current: dict[str, int | None] = dict.fromkeys(self.names)  # None = dense

    @torch.no_grad()
    def apply(self, genome) -> None:
        for name, level in zip(self.names, genome, strict=True):
            if self.current[name] == level:
                continue
            weight = linear_weight(self.layers[name])
            mask, kept = self.database.get(name, level, weight.shape)
            if kept is None:
                weight.copy_(self.original[name].masked_fill(mask, 0))
            else:
                weight.zero_()
                weight[~mask] = kept.to(weight.dtype)
            self.current[name] = level

    @torch.no_grad()
    def restore(self) -> None:
        for name in self.names:
            linear_weight(self.layers[name]).copy_(self.original[name])
            self.current[name] = None


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
        for block_layers in track(context.per_block, "EvoPress level database", enabled=context.progress):
            block_levels(block_layers, None)
    return database


def allocate_evo(context: AllocationContext) -> Allocation:
    spec = context.spec
    options: EvoOptions = spec.allocation_options
    if context.load is not None:
        raise PrunescopeError(
            "--allocation evo searches on a model in memory; run it on a model that fits (study / prune in "
            "memory) and apply its allocation.json to the checkpoint with --allocation PATH.json"
        )
    if not context.samples:
        raise PrunescopeError("--allocation evo needs calibration samples")
    layers = {name: module for block in context.per_block for name, module in block.items()}
    sizes = {name: linear_weight(m).numel() for name, m in layers.items()}
    grid = level_grid(sizes, spec.sparsity, options.levels, hidden_size(context.model, sizes))
    check_levels(grid)
    start = time.perf_counter()
    database = build_database(context, grid, int(options.memory_gb * (1 << 30)))
    database_seconds = time.perf_counter() - start
    assembler = Assembler(layers, grid, database)
    try:
        kl = DenseKL(context.model, context.samples)
        seqlen = max(s.shape[-1] for s in context.samples)
        available = len(context.samples)
        tokens = _int_list(options.stage_tokens, "stage-tokens")
        survivors = _int_list(options.survivors, "survivors")
        counts = [min(available, sequences_for(t, seqlen)) for t in tokens]

        def fitness(genome, ids) -> float:
            assembler.apply(genome)
            return kl(ids)

        names = list(layers)
        uniform = tuple(0 for _ in names)
        reference = list(range(counts[-1]))  # a fixed sample to compare uniform and the winner on
        kl_uniform = fitness(uniform, reference)
        bar = track(range(options.generations), "EvoPress search", enabled=context.progress)
        iterator = iter(bar)

        def step(generation: int, value: float) -> None:
            next(iterator, None)

        result = evolve(
            [grid[n].low for n in names],
            [grid[n].high for n in names],
            fitness,
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
        kl_final = fitness(result.best, reference)
        seconds = time.perf_counter() - start
    finally:
        assembler.restore()
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
                "dense_hidden_bytes": kl.hidden_bytes,
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
