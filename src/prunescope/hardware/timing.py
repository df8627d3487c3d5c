"""Time several candidates against each other on a noisy machine, with an injectable clock.

Candidates are measured in interleaved rounds (one sample of each per round), so a slow phase of the
machine (another process, frequency change) hits every candidate alike and ratios of medians taken from
the same run stay meaningful. Each round runs the candidates in a new (seeded) shuffled order: in a fixed
or rotating order every candidate always follows the same one, and what that one leaves in the cache
biases it (measured: a 10 MB weight timed after another small one ran ~12 % faster than its own copy
timed after a 64 MB one). Each sample repeats a candidate `inner` times, chosen from the warm-up so that
every sample lasts about the same time, well above the clock's resolution.

Cache state: `cold_candidate` makes every timed call read weights that are in no cache (rotating over
copies whose total exceeds twice the last-level cache, or flushing a working set too small to rotate
before each sample), as decode of a model larger than the cache does; plain candidates are "hot".

On a GPU (`timer_for(cuda device)`) a sample is timed with a pair of CUDA events around its calls (the
host's clock would time the launches, not the kernels), and "cold" means the GPU's L2 is flushed between
timed calls by writing a buffer larger than it (`gpu_flusher`), as `triton.testing.do_bench` does.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import PrunescopeError

Clock = Callable[[], float]


def _no_sync() -> None:
    return None


# ----------------------------------------------------------------------------------------------- timers


class Timer(Protocol):
    """Times one sample: `start()` before its calls, `stop()` after them returns the seconds between."""

    def start(self) -> None: ...

    def stop(self) -> float: ...


class WallTimer:
    """The host's clock, with `sync` (waiting for queued device work) before reading it each time."""

    def __init__(self, clock: Clock = time.perf_counter, sync: Callable[[], None] = _no_sync) -> None:
        self.clock = clock
        self.sync = sync
        self.began = 0.0

    def start(self) -> None:
        self.sync()
        self.began = self.clock()

    def stop(self) -> float:
        self.sync()
        return self.clock() - self.began


class CudaEventTimer:
    """A pair of CUDA events recorded on the current stream around the calls: the GPU's own time of the
    kernels, not of their launches.  `cuda` is `torch.cuda` (a stub in tests)."""

    def __init__(self, cuda: Any = None) -> None:
        if cuda is None:
            import torch

            cuda = torch.cuda
        self.cuda = cuda
        self.begin: Any = None

    def start(self) -> None:
        self.begin = self.cuda.Event(enable_timing=True)
        self.begin.record()

    def stop(self) -> float:
        end = self.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return self.begin.elapsed_time(end) / 1e3  # milliseconds


def device_sync(device: Any) -> Callable[[], None]:
    """Wait for queued GPU work, so a host-clock sample measures the kernels and not their launch."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.synchronize
    if kind == "mps":
        return torch.mps.synchronize
    return _no_sync


def timer_for(device: Any, clock: Clock | None = None, sync: Callable[[], None] | None = None) -> Timer:
    """CUDA events on a CUDA device (unless a `clock` is injected, as tests do), else the host clock
    with the device's synchronisation."""
    import torch

    if clock is None and sync is None and torch.device(device).type == "cuda":
        return CudaEventTimer()
    return WallTimer(clock or time.perf_counter, sync or device_sync(device))


@dataclass(frozen=True)
class Candidate:
    """Something to time. `setup` runs untimed before each sample (and forces one call per sample)."""

    run: Callable[[], object]
    setup: Callable[[], object] | None = None
    # The setup's time counts towards the policy's time budget, and a sample at least a quarter of a
    # batched one: a cache eviction before a call of microseconds must not take thousands of samples.
    setup_in_budget: bool = False


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


def _of_samples(statistic: Callable[[tuple[float, ...]], Any]) -> property:
    """A read-only property: `statistic` of the instance's samples."""
    return property(lambda self: statistic(self.samples))


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one candidate: one entry per sample (each the mean of `inner` calls)."""

    samples: tuple[float, ...]
    inner: int = 1

    # Statistics of the samples, seconds per call (`repeats`: how many samples).
    repeats = _of_samples(len)
    min = _of_samples(min)
    median = _of_samples(statistics.median)
    max = _of_samples(max)
    mean = _of_samples(statistics.fmean)
    stdev = _of_samples(lambda samples: statistics.stdev(samples) if len(samples) > 1 else 0.0)

    def as_dict(self) -> dict[str, float | int]:
        seconds = {f"{name}_s": getattr(self, name) for name in ("median", "min", "max", "mean", "stdev")}
        return {**seconds, "repeats": self.repeats, "inner": self.inner}


def _one_sample(
    candidate: Candidate, inner: int, clock: Clock, timer: Timer, setup_time: list | None = None
) -> float:
    """Total seconds of `inner` calls; work queued before the start (setup) is finished first (a wall
    timer syncs, CUDA events are ordered after it on the stream).  The setup's host seconds are appended
    to `setup_time` when given."""
    if candidate.setup is not None:
        before = clock()
        candidate.setup()
        if setup_time is not None:
            setup_time.append(clock() - before)
    timer.start()
    for _ in range(inner):
        candidate.run()
    return timer.stop()


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
    timer: Timer | None = None,
) -> dict[str, Timing]:
    """Warm every candidate up, then sample them in interleaved, shuffled rounds until all are done.

    Samples are timed by `timer` (e.g. `CudaEventTimer`), default the host `clock` with `sync`."""
    policy = policy or TimingPolicy()
    if not candidates:
        return {}
    timer = timer or WallTimer(clock, sync)
    names = list(candidates)
    inner: dict[str, int] = {}
    for name in names:
        # The fastest warm-up call estimates the cost; the first one often pays one-off allocations.
        calls = [_one_sample(candidates[name], 1, clock, timer) for _ in range(policy.warmup)]
        inner[name] = choose_inner(min(calls), policy, candidates[name].setup is not None)
    samples: dict[str, list[float]] = {name: [] for name in names}
    spent = dict.fromkeys(names, 0.0)
    order = random.Random(0)  # seeded: the same candidates are timed in the same orders on every run
    for _ in range(policy.max_rounds):
        for name in order.sample(names, len(names)):
            setup_time: list[float] = []
            total = _one_sample(candidates[name], inner[name], clock, timer, setup_time)
            samples[name].append(total / inner[name])
            if candidates[name].setup_in_budget:
                # One call per sample after an eviction: a sample counts at least a quarter of a batched
                # sample, so a microsecond call takes <= 4x min_repeats samples, not thousands.
                total_in_budget = max(total + sum(setup_time), policy.target_sample / 4)
            else:
                total_in_budget = total
            spent[name] += total_in_budget
        if all(_done(samples[n], spent[n], policy) for n in names):
            break
    return {name: Timing(tuple(samples[name]), inner[name]) for name in names}


# ------------------------------------------------------------------------------------------ cache state

CACHE_MODES = ("cold", "hot")
# Copies of one working set at most; beyond that (tiny layers) the cache is evicted before each sample.
MAX_COPIES = 64


def check_cache_mode(mode: str) -> str:
    mode = mode.strip().lower()
    if mode not in CACHE_MODES:
        raise PrunescopeError(f"cache mode must be one of {CACHE_MODES}, not {mode!r}")
    return mode


def cold_copies(nbytes: int, llc: int) -> int:
    """Copies of an `nbytes` working set whose total exceeds twice the last-level cache `llc`.

    Called one after the other, each copy has been pushed out by the others before it is read again (a
    sequential stream twice the cache's size evicts its own beginning under LRU-like replacement)."""
    if nbytes <= 0:
        return 1
    return 2 * llc // nbytes + 1


class Rotation:
    """Each call runs the next of several equivalent calls (each bound to its own copy of the weights)."""

    def __init__(self, calls: list[Callable[[], object]]) -> None:
        if not calls:
            raise PrunescopeError("a rotation needs at least one call")
        self.calls = calls
        self.next = 0

    def __call__(self) -> object:
        call = self.calls[self.next]
        self.next = (self.next + 1) % len(self.calls)
        return call()


class Evictor:
    """Reads a buffer of `nbytes` (twice the last-level cache): whatever was cached before is gone."""

    def __init__(self, nbytes: int) -> None:
        import torch  # here, not at the top: the timing core itself needs no torch

        # ones, not zeros: a calloc'ed buffer maps the shared zero page and reading it touches no memory
        self.buffer = torch.ones(max(1, nbytes // 4), dtype=torch.float32)

    def __call__(self) -> None:
        self.buffer.sum()


_EVICTORS: dict[int, Evictor] = {}


def evictor(nbytes: int) -> Evictor:
    """One shared evictor per size (the buffer is large: allocated once per process)."""
    if nbytes not in _EVICTORS:
        _EVICTORS[nbytes] = Evictor(nbytes)
    return _EVICTORS[nbytes]


class GpuFlusher:
    """Writes a device buffer larger than the GPU's L2 (`hardware.gpu.flush_bytes`): whatever a kernel
    left in the L2 is gone, as `triton.testing.do_bench` flushes between timed calls.  A write, not a
    read: the L2 is write-back, so zeroing the buffer replaces every line."""

    def __init__(self, nbytes: int, device: Any) -> None:
        import torch

        self.nbytes = nbytes
        self.buffer = torch.empty(max(1, nbytes // 4), dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()


_GPU_FLUSHERS: dict[tuple[str, int], GpuFlusher] = {}


def gpu_flusher(device: Any, nbytes: int | None = None) -> GpuFlusher:
    """One shared L2 flusher per device, its buffer sized from the device's L2 unless `nbytes` says."""
    import torch

    from .gpu import flush_bytes, l2_bytes

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    nbytes = nbytes or flush_bytes(l2_bytes(device))
    key = (str(device), nbytes)
    if key not in _GPU_FLUSHERS:
        _GPU_FLUSHERS[key] = GpuFlusher(nbytes, device)
    return _GPU_FLUSHERS[key]


def cold_candidate(
    make: Callable[[], Callable[[], object]],
    nbytes: int,
    llc: int,
    evict: Callable[[], object] | None = None,
    max_copies: int = MAX_COPIES,
) -> Candidate:
    """A candidate whose every timed call reads weights from memory, not from a cache.

    `make()` returns a call bound to a fresh copy of the weights (`nbytes` each; the first call of `make`
    may return the original).  Up to `max_copies` copies whose total exceeds 2x `llc` are rotated; a
    working set too small for that is timed one call per sample after `evict()` (default: streaming a
    buffer of 2x `llc`), run untimed as `Candidate.setup`."""
    copies = cold_copies(nbytes, llc)
    if copies <= max_copies:
        return Candidate(Rotation([make() for _ in range(copies)]))
    return Candidate(make(), setup=evict or evictor(2 * llc), setup_in_budget=True)


def with_eviction(candidate: Candidate, llc: int, evict: Callable[[], object] | None = None) -> Candidate:
    """`candidate` with the cache evicted after its own setup (model level: prefill, then evict)."""
    evict = evict or evictor(2 * llc)
    setup = candidate.setup

    def both() -> None:
        if setup is not None:
            setup()
        evict()

    return Candidate(candidate.run, both, setup_in_budget=candidate.setup is None)


def measure(
    run: Callable[[], object],
    policy: TimingPolicy | None = None,
    clock: Clock = time.perf_counter,
    sync: Callable[[], None] = _no_sync,
    timer: Timer | None = None,
) -> Timing:
    """Time one callable (see `measure_interleaved`)."""
    return measure_interleaved({"only": Candidate(run)}, policy, clock, sync, timer)["only"]
