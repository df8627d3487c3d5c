"""The variants a latency benchmark compares: how each is built, whether it can run, and what theory predicts.

`dense` (the unpruned weight, dense kernel) is always the baseline; `masked` is the pruned weight with the
same dense kernel; every name in `prunescope.formats.FORMATS` (semi-structured 2:4 included) is built
generically through `format_class(name).build(weight, bias, options)`, its options taken from the
benchmark's settings by the names the format declares (`SparseFormat.options_from`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .. import formats
from ..errors import PrunescopeError
from ..formats.base import SparseLinear

BASELINE = "dense"
MASKED = "masked"

# Largest max|out - ref| / max|ref| accepted before timing counts: reduction order differs between
# kernels, so equality is only up to accumulated rounding of the dtype.
LAYER_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}
# Through a whole model the rounding differences of every layer add up.
MODEL_TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 1e-1}


class Unsupported(Exception):
    """This format cannot run on this device/dtype/pattern; the row says why instead of timing it."""


def known_formats() -> list[str]:
    return [BASELINE, MASKED, *formats.FORMATS]


def parse_formats(value: str | list[str]) -> list[str]:
    """Validated names, baseline first (added when missing), each once, in the order given."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in known_formats()]
    if unknown:
        raise PrunescopeError(f"unknown format {unknown[0]!r}; choose from {', '.join(known_formats())}")
    if len(set(names)) != len(names):
        raise PrunescopeError("each format may be listed once")
    return [BASELINE] + [n for n in names if n != BASELINE]


def check_support(name: str, dtype: torch.dtype, device: torch.device) -> None:
    """Raise `Unsupported` with the reason when `name` cannot run here; dense kernels always can."""
    if name in (BASELINE, MASKED):
        return
    try:
        formats.check_format_support(name, dtype, device)
    except PrunescopeError as error:
        raise Unsupported(str(error)) from None


def build_module(
    name: str, weight: torch.Tensor, bias: torch.Tensor | None, settings: Mapping | None = None
) -> SparseLinear:
    """The `name` module of a pruned (out, in) weight; `Unsupported` when it cannot be built here.

    `settings` ({"block_size": 16, "n_tokens": (1, 64), "cache": "cold"}, see `LatencyConfig.settings`)
    give each format the options it declares."""
    check_support(name, weight.dtype, weight.device)
    try:
        cls = formats.format_class(name)
        return cls.build(weight, bias, cls.options_from(settings or {}))
    except (PrunescopeError, NotImplementedError) as error:
        raise Unsupported(str(error) or type(error).__name__) from None


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """max|out - ref| / max|ref|, in float64."""
    reference = reference.double()
    scale = max(float(reference.abs().max()), 1e-30) if reference.numel() else 1.0
    return float((out.double() - reference).abs().max()) / scale if reference.numel() else 0.0


def layer_theory(
    module: nn.Module | None, out_features: int, in_features: int, dtype: torch.dtype, bias
) -> dict:
    """FLOP and byte ratios a dense kernel / this format would have if time followed them exactly."""
    elsize = torch.empty((), dtype=dtype).element_size()
    bias_bytes = bias.numel() * bias.element_size() if bias is not None else 0
    dense_flops = 2 * out_features * in_features
    dense_bytes = out_features * in_features * elsize + bias_bytes
    if isinstance(module, SparseLinear):
        flops, stored = module.flops_per_token(), module.stored_bytes()
    else:
        flops, stored = dense_flops, dense_bytes
    return {
        "flops_per_token": flops,
        "dense_flops_per_token": dense_flops,
        "stored_bytes": stored,
        "dense_bytes": dense_bytes,
        "flop_theory": dense_flops / max(flops, 1),
        "byte_theory": dense_bytes / max(stored, 1),
    }
