"""Facts about the machine a latency figure was measured on: CPU, caches, ISA path, threads, huge pages.

This module sits below `formats` and `latency` (both use it) and imports neither: what only the native
kernels know (their ISA path, a clflush of a tensor's lines) is passed in by the caller.

A speedup measured on one x86 machine does not carry over to another (a 32 MiB L3 and a 480 MiB L3 make
the same 64 MB weight cold or hot; MKL's GEMV is fast on one CPU and slow on another), so every result
names the machine it came from.  Cache sizes come from sysfs (`/sys/devices/system/cpu/cpu0/cache`),
else from `lscpu`, else a stated fallback.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import PrunescopeError
from ..util import units

# Takes tensors out of every cache level in place (e.g. `formats.native.flush_cache`); False when it cannot.
LineFlush = Callable[[list[torch.Tensor]], bool]

SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
# Used only when neither sysfs nor lscpu says: larger than most desktop L3s, so "cold" stays cold.
FALLBACK_LLC_BYTES = 64 * 2**20
# Flags that decide which kernel path and which conversions a CPU has.
_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def parse_size(text: str) -> int | None:
    """'32768K' / '32 MiB' / '512 KiB' / '1048576' -> bytes (the one unit rule of `util.units`: Linux's bare
    K/M/G are binary); None if unreadable, so a cache that cannot be read is simply not reported."""
    try:
        return units.parse_size(text)
    except PrunescopeError:
        return None


def _sysfs_caches(root: Path) -> dict[str, int]:
    caches: dict[str, int] = {}
    for index in sorted(root.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = parse_size((index / "size").read_text())
        except OSError:
            continue
        if size is None or kind == "Instruction":
            continue
        caches[f"L{level}" + ("d" if kind == "Data" else "")] = size
    return caches


def _lscpu_caches() -> dict[str, int]:
    try:
        text = subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"}
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    caches = {}
    for key, name in (("L1d", "L1d"), ("L2", "L2"), ("L3", "L3")):
        # lscpu prints the total over instances, e.g. "L2 cache: 1 MiB (2 instances)"
        match = re.search(rf"^{key} cache:\s*([\d.]+\s*[KMG]i?B?)(?:\s*\((\d+) instances?\))?", text, re.M)
        if match:
            size = parse_size(match.group(1))
            count = int(match.group(2) or 1)
            if size:
                caches[name] = size // count if name != "L3" else size
    return caches


@lru_cache(maxsize=1)
def cache_sizes(root: Path = SYSFS_CACHE) -> dict[str, int]:
    """Data/unified cache sizes per instance in bytes ({"L1d": ..., "L2": ..., "L3": ...}); {} if unknown."""
    return _sysfs_caches(root) or _lscpu_caches()


def llc_bytes(caches: dict[str, int] | None = None) -> int:
    """Size of the last-level cache (the largest one listed), or FALLBACK_LLC_BYTES when unknown."""
    caches = cache_sizes() if caches is None else caches
    return max(caches.values()) if caches else FALLBACK_LLC_BYTES


def last_level_cache(device: torch.device | str | None = None) -> int:
    """Bytes of the last cache a weight on `device` is read through: the GPU's L2 on CUDA, else the CPU's
    LLC.  Cold-cache timing sizes its rotated copies and flush buffers from it."""
    if device is not None and torch.device(device).type == "cuda":
        from .gpu import l2_bytes

        return l2_bytes(torch.device(device))
    return llc_bytes()


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """Model name, vendor, family/model numbers and the kernel-relevant flags from /proc/cpuinfo."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "vendor": fields.get("vendor_id"),
        "family": int(fields["cpu family"]) if fields.get("cpu family", "").isdigit() else None,
        "model": int(fields["model"]) if fields.get("model", "").isdigit() else None,
        "flags": [f for f in _FLAGS if f in flags],
    }


def storage_parts(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The plain tensors holding the data of strided, sparse CSR/BSR and COO tensors (others skipped)."""
    parts = []
    for t in tensors:
        if t.layout == torch.strided:
            try:
                t.data_ptr()  # wrapper subclasses (no storage of their own) raise here
            except RuntimeError:
                continue
            parts.append(t)
        elif t.layout in (torch.sparse_csr, torch.sparse_bsr):
            parts += [t.crow_indices(), t.col_indices(), t.values()]
        elif t.layout == torch.sparse_coo:
            parts += [t._indices(), t._values()]
    return parts


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes the tensors really hold (a sparse CSR tensor's numel() counts its zeros too)."""
    return sum(t.numel() * t.element_size() for t in storage_parts(tensors))


def cache_flusher(
    tensors: list[torch.Tensor],
    llc: int | None = None,
    flush_lines: LineFlush | None = None,
    device: torch.device | str | None = None,
) -> Callable[[], None]:
    """A call that takes `tensors` out of every cache level.

    On a CUDA `device` (default: the first tensor's), writing a buffer larger than the GPU's L2
    (`hardware.timing.gpu_flusher`).  On the CPU, `flush_lines(tensors)` where it can (the native
    clflush: cheap, proportional to their size), else streaming a buffer of 2x the LLC."""
    from .timing import evictor, gpu_flusher

    if device is None:
        device = tensors[0].device if tensors else torch.device("cpu")
    if torch.device(device).type == "cuda":
        return gpu_flusher(device)
    tensors = [t for t in tensors if t.is_cpu]
    if flush_lines is not None and flush_lines(tensors[:1]):

        def flush() -> None:
            flush_lines(tensors)

        return flush
    return evictor(2 * (llc or llc_bytes()))


def _thp_setting() -> str | None:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    match = re.search(r"\[(\w+)\]", text)
    return match.group(1) if match else text.strip()


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:g} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:g} KiB"


def machine_facts(
    dtype: torch.dtype | str | None = None,
    cache: str | None = None,
    isa: str | None = None,
    device: torch.device | str | None = None,
) -> dict:
    """What every latency result records about where and how it was measured.

    `isa` is the native kernel path in use (the caller asks `formats.native.resolve_kernel()`); on a CUDA
    `device` the GPU is named too (`gpu`: name, compute capability, L2, memory, driver, versions)."""
    caches = cache_sizes()
    info = cpu_info()
    facts = {
        "cpu": info["cpu"],
        "cpu_vendor": info["vendor"],
        "cpu_family": info["family"],
        "cpu_model": info["model"],
        "cpu_flags": info["flags"],
        "cpu_count": os.cpu_count(),
        "caches_bytes": caches,
        "llc_bytes": llc_bytes(caches),
        "llc_source": "sysfs/lscpu" if caches else "fallback",
        "isa": isa,
        "threads": torch.get_num_threads(),
        # PyTorch's switch (tensors >= 2 MB on transparent huge pages) and the kernel's THP mode
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
        "transparent_hugepage": _thp_setting(),
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
        "cache": cache,
    }
    if device is not None and torch.device(device).type == "cuda":
        from .gpu import gpu_facts

        facts["gpu"] = gpu_facts(torch.device(device))
    return facts


def machine_line(facts: dict) -> str:
    """One line naming the machine: 'AMD EPYC (family 25 model 1), L3 32 MiB, isa avx2, 2 threads, ...'."""
    family = ""
    if facts.get("cpu_family") is not None:
        family = f" (family {facts['cpu_family']} model {facts['cpu_model']})"
    caches = ", ".join(f"{k} {_mib(v)}" for k, v in facts.get("caches_bytes", {}).items()) or (
        f"LLC {_mib(facts['llc_bytes'])} (fallback)"
    )
    parts = [f"{facts['cpu']}{family}", caches]
    if facts.get("isa"):
        parts.append(f"isa {facts['isa']}")
    parts.append(f"{facts['threads']} threads")
    if facts.get("gpu"):
        from .gpu import gpu_line

        parts.insert(0, gpu_line(facts["gpu"]))
    if facts.get("dtype"):
        parts.append(facts["dtype"])
    if facts.get("cache"):
        parts.append(f"{facts['cache']} cache")
    parts.append(f"huge pages {'on' if facts.get('thp_mem_alloc') else 'off'}")
    return ", ".join(parts)
