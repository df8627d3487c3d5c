"""Per-layer `auto` format: measure dense / bitmask / csr16 on the real shape, token count and sparsity.

Which format wins depends on things a formula gets wrong on a given machine (whether the weight stays in
cache, memory bandwidth, n, the sparsity pattern), so each layer is timed with interleaved repeats and the
fastest wins.  A sparse format must beat dense by `margin` to be chosen, so noise never makes a
converted model slower than the dense one.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from ..errors import PrunescopeError
from ..latency.timing import Candidate, TimingPolicy, measure_interleaved
from .bitmask import BitmaskLinear
from .csr16 import MAX_IN_FEATURES, CSR16Linear

CANDIDATES = ("dense", "bitmask", "csr16")


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
    if name == "csr16":
        return CSR16Linear.from_dense(weight, bias) if weight.shape[1] <= MAX_IN_FEATURES else None
    raise PrunescopeError(f"unknown auto candidate {name!r}; choose from {CANDIDATES}")


@torch.no_grad()
def choose_format(
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    n_tokens: int = 1,
    candidates: Sequence[str] = CANDIDATES,
    *,
    repeats: int = 7,
    margin: float = 0.03,
    seed: int = 0,
) -> nn.Module:
    """The fastest of `candidates` for this (pruned) weight at `n_tokens` input rows.

    Returns a plain `nn.Linear` for "dense", else the sparse module, with `auto_choice` (its name),
    `auto_timings` (median seconds per call of every candidate measured) and `auto_timings_min` set on it.
    """
    if not candidates:
        raise PrunescopeError("choose_format needs at least one candidate format")
    for name in candidates:
        if name not in CANDIDATES:
            raise PrunescopeError(f"unknown auto candidate {name!r}; choose from {CANDIDATES}")
    weight = weight.detach()
    modules: dict[str, nn.Module] = {}
    for name in dict.fromkeys(candidates):
        module = _build(name, weight, bias)
        if module is not None:  # csr16 cannot hold layers wider than 65536 inputs
            modules[name] = module
    g = torch.Generator(device=weight.device).manual_seed(seed)
    x = torch.randn(max(1, n_tokens), weight.shape[1], generator=g, device=weight.device).to(weight.dtype)
    policy = TimingPolicy.rounds(repeats)
    measured = measure_interleaved({name: Candidate(partial(m, x)) for name, m in modules.items()}, policy)
    timings = {name: t.median for name, t in measured.items()}
    # Decide on the minimum: other processes only ever add time, so on a shared machine the fastest sample
    # is the best estimate of a layer's own cost (the medians are recorded too).
    best = {name: t.min for name, t in measured.items()}
    choice = min(best, key=best.get)
    if choice != "dense" and "dense" in best and best[choice] > (1 - margin) * best["dense"]:
        choice = "dense"
    module = modules[choice]
    module.auto_choice = choice
    module.auto_timings = timings
    module.auto_timings_min = best
    return module


class AutoFormat:
    """The `auto` entry of the format registry: per layer, the fastest of dense / bitmask / csr16.

    `from_dense` measures the candidates on the layer's own weight at `n_tokens` input rows (default 1, the
    decode case a sparse format can win) and returns that module; a dense winner is wrapped in `DenseLinear`
    so every converted layer reverts, and is accounted, the same way.
    """

    format_name = "auto"
    n_tokens = 1

    @classmethod
    def check_support(cls, dtype: torch.dtype, device: torch.device) -> None:
        from .bitmask import BitmaskLinear

        BitmaskLinear.check_support(dtype, device)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, n_tokens: int | None = None):
        from .dense import DenseLinear

        chosen = choose_format(weight, bias, n_tokens or cls.n_tokens)
        if not isinstance(chosen, DenseLinear) and isinstance(chosen, nn.Linear):
            timings = (chosen.auto_choice, chosen.auto_timings, chosen.auto_timings_min)
            chosen = DenseLinear.from_dense(weight, bias)
            chosen.auto_choice, chosen.auto_timings, chosen.auto_timings_min = timings
        return chosen
