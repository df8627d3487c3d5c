"""Loading, checking and dispatch of the native sparse kernels (`prunescope.formats._bitmask_native`).

The extension is plain C called with raw buffer addresses; this module is the only place that turns
tensors into addresses, so every check (CPU, dtype, contiguity, shape) lives here.

Kernel paths: ``avx512``, ``avx2``, ``scalar`` (native, chosen at run time from the CPU's features) and
``torch`` (pure-PyTorch reference, always available, used when the extension did not build).  The
environment variable ``PRUNESCOPE_KERNEL`` forces one path for every call that does not name one.

OpenMP: the extension links libgomp dynamically and this module imports torch before it, so the loader
binds the extension to the libgomp torch has already mapped (torch's wheel ships ``torch/lib/libgomp.so.1``
with soname ``libgomp.so.1``); `openmp_runtimes()` lists the mapped runtimes so tests can assert there is
exactly one.  Each call passes ``torch.get_num_threads()`` so the kernels use torch's thread count.
"""

from __future__ import annotations

import os

import torch  # must precede the extension import: see the module docstring

from ..errors import PrunescopeError
from ..hardware.machine import storage_parts

try:
    from . import _bitmask_native as _ext  # type: ignore[attr-defined]

    IMPORT_ERROR: str | None = None
except ImportError as _error:  # no compiler at install time, or a foreign platform
    _ext = None
    IMPORT_ERROR = str(_error)

ENV_VAR = "PRUNESCOPE_KERNEL"
KERNELS = ("avx512", "avx2", "scalar", "torch", "triton")
# The GPU kernel of the formats that have one (`formats.gpu`); the native CPU paths never take it.
TRITON = "triton"
_ISA = {"scalar": 0, "avx2": 1, "avx512": 2}
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
# csr16 with more tokens than this transposes x, so each non-zero is one broadcast FMA over 16 tokens;
# measured on Zen 4: one 16-lane gather per token loses from n = 2 on (2x slower at n = 4, 5x at n = 16)
CSR_GATHER_MAX_TOKENS = 1


def available() -> bool:
    """Whether the native extension is importable."""
    return _ext is not None


def cpu_level() -> int:
    """0 scalar, 1 AVX2, 2 AVX-512; -1 without the extension."""
    return _ext.cpu_level() if _ext is not None else -1


def has_openmp() -> bool:
    return bool(_ext is not None and _ext.has_openmp())


# The CPU does not change under a running process: computed once, as resolve_kernel runs on every call.
_AVAILABLE = tuple(name for name in ("avx512", "avx2", "scalar") if 0 <= _ISA[name] <= cpu_level()) + (
    "torch",
)


def available_kernels() -> list[str]:
    """Kernel paths usable on this machine, fastest first; ``torch`` is always last."""
    return list(_AVAILABLE)


def best_kernel() -> str:
    return _AVAILABLE[0]


def env_kernel() -> str | None:
    """``$PRUNESCOPE_KERNEL`` as given (None when unset or empty)."""
    return os.environ.get(ENV_VAR) or None


def is_triton(name: str | None) -> bool:
    """Whether a kernel name (an argument or the variable's value) names the Triton path."""
    return name is not None and name.strip().lower() == TRITON


def wants_triton(kernel: str | None) -> bool:
    """Whether `kernel`, else ``$PRUNESCOPE_KERNEL``, asks for the Triton path."""
    return is_triton(kernel or env_kernel())


def resolve_kernel(kernel: str | None = None) -> str:
    """The native CPU path a call uses: the argument, else ``$PRUNESCOPE_KERNEL``, else the best one
    available.  ``$PRUNESCOPE_KERNEL=triton`` concerns the formats with a Triton path only (see
    `formats.bitmask.NativeFormat.resolve_path`): here it means the best native path."""
    if kernel is None:  # the variable is read only when no argument names the path: this runs per call
        kernel = env_kernel()
        if is_triton(kernel):
            kernel = None
    name = kernel or _AVAILABLE[0]
    if name in _AVAILABLE:  # the per-call fast path
        return name
    name = name.strip().lower()
    if name in _AVAILABLE:
        return name
    if name not in KERNELS:
        raise PrunescopeError(
            f"unknown kernel {name!r} (from {ENV_VAR} or argument); choose one of {KERNELS}"
        )
    if name == TRITON:
        raise PrunescopeError("the Triton kernel is a GPU path of the bitmask formats, not a native CPU one")
    if name not in available_kernels():
        why = f"the native extension is not built ({IMPORT_ERROR})" if _ext is None else "this CPU lacks it"
        raise PrunescopeError(f"kernel {name!r} is not available: {why}")
    return name


def num_threads() -> int:
    return max(1, torch.get_num_threads())


def openmp_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "omp" in line.rsplit("/", 1)[-1]}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


def flush_cache(tensors: list[torch.Tensor]) -> bool:
    """Flush the tensors' memory out of every cache level (CPU tensors); False where that is impossible
    here (no extension, not x86): the caller then evicts by streaming a buffer larger than the cache."""
    if _ext is None or not hasattr(_ext, "flush"):
        return False
    done = True
    for t in storage_parts(tensors):
        if t.is_cpu and t.numel():
            done = _ext.flush(t.data_ptr(), t.numel() * t.element_size()) and done
    return done


def check_cpu(*tensors: torch.Tensor | None) -> None:
    for t in tensors:
        if t is not None and not t.is_cpu:
            raise PrunescopeError(f"the native kernels run on CPU only, got a tensor on {t.device}")


def _addr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def kernel_input(x: torch.Tensor) -> torch.Tensor:
    """x as every native kernel reads it: on the CPU, float32, contiguous.  Each conversion only when
    needed: this runs on every decode step, where microseconds count."""
    if not x.is_cpu:
        check_cpu(x)
    if x.dtype != torch.float32:
        x = x.float()
    if not x.is_contiguous():
        x = x.contiguous()
    return x


def rows_matmul(fn, kernel: str, code: int, x: torch.Tensor, in_features: int, out: int, buffers: tuple):
    """y (n, out) float32 from the extension's row kernel `fn` (`bitmask_matmul`, `bitmask_int8_matmul`),
    which takes (ISA, threads, `code`, n, in, out, x, *`buffers`, y): `buffers` are the addresses and sizes
    a module cached when its buffers were set, `x` is `kernel_input`'s."""
    y = torch.empty(x.shape[0], out, dtype=torch.float32)
    fn(_ISA[kernel], num_threads(), code, x.shape[0], in_features, out, x.data_ptr(), *buffers, y.data_ptr())
    return y


def _prepare(x, values, index, row_offsets, bias, in_features: int, checked: bool, check_buffers):
    """x, values, index (mask or columns), row_offsets and bias as the kernels take them.  `checked`: the
    caller (a module that validated its buffers when they were set, see `formats.bitmask`) vouches for all
    but x, which is checked always; else `check_buffers(index, row_offsets, in_features)` runs."""
    if not checked:
        check_cpu(values, bias)
        if values.dtype not in DTYPE_CODES:
            raise PrunescopeError(
                f"unsupported weight dtype {values.dtype}; use float32, bfloat16 or float16"
            )
    x = kernel_input(x)  # the CPU check first, as before the shape's
    if x.dim() != 2 or x.shape[1] != in_features:
        raise PrunescopeError(f"expected input (n, {in_features}), got {tuple(x.shape)}")
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
        bias = bias.float().contiguous()
    if not values.is_contiguous():
        values = values.contiguous()
    if not checked:
        check_buffers(index, row_offsets, in_features)
        if not (index.is_contiguous() and row_offsets.is_contiguous()):
            index, row_offsets = index.contiguous(), row_offsets.contiguous()
    return x, values, index, row_offsets, bias


def bitmask_matmul(
    x: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    row_offsets: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    kernel: str,
    checked: bool = False,
) -> torch.Tensor:
    """y (n, out) float32 = x (n, in) @ W^T + bias on a native path (`kernel` already resolved).
    `checked`: the buffers were validated when they were set (`check_bitmask_buffers`), not per call."""
    args = (x, values, mask, row_offsets, bias, in_features, checked, check_bitmask_buffers)
    x, values, mask, row_offsets, bias = _prepare(*args)
    out = row_offsets.numel() - 1
    if x.shape[0] >= PANEL_MIN_TOKENS and kernel != "scalar":
        return _bitmask_panels(x, values, mask, row_offsets, bias, in_features, kernel)
    y = torch.empty(x.shape[0], out, dtype=torch.float32)
    _ext.bitmask_matmul(
        _ISA[kernel],
        num_threads(),
        DTYPE_CODES[values.dtype],
        x.shape[0],
        in_features,
        out,
        _addr(x),
        _addr(values),
        values.numel(),
        _addr(mask),
        _addr(row_offsets),
        _addr(bias),
        _addr(y),
    )
    return y


def check_bitmask_buffers(mask: torch.Tensor, row_offsets: torch.Tensor, in_features: int) -> None:
    out = row_offsets.numel() - 1
    if (
        mask.dtype != torch.int16
        or row_offsets.dtype != torch.int64
        or tuple(mask.shape) != (out, (in_features + 15) // 16)
    ):
        raise PrunescopeError(
            "corrupt bitmask buffers (mask must be int16 (out, ceil(in/16)), offsets int64)"
        )


def check_csr16_buffers(col_indices: torch.Tensor, row_offsets: torch.Tensor, in_features: int) -> None:
    if col_indices.dtype != torch.int16 or row_offsets.dtype != torch.int64 or in_features > 65536:
        raise PrunescopeError(
            "corrupt csr16 buffers (columns must be int16, offsets int64, in_features <= 65536)"
        )


# From this many tokens on, the bitmask weight is decompressed a panel of rows at a time and each panel is
# multiplied by torch's GEMM: the expand-and-FMA kernel does the full dense arithmetic without a GEMM's
# register blocking, so it is compute-bound there and loses to dense (0.64x at prefill 1x64, issue 17).
PANEL_MIN_TOKENS = 16
# Bytes of one decompressed panel: it is written, then read by the GEMM while still in L2/L3.
PANEL_BYTES = 2 * 2**20
# Panels grow with the token count up to this many rows (measured up to 512 tokens), which bounds the
# scratch buffer at long prefills: 512 rows of a 4096-wide weight are 8 MiB.
PANEL_MAX_TOKEN_ROWS = 512


def panel_rows(in_features: int, n_tokens: int = 0) -> int:
    """Rows per decompressed panel: about PANEL_BYTES of float32, a multiple of 16, at least 16, and at
    least `n_tokens` (rounded up to 16, up to PANEL_MAX_TOKEN_ROWS).  A panel much shorter than the token
    count makes a GEMM too flat to block well: at 512 tokens, 128-row panels of a 1536 x 4096 weight ran at
    0.79x F.linear and 512-row ones at 1.02x (AMD EPYC Zen 3, 2 threads, s = 0.5), while at 64 tokens
    2 MiB panels win."""
    by_bytes = PANEL_BYTES // (4 * max(1, in_features)) // 16 * 16
    return max(16, by_bytes, (min(n_tokens, PANEL_MAX_TOKEN_ROWS) + 15) // 16 * 16)


def bitmask_unpack(
    values: torch.Tensor,
    mask: torch.Tensor,
    row_offsets: torch.Tensor,
    in_features: int,
    r0: int,
    r1: int,
    out: torch.Tensor,
    kernel: str,
) -> torch.Tensor:
    """Rows r0..r1 of a bitmask weight as dense float32 into `out` ((r1 - r0, in), contiguous)."""
    if out.dtype != torch.float32 or not out.is_contiguous() or out.shape != (r1 - r0, in_features):
        raise PrunescopeError(f"unpack target must be contiguous float32 ({r1 - r0}, {in_features})")
    _ext.bitmask_unpack(
        _ISA[kernel],
        num_threads(),
        DTYPE_CODES[values.dtype],
        in_features,
        row_offsets.numel() - 1,
        _addr(values),
        values.numel(),
        _addr(mask),
        _addr(row_offsets),
        r0,
        r1,
        _addr(out),
    )
    return out


def panel_matmul(
    x: torch.Tensor, out: int, in_features: int, bias: torch.Tensor | None, unpack
) -> torch.Tensor:
    """y = x @ W^T + bias, panel by panel: `unpack(r0, r1, tile)` decompresses rows r0..r1 of W into
    `tile` (float32, in C), then torch.mm into y^T's rows."""
    n = x.shape[0]
    rows = max(1, min(out, panel_rows(in_features, n)))
    panel = torch.empty(rows, in_features, dtype=torch.float32)
    yt = torch.empty(out, n, dtype=torch.float32)
    xt = x.detach().t()  # like the other native paths: no autograd graph
    with torch.no_grad():
        for r0 in range(0, out, rows):
            r1 = min(out, r0 + rows)
            tile = panel[: r1 - r0]
            unpack(r0, r1, tile)
            torch.mm(tile, xt, out=yt[r0:r1])
        y = yt.t().contiguous()
        if bias is not None:
            y += bias.detach()
    return y


def _bitmask_panels(x, values, mask, row_offsets, bias, in_features: int, kernel: str) -> torch.Tensor:
    def unpack(r0: int, r1: int, tile: torch.Tensor) -> None:
        bitmask_unpack(values, mask, row_offsets, in_features, r0, r1, tile, kernel)

    return panel_matmul(x, row_offsets.numel() - 1, in_features, bias, unpack)


def csr16_matmul(
    x: torch.Tensor,
    values: torch.Tensor,
    col_indices: torch.Tensor,
    row_offsets: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    kernel: str,
    checked: bool = False,
) -> torch.Tensor:
    """y (n, out) float32 = x (n, in) @ W^T + bias for CSR with uint16 columns (stored as int16)."""
    args = (x, values, col_indices, row_offsets, bias, in_features, checked, check_csr16_buffers)
    x, values, col_indices, row_offsets, bias = _prepare(*args)
    out = row_offsets.numel() - 1
    n = x.shape[0]
    transposed = kernel == "avx512" and n > CSR_GATHER_MAX_TOKENS
    xt = x.t().contiguous() if transposed else None
    y = torch.empty((out, n) if transposed else (n, out), dtype=torch.float32)
    _ext.csr16_matmul(
        _ISA[kernel],
        num_threads(),
        DTYPE_CODES[values.dtype],
        n,
        in_features,
        out,
        _addr(x),
        _addr(xt),
        _addr(values),
        values.numel(),
        _addr(col_indices),
        _addr(row_offsets),
        _addr(bias),
        _addr(y),
    )
    # the op promises a contiguous (n, out) result, as its fake implementation says
    return y.t().contiguous() if transposed else y


DENSE_ROWS = (1, 4)


def dense_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    kernel: str | None = None,
    rows: int = 4,
) -> torch.Tensor:
    """The C dense GEMV/GEMM with the same structure and threading: the honest benchmark reference.

    The weight may be float32, bfloat16 or float16 (converted in registers, float32 accumulation), the
    reference of the 16-bit bitmask kernels.  ``rows`` picks the one-token (AVX-512, float32) variant: 1
    streams one row at a time with the bitmask kernel's software prefetch, 4 interleaves four rows.  Which
    is faster from DRAM depends on the machine's state, so the benchmarks time both and take the faster.
    """
    if rows not in DENSE_ROWS:
        raise PrunescopeError(f"rows must be one of {DENSE_ROWS}, not {rows}")
    kernel = resolve_kernel(kernel)
    check_cpu(x, weight, bias)
    if kernel == "torch":
        return torch.nn.functional.linear(x.float(), weight.float(), None if bias is None else bias.float())
    if weight.dtype not in DTYPE_CODES:
        raise PrunescopeError(f"the dense reference kernel takes fp32/bf16/fp16, not {weight.dtype}")
    out, in_features = weight.shape
    x = x.to(torch.float32).contiguous()
    weight = weight.contiguous()
    bias = bias.to(torch.float32).contiguous() if bias is not None else None
    y = torch.empty(x.shape[0], out, dtype=torch.float32)
    _ext.dense_matmul(
        _ISA[kernel],
        num_threads(),
        DTYPE_CODES[weight.dtype],
        x.shape[0],
        in_features,
        out,
        _addr(x),
        _addr(weight),
        _addr(bias),
        _addr(y),
        rows,
    )
    return y


def check_support(format_name: str, dtype: torch.dtype, device: torch.device | str) -> None:
    """bitmask and csr16 run on CPU (native kernels, else torch) and on any other device through their
    pure-torch path, in the dtypes the C kernels know; the meta device holds no data to multiply."""
    if torch.device(device).type == "meta":
        raise PrunescopeError(f"format {format_name!r} cannot run on the meta device (it holds no data)")
    if dtype not in DTYPE_CODES:
        raise PrunescopeError(f"format {format_name!r} supports float32, bfloat16 and float16, not {dtype}")
