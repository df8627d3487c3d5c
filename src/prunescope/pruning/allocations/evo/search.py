"""EvoPress's (1 + lambda) search over integer levels (IST-DASLab/EvoPress, read at 50888a0).

- Genome: one level per matrix, starting from all zeros (the uniform allocation).
- Mutation (`mutate`): k = min(U{1,3}, U{1,3}) flips; each flip takes one level off a random matrix that
  has a lower level and gives one to a random matrix that has a higher level (the two may coincide), so
  the sum of levels, hence the count of kept weights, never changes. Offspring equal to the parent or to
  an earlier offspring are rejected.
- Selection in stages (`staged_selection`): stage i scores the remaining candidates on its own fresh
  random sample of calibration sequences (one sample per stage, shared by its candidates) and keeps the
  best `survivors[i]`; the parent joins in the last stage only, re-scored; the winner is the next parent.

The search is generic over `fitness(genomes, sample) -> list[float]` (lower is better), one call per
stage scoring all its candidates on the stage's sample, so it can be tested on a toy fitness and a
block-streamed fitness reads the model once per stage (`streamed.py`); `one_by_one` makes one of a
per-genome fitness. `evo/__init__.py` gives it the KL to the dense model.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Genome = tuple[int, ...]
Fitness = Callable[[Sequence[Genome], object], list[float]]  # (candidates, sample) -> their fitnesses


def one_by_one(fitness: Callable[[Genome, object], float]) -> Fitness:
    """A stage fitness that scores its candidates one after the other with `fitness(genome, sample)`."""

    def many(genomes: Sequence[Genome], sample: object) -> list[float]:
        return [fitness(genome, sample) for genome in genomes]

    return many


def mutate(genome: Sequence[int], low: Sequence[int], high: Sequence[int], rng: random.Random) -> Genome:
    """One offspring of `genome` (module docstring); `low` / `high` are each matrix's level bounds."""
    child = list(genome)
    flips = min(rng.randint(1, 3), rng.randint(1, 3))
    for _ in range(flips):
        down = [i for i, level in enumerate(child) if level - 1 >= low[i]]
        up = [i for i, level in enumerate(child) if level + 1 <= high[i]]
        if not down or not up:
            break
        child[rng.choice(down)] -= 1
        child[rng.choice(up)] += 1
    return tuple(child)


def offspring_of(
    parent: Genome, count: int, low: Sequence[int], high: Sequence[int], rng: random.Random
) -> list[Genome]:
    """`count` distinct offspring differing from the parent (fewer if the level space is that small)."""
    children: list[Genome] = []
    seen = {parent}
    attempts = 0
    while len(children) < count and attempts < 100 * count + 1000:
        attempts += 1
        child = mutate(parent, low, high, rng)
        if child not in seen:
            seen.add(child)
            children.append(child)
    return children


def draw_samples(rng: random.Random, available: int, counts: Sequence[int]) -> list[list[int]]:
    """One fresh random sample of sequence indices per stage (without replacement inside a stage)."""
    return [sorted(rng.sample(range(available), min(count, available))) for count in counts]


def staged_selection(
    offspring: Sequence[Genome],
    parent: Genome,
    survivors: Sequence[int],
    samples: Sequence[object],
    fitness: Fitness,
) -> tuple[Genome, float]:
    """The winner of one generation and its fitness on the last stage's sample (ties: earlier first)."""
    pool = list(offspring)
    scores: list[float] = []
    for stage, (keep, sample) in enumerate(zip(survivors, samples, strict=True)):
        if stage == len(survivors) - 1:
            pool.append(parent)
        values = fitness(pool, sample)
        order = sorted(range(len(pool)), key=lambda i: values[i])[:keep]
        pool = [pool[i] for i in order]
        scores = [values[i] for i in order]
    return pool[0], scores[0]


@dataclass
class SearchResult:
    best: Genome
    best_fitness: list[float] = field(default_factory=list)  # per generation, on its last stage's sample
    evaluations: int = 0
    seconds: float = 0.0


def evolve(
    low: Sequence[int],
    high: Sequence[int],
    fitness: Fitness,
    available: int,
    generations: int,
    offspring: int,
    survivors: Sequence[int],
    stage_counts: Sequence[int],
    seed: int = 0,
    on_generation: Callable[[int, float], None] | None = None,
) -> SearchResult:
    """Run the search from the all-zeros genome; `available` sequences, `stage_counts` per stage."""
    if len(survivors) != len(stage_counts) or not survivors or survivors[-1] != 1:
        raise ValueError("one survivor count per stage, the last one 1")
    rng = random.Random(seed)
    parent: Genome = tuple(0 for _ in low)
    result = SearchResult(parent)
    calls = 0

    def counted(genomes: Sequence[Genome], sample: object) -> list[float]:
        nonlocal calls
        calls += len(genomes)
        return fitness(genomes, sample)

    start = time.perf_counter()
    for generation in range(generations):
        children = offspring_of(parent, offspring, low, high, rng)
        if not children:
            break
        samples = draw_samples(rng, available, stage_counts)
        parent, value = staged_selection(children, parent, survivors, samples, counted)
        result.best_fitness.append(value)
        if on_generation is not None:
            on_generation(generation, value)
    result.best, result.evaluations, result.seconds = parent, calls, time.perf_counter() - start
    return result


def sequences_for(tokens: int, seqlen: int) -> int:
    """Sequences of `seqlen` tokens that make up `tokens` (at least one)."""
    return max(1, math.ceil(tokens / seqlen))
