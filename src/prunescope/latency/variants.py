"""The variants a latency benchmark compares: how each is built, whether it can run, and what theory predicts.

`dense` (the unpruned weight, dense kernel) is always the baseline; `masked` is the pruned weight with the
same dense kernel; every name in `prunescope.formats.FORMATS` is built generically through
`format_class(name).from_dense(weight, bias, **options)`; `semi-structured` is torch's 2:4 kernel (CUDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import formats
from ..errors import PrunescopeError
from ..formats.base import SparseLinear

BASELINE = "dense"
MASKED = "masked"
SEMI_STRUCTURED = "semi-structured"

# Largest max|out - ref| / max|ref| accepted before timing counts: reduction order differs between
# kernels, so equality is only up to accumulated rounding of the dtype.
LAYER_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}
# Through a whole model the rounding differences of every layer add up.
MODEL_TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 1e-1}


class Unsupported(Exception):
    """This format cannot run on this device/dtype/pattern; the row says why instead of timing it."""


def known_formats() -> list[str]:
    return [BASELINE, MASKED, *formats.FORMATS, SEMI_STRUCTURED]


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


def format_options(name: str, block_size: int, options: dict | None = None) -> dict:
    """Keyword options a format's `from_dense` takes beyond (weight, bias); `options` adds per-format
    ones, e.g. {"auto": {"n_tokens": (1, 64), "cache": "cold"}}."""
    extra = dict((options or {}).get(name, {}))
    return ({"block_size": block_size} if name == "bsr" else {}) | extra


def is_two_four(weight: torch.Tensor) -> bool:
    """At most 2 non-zeros in every group of 4 consecutive input weights of each row."""
    if weight.shape[-1] % 4:
        return False
    groups = (weight != 0).reshape(weight.shape[0], -1, 4).sum(-1)
    return bool((groups <= 2).all())


class SemiStructuredLinear(SparseLinear):
    """torch's 2:4 semi-structured weight (`to_sparse_semi_structured`, CUTLASS/cuSPARSELt on CUDA)."""

    format_name = SEMI_STRUCTURED

    def __init__(self, weight_ss: torch.Tensor, bias: torch.Tensor | None, nnz: int) -> None:
        out_features, in_features = weight_ss.shape
        super().__init__(in_features, out_features, bias)
        # A tensor subclass kept as a plain attribute: this module is built where it runs, never moved.
        self.weight_ss = weight_ss
        self._nnz = nnz

    @classmethod
    def check_support(cls, dtype: torch.dtype, device: torch.device) -> None:
        if torch.device(device).type != "cuda":
            raise PrunescopeError("2:4 semi-structured kernels need CUDA")
        if dtype not in (torch.float16, torch.bfloat16):
            raise PrunescopeError(f"2:4 semi-structured kernels need float16 or bfloat16, not {dtype}")

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> SemiStructuredLinear:
        cls.check_support(weight.dtype, weight.device)
        if not is_two_four(weight):
            raise PrunescopeError("weights are not 2:4 (prune with --pattern 2:4)")
        from torch.sparse import to_sparse_semi_structured

        try:
            packed = to_sparse_semi_structured(weight.detach().contiguous())
        except (RuntimeError, NotImplementedError, ValueError) as error:
            raise PrunescopeError(
                f"to_sparse_semi_structured failed: {str(error).splitlines()[0][:100]}"
            ) from None
        return cls(packed, bias, int(torch.count_nonzero(weight)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        out = F.linear(x.reshape(-1, self.in_features), self.weight_ss, self.bias)
        return out.reshape(*leading, self.out_features)

    def to_dense(self) -> torch.Tensor:
        return self.weight_ss.to_dense()

    @property
    def nnz(self) -> int:
        return self._nnz

    @property
    def dtype(self) -> torch.dtype:
        return self.weight_ss.dtype

    def flops_per_token(self) -> int:
        # The kernel multiplies the 2 kept slots of every group of 4, zeros in them included.
        return self.out_features * self.in_features

    def weight_bytes(self) -> dict[str, int]:
        # What the forward reads: packed values (cuSPARSELt folds the metadata into them) and metadata.
        parts = {name: getattr(self.weight_ss, name, None) for name in ("packed", "meta")}
        return {name: t.numel() * t.element_size() for name, t in parts.items() if t is not None}


def check_support(name: str, dtype: torch.dtype, device: torch.device) -> None:
    """Raise `Unsupported` with the reason when `name` cannot run here; dense kernels always can."""
    if name in (BASELINE, MASKED):
        return
    try:
        if name == SEMI_STRUCTURED:
            SemiStructuredLinear.check_support(dtype, device)
        else:
            formats.check_format_support(name, dtype, device)
    except PrunescopeError as error:
        raise Unsupported(str(error)) from None


def build_module(
    name: str, weight: torch.Tensor, bias: torch.Tensor | None, block_size: int, options: dict | None = None
) -> SparseLinear:
    """The `name` module of a pruned (out, in) weight; `Unsupported` when it cannot be built here."""
    check_support(name, weight.dtype, weight.device)
    try:
        if name == SEMI_STRUCTURED:
            return SemiStructuredLinear.from_dense(weight, bias)
        kwargs = format_options(name, block_size, options)
        return formats.format_class(name).from_dense(weight, bias, **kwargs)
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
