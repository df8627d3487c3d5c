"""Per-layer `auto` format: measure dense / bitmask / csr16 on the real shape, token count and sparsity.

On a CUDA device the candidates are the formats with a CUDA path (dense, bitmask on its torch path and on
its Triton kernel, csr16, csr), timed with CUDA events, and "cold" flushes the GPU's L2 (see
`hardware.timing`).

Which format wins depends on things a formula gets wrong on a given machine (whether the weight stays in
cache, memory bandwidth, n, the sparsity pattern), so each layer is timed with interleaved repeats and the
fastest wins.  A sparse format must beat dense by `margin` to be chosen, so noise never makes a
converted model slower than the dense one.  Timings are cold-cache by default (every call reads weights
in no cache, as decode of a model larger than the last-level cache does), at the decode and the prefill
token counts: a weight timed hot on a CPU with a large L3 would measure the cache, not the DRAM stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..errors import PrunescopeError
from ..hardware.machine import cache_flusher, last_level_cache, tensor_bytes
from ..hardware.timing import (
    Candidate,
    TimingPolicy,
    check_cache_mode,
    cold_candidate,
    measure_interleaved,
    timer_for,
)
from . import native
from .base import SparseFormat, clone_module
from .bitmask import BitmaskLinear
from .csr import CSRLinear
from .csr16 import MAX_IN_FEATURES, CSR16Linear
from .gpu import triton_bitmask

CANDIDATES = ("dense", "bitmask", "csr16")
# On a GPU the native kernels do not run: bitmask is timed on its torch path and, where Triton is
# installed, on its Triton kernel ("bitmask-triton", `formats.gpu`), and cuSPARSE's CSR is one more
# candidate; the timer decides.
CUDA_CANDIDATES = ("dense", "bitmask", "bitmask-triton", "csr16", "csr")
KNOWN = tuple(dict.fromkeys(CANDIDATES + CUDA_CANDIDATES))
# At the token counts after the first (prefill), a sparse choice must keep this fraction of dense's speed
# on its own layer.  0.90, not 0.95: at 512 tokens bitmask panels and dense do the same GEMM, so a layer's
# two timings tie within the noise of a shared machine, and a 0.95 bar rejected 36 of 84 layers of the
# bench_decode model on noise alone (Zen 3: decode 1.29x dense instead of bitmask's 1.76x).  Attention,
# norms and lm_head stay dense, so a model's prefill loses less than its pruned layers do.  Decided on the
# fastest of the interleaved repeats, which other processes can only slow down.
KEEP = 0.90


def _build(name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module | None:
    if name == "dense":
        dense = nn.Linear(
            weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype, device=weight.device
        )
        dense.weight.data.copy_(weight)
        if bias is not None:
            dense.bias.data.copy_(bias)
        dense.requires_grad_(False)
        return dense
    if name == "bitmask":
        return BitmaskLinear.from_dense(weight, bias)
    if name == "bitmask-triton":
        try:
            triton_bitmask.check_usable(weight.device)
        except PrunescopeError:  # no Triton here, or a device it does not compile for: not a candidate
            return None
        return BitmaskLinear.from_dense(weight, bias, kernel="triton")
    if name == "csr16":
        return CSR16Linear.from_dense(weight, bias) if weight.shape[1] <= MAX_IN_FEATURES else None
    if name == "csr":
        try:
            return CSRLinear.from_dense(weight, bias)
        except PrunescopeError:  # a dtype cuSPARSE lacks on this device: not a candidate
            return None
    raise PrunescopeError(f"unknown auto candidate {name!r}; choose from {KNOWN}")


def default_candidates(device: torch.device | str) -> tuple[str, ...]:
    """The candidates `auto` times on `device`: CUDA_CANDIDATES on CUDA, else CANDIDATES."""
    return CUDA_CANDIDATES if torch.device(device).type == "cuda" else CANDIDATES


def _nbytes(module: nn.Module) -> int:
    return tensor_bytes([*module.parameters(), *module.buffers()])


def _candidate(module: nn.Module, x: torch.Tensor, cache: str, llc: int) -> Candidate:
    if cache == "hot":
        return Candidate(partial(module, x))
    made: list[nn.Module] = []

    def make() -> partial:
        # the first copy is the module itself: no extra memory for weights larger than 2x the LLC
        made.append(clone_module(module) if made else module)
        return partial(made[-1], x)

    tensors = [*module.parameters(), *module.buffers()]
    flush = cache_flusher(tensors, llc, native.flush_cache, device=x.device)
    return cold_candidate(make, _nbytes(module), llc, flush)


def _can_win(best: dict[str, float], margin: float) -> dict[str, float]:
    """The candidates still in the running after the first token count: dense, and the sparse ones that beat
    it there by `margin` (the others can never be chosen, so their prefill timings are skipped: csr16 at
    512 tokens takes a second a call)."""
    if "dense" not in best:
        return best
    return {k: t for k, t in best.items() if k == "dense" or t <= (1 - margin) * best["dense"]}


def _fastest(best: dict[int, dict[str, float]], tokens: list[int], margin: float, keep: float) -> str:
    """The candidate to use: fastest at tokens[0] among those that beat dense there by `margin` (dense
    itself included) and are, at every other token count, at least `keep` times dense's speed.  Only
    candidates timed at every count compete (`choose_format` stops timing those that lost at tokens[0])."""
    timed = {k: v for k, v in best[tokens[0]].items() if all(k in best[n] for n in tokens)}
    first = _can_win(timed, margin)
    ok = [
        name
        for name in first
        if name == "dense"
        or "dense" not in first
        or all(best[n][name] * keep <= best[n]["dense"] for n in tokens[1:])
    ]
    if not ok:  # candidates without dense (an explicit list): fall back to the fastest at tokens[0]
        ok = list(first)
    return min(ok, key=first.get)


def _reason(
    best: dict[int, dict[str, float]], tokens: list[int], choice: str, margin: float, keep: float
) -> str:
    """Why `_fastest` chose `choice`, from the same fastest timings (report.md's auto table)."""
    first, at_first = best[tokens[0]], _tokens_text(tokens[0])
    if choice != "dense":
        return f"{choice} fastest at {at_first}"
    sparse = {k: t for k, t in first.items() if k != "dense"}
    if not sparse:
        return "no sparse candidate"
    name = min(sparse, key=sparse.get)
    if sparse[name] >= first["dense"]:
        return f"sparse slower at {at_first}"
    if sparse[name] > (1 - margin) * first["dense"]:
        return f"sparse within the {margin:.0%} margin of dense at {at_first}"
    lost = next((n for n in tokens[1:] if best[n][name] * keep > best[n]["dense"]), tokens[-1])
    return f"{name} under {keep:.0%} of dense's speed at {_tokens_text(lost)}"


def _tokens_text(n: int) -> str:
    return f"{n} token" if n == 1 else f"{n} tokens"


@torch.no_grad()
def choose_format(
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    n_tokens: int | Sequence[int] = 1,
    candidates: Sequence[str] | None = None,
    *,
    repeats: int = 7,
    margin: float = 0.03,
    keep: float = KEEP,
    cache: str = "cold",
    seed: int = 0,
) -> nn.Module:
    """The fastest of `candidates` for this (pruned) weight at `n_tokens` input rows.

    `n_tokens` may list several counts (decode first, e.g. ``(1, 64)``): the choice is the fastest at the
    first count among the candidates at least `keep` x dense's speed at the others, so a format that wins
    decode is not taken if it loses prefill.  `cache="cold"` (default) times every call on weights that
    are in no cache, as decode reads them (see `hardware.timing.cold_candidate`); "hot" repeats one copy.
    `candidates` default to `default_candidates(weight.device)`; on CUDA they are timed with CUDA events.

    Returns a plain `nn.Linear` for "dense", else the sparse module, with `auto_choice` (its name),
    `auto_timings` (median seconds per call of every candidate at the first count), `auto_timings_min`,
    `auto_timings_by_n` ({n: {name: median}}; after the first count only dense and the candidates that
    beat it there by `margin`), `auto_cache` and `auto_reason` (why, in words) set on it.
    """
    if candidates is None:
        candidates = default_candidates(weight.device)
    if not candidates:
        raise PrunescopeError("choose_format needs at least one candidate format")
    for name in candidates:
        if name not in KNOWN:
            raise PrunescopeError(f"unknown auto candidate {name!r}; choose from {KNOWN}")
    cache = check_cache_mode(cache)
    tokens = [n_tokens] if isinstance(n_tokens, int) else list(dict.fromkeys(n_tokens))
    if not tokens or any(n < 1 for n in tokens):
        raise PrunescopeError(f"auto needs token counts >= 1, got {n_tokens!r}")
    weight = weight.detach()
    modules: dict[str, nn.Module] = {}
    for name in dict.fromkeys(candidates):
        module = _build(name, weight, bias)
        if module is not None:  # csr16 cannot hold layers wider than 65536 inputs
            modules[name] = module
    llc = last_level_cache(weight.device)
    timer = timer_for(weight.device)
    g = torch.Generator(device=weight.device).manual_seed(seed)
    policy = TimingPolicy.rounds(repeats)
    medians: dict[int, dict[str, float]] = {}
    best: dict[int, dict[str, float]] = {}
    running = dict(modules)
    for n in tokens:
        x = torch.randn(n, weight.shape[1], generator=g, device=weight.device).to(weight.dtype)
        candidates_now = {k: _candidate(m, x, cache, llc) for k, m in running.items()}
        measured = measure_interleaved(candidates_now, policy, timer=timer)
        medians[n] = {k: t.median for k, t in measured.items()}
        # Decide on the minimum: other processes only ever add time, so on a shared machine the fastest
        # sample is the best estimate of a layer's own cost (the medians are recorded too).
        best[n] = {k: t.min for k, t in measured.items()}
        if n == tokens[0]:
            running = {k: running[k] for k in _can_win(best[n], margin)}
    choice = _fastest(best, tokens, margin, keep)
    module = modules[choice]
    module.auto_choice = choice
    module.auto_timings = medians[tokens[0]]
    module.auto_timings_min = best[tokens[0]]
    module.auto_timings_by_n = medians
    module.auto_cache = cache
    module.auto_reason = _reason(best, tokens, choice, margin, keep)
    return module


# The layer-table columns of a layer `auto` converted (structure.layer_table): the choice and the fastest
# timings at the first token count it was made on, dense's and the best sparse candidate's.
AUTO_COLUMNS = ("auto_choice", "auto_tokens", "auto_dense_s", "auto_sparse", "auto_sparse_s", "auto_reason")


def auto_details(module: nn.Module) -> dict:
    """What `auto` decided for this converted layer, as AUTO_COLUMNS; {} for a module it did not choose."""
    choice = getattr(module, "auto_choice", None)
    if choice is None:
        return {}
    fastest = module.auto_timings_min
    sparse = {k: t for k, t in fastest.items() if k != "dense"}
    best = min(sparse, key=sparse.get) if sparse else ""
    return {
        "auto_choice": choice,
        "auto_tokens": next(iter(module.auto_timings_by_n)),
        "auto_dense_s": fastest.get("dense", float("nan")),
        "auto_sparse": best,
        "auto_sparse_s": sparse.get(best, float("nan")),
        "auto_reason": getattr(module, "auto_reason", ""),
    }


@dataclass(frozen=True)
class AutoOptions:
    """Token counts each layer is timed at (decode first, then a prefill size the choice must not lose
    at: KEEP x dense's speed) and the cache state of the timing ("cold" or "hot")."""

    n_tokens: tuple[int, ...] = (1, 64)
    cache: str = "cold"

    def __post_init__(self) -> None:
        tokens = (self.n_tokens,) if isinstance(self.n_tokens, int) else tuple(self.n_tokens)
        if not tokens or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in tokens):
            raise PrunescopeError(f"auto needs token counts >= 1, got {self.n_tokens!r}")
        object.__setattr__(self, "n_tokens", tokens)
        object.__setattr__(self, "cache", check_cache_mode(self.cache))


class AutoFormat(SparseFormat):
    """The `auto` entry of the format registry: per layer, the fastest of the candidates on its device.

    `from_dense` measures the candidates on the layer's own weight, cold cache, at `n_tokens` input rows
    (default 1 and 64: the decode case a sparse format can win, and a prefill it must not lose) and returns
    that module; a dense winner is wrapped in `DenseLinear` so every converted layer reverts, and is
    accounted, the same way.  It is a factory: the modules it returns are of the chosen format.
    """

    format_name = "auto"
    Options = AutoOptions

    @classmethod
    def check_support(cls, dtype: torch.dtype, device: torch.device | str) -> None:
        # dense is always a candidate: auto runs wherever bitmask's dtypes do (bitmask has a path on
        # every device with data).
        BitmaskLinear.check_support(dtype, device)

    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        n_tokens: int | Sequence[int] = AutoOptions.n_tokens,
        cache: str = AutoOptions.cache,
    ):
        from .dense import DenseLinear

        cls.check_support(weight.dtype, weight.device)
        chosen = choose_format(weight, bias, n_tokens, cache=cache)
        if not isinstance(chosen, DenseLinear) and isinstance(chosen, nn.Linear):
            names = (
                "auto_choice",
                "auto_timings",
                "auto_timings_min",
                "auto_timings_by_n",
                "auto_cache",
                "auto_reason",
            )
            timings = {k: getattr(chosen, k) for k in names}
            chosen = DenseLinear.from_dense(weight, bias)
            for k, v in timings.items():
                setattr(chosen, k, v)
        return chosen
