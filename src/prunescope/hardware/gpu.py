"""Facts about a CUDA GPU a latency figure was measured on: name, compute capability, L2, memory, versions.

Everything reads `torch.cuda` through a `cuda` argument (default: `torch.cuda`), so the choices made from
these facts (buffer sizes, the GPU's line in a report) are tested on a CPU with a stub.
"""

from __future__ import annotations

import subprocess
from typing import Any

import torch

# Used only when torch does not report the L2 size: larger than the L2 of any GPU it may run on
# (T4 4 MiB, A100 40 MiB, H100 50 MiB, H200 60 MiB, B200 126 MiB), so a flush stays a flush.
FALLBACK_L2_BYTES = 128 * 2**20
# The flush buffer is twice the L2 and never smaller than this (a write-back cache replaces a line only
# when another one needs its slot: twice its size leaves no line of the timed kernel behind).
MIN_FLUSH_BYTES = 8 * 2**20


def _cuda(cuda: Any) -> Any:
    return torch.cuda if cuda is None else cuda


def l2_bytes(device: torch.device | str | int | None = None, cuda: Any = None) -> int:
    """The L2 size of a CUDA device in bytes (`torch.cuda.get_device_properties(d).L2_cache_size`)."""
    properties = _cuda(cuda).get_device_properties(device)
    size = getattr(properties, "L2_cache_size", None)
    return int(size) if isinstance(size, int) and size > 0 else FALLBACK_L2_BYTES


def flush_bytes(l2: int) -> int:
    """Bytes of the buffer written between timed calls: twice the L2, at least MIN_FLUSH_BYTES."""
    return max(2 * l2, MIN_FLUSH_BYTES)


def _driver_cuda() -> str | None:
    """The newest CUDA version the installed driver supports (e.g. "12.4"), from the CUDA runtime."""
    getter = getattr(torch._C, "_cuda_getDriverVersion", None)
    try:
        version = int(getter()) if getter is not None else 0
    except (RuntimeError, ValueError, TypeError):
        return None
    return f"{version // 1000}.{version % 1000 // 10}" if version > 0 else None


def _driver_release() -> str | None:
    """The driver's release (e.g. "550.54.15") as nvidia-smi prints it; None without nvidia-smi."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


def gpu_facts(device: torch.device | str | int | None = None, cuda: Any = None) -> dict:
    """Name, compute capability, L2, memory, SM count, driver and torch/CUDA/cuDNN versions of a GPU."""
    cuda_module = _cuda(cuda)
    properties = cuda_module.get_device_properties(device)
    major, minor = properties.major, properties.minor
    cudnn = torch.backends.cudnn.version() if cuda is None and torch.backends.cudnn.is_available() else None
    return {
        "name": properties.name,
        "compute_capability": f"{major}.{minor}",
        "l2_bytes": l2_bytes(device, cuda),
        "memory_bytes": int(properties.total_memory),
        "multiprocessors": int(getattr(properties, "multi_processor_count", 0)) or None,
        "driver": _driver_release() if cuda is None else getattr(cuda_module, "driver", None),
        "driver_cuda": _driver_cuda() if cuda is None else getattr(cuda_module, "driver_cuda", None),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
    }


def gpu_line(facts: dict) -> str:
    """'NVIDIA H200 (sm 9.0, L2 60 MiB, 141 GiB, driver 550.54, CUDA 12.4)'."""
    parts = [f"sm {facts['compute_capability']}", f"L2 {facts['l2_bytes'] / 2**20:g} MiB"]
    parts.append(f"{facts['memory_bytes'] / 2**30:.0f} GiB")
    if facts.get("driver"):
        parts.append(f"driver {facts['driver']}")
    if facts.get("cuda"):
        parts.append(f"CUDA {facts['cuda']}")
    return f"{facts['name']} ({', '.join(parts)})"


def compute_capability(device: torch.device | str | int | None = None, cuda: Any = None) -> tuple[int, int]:
    """(major, minor) of a CUDA device; (0, 0) when there is none."""
    cuda_module = _cuda(cuda)
    if not cuda_module.is_available():
        return (0, 0)
    return tuple(cuda_module.get_device_capability(device))
