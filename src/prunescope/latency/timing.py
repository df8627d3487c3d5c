"""Time several candidates against each other on a noisy machine, with an injectable clock.

Candidates are measured in interleaved rounds (one sample of each per round), so a slow phase of the
machine (another process, frequency change) hits every candidate alike and ratios of medians taken from
the same run stay meaningful. Each round runs the candidates in a new (seeded) shuffled order: in a fixed
or rotating order every candidate always follows the same one, and what that one leaves in the cache
biases it (measured: a 10 MB weight timed after another small one ran ~12 % faster than its own copy
timed after a 64 MB one). Each sample repeats a candidate `inner` times, chosen from the warm-up so that
every sample lasts about the same time, well above the clock's resolution.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import PrunescopeError

Clock = Callable[[], float]


def _no_sync() -> None:
    return None


@dataclass(frozen=True)
class Candidate:
    """Something to time. `setup` runs untimed before each sample (and forces one call per sample)."""

    run: Callable[[], object]
    setup: Callable[[], object] | None = None


@dataclass(frozen=True)
class TimingPolicy:
    """How long to measure: every candidate gets >= `min_repeats` samples and >= `min_time` seconds.

    A candidate whose calls are so slow that it passed `max_time` stops at 3 samples; `max_rounds` caps
    the rounds whatever happens (a clock that does not advance must not loop forever).
    """

    warmup: int = 2
    min_time: float = 0.2
    min_repeats: int = 7
    max_time: float = 3.0
    max_rounds: int = 1000
    max_inner: int = 10_000

    def __post_init__(self) -> None:
        if self.warmup < 1 or self.min_repeats < 1 or self.max_rounds < 1 or self.max_inner < 1:
            raise PrunescopeError("timing needs warmup, min_repeats, max_rounds and max_inner >= 1")
        if self.min_time < 0 or self.max_time < self.min_time:
            raise PrunescopeError("timing needs 0 <= min_time <= max_time")

    @classmethod
    def rounds(cls, repeats: int, min_sample: float = 2e-4) -> TimingPolicy:
        """Exactly `repeats` rounds (no time budget), fast calls batched into samples of >= `min_sample` s
        so timer resolution and call overhead do not decide."""
        return cls(warmup=2, min_repeats=repeats, min_time=repeats * min_sample, max_time=math.inf)

    @property
    def target_sample(self) -> float:
        return self.min_time / self.min_repeats


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one candidate: one entry per sample (each the mean of `inner` calls)."""

    samples: tuple[float, ...]
    inner: int = 1

    @property
    def repeats(self) -> int:
        return len(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "median_s": self.median,
            "min_s": self.min,
            "max_s": self.max,
            "mean_s": self.mean,
            "stdev_s": self.stdev,
            "repeats": self.repeats,
            "inner": self.inner,
        }


def _one_sample(candidate: Candidate, inner: int, clock: Clock, sync: Callable[[], None]) -> float:
    """Total seconds of `inner` calls; work queued before the start (setup) is finished first."""
    if candidate.setup is not None:
        candidate.setup()
    sync()
    start = clock()
    for _ in range(inner):
        candidate.run()
    sync()
    return clock() - start


def choose_inner(call_seconds: float, policy: TimingPolicy, has_setup: bool) -> int:
    """Calls per sample so that one sample lasts about `policy.target_sample`."""
    if has_setup:
        return 1
    if call_seconds <= 0:
        return policy.max_inner
    return max(1, min(policy.max_inner, math.ceil(policy.target_sample / call_seconds)))


def _done(samples: list[float], spent: float, policy: TimingPolicy) -> bool:
    if len(samples) >= policy.min_repeats and spent >= policy.min_time:
        return True
    return len(samples) >= 3 and spent >= policy.max_time


def measure_interleaved(
    candidates: dict[str, Candidate],
    policy: TimingPolicy | None = None,
    clock: Clock = time.perf_counter,
    sync: Callable[[], None] = _no_sync,
) -> dict[str, Timing]:
    """Warm every candidate up, then sample them in interleaved, shuffled rounds until all are done."""
    policy = policy or TimingPolicy()
    if not candidates:
        return {}
    names = list(candidates)
    inner: dict[str, int] = {}
    for name in names:
        # The fastest warm-up call estimates the cost; the first one often pays one-off allocations.
        calls = [_one_sample(candidates[name], 1, clock, sync) for _ in range(policy.warmup)]
        inner[name] = choose_inner(min(calls), policy, candidates[name].setup is not None)
    samples: dict[str, list[float]] = {name: [] for name in names}
    spent = dict.fromkeys(names, 0.0)
    order = random.Random(0)  # seeded: the same candidates are timed in the same orders on every run
    for _ in range(policy.max_rounds):
        for name in order.sample(names, len(names)):
            total = _one_sample(candidates[name], inner[name], clock, sync)
            samples[name].append(total / inner[name])
            spent[name] += total
        if all(_done(samples[n], spent[n], policy) for n in names):
            break
    return {name: Timing(tuple(samples[name]), inner[name]) for name in names}


def measure(
    run: Callable[[], object],
    policy: TimingPolicy | None = None,
    clock: Clock = time.perf_counter,
    sync: Callable[[], None] = _no_sync,
) -> Timing:
    """Time one callable (see `measure_interleaved`)."""
    return measure_interleaved({"only": Candidate(run)}, policy, clock, sync)["only"]
