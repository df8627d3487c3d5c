"""Memory bookkeeping: peak host and GPU memory for run.json, and the one-line out-of-memory message."""

from __future__ import annotations

import platform
import re
import sys

from .units import size_text

# What torch and the allocators say when an allocation fails, whatever the device (CUDA's
# OutOfMemoryError is matched by type; MPS and CPU raise plain RuntimeErrors).
_OOM_TEXT = re.compile(
    r"out of memory|can't allocate memory|cannot allocate memory|not enough memory|"
    r"failed to allocate|DefaultCPUAllocator",
    re.IGNORECASE,
)
LOWER = "lower --batch-size, --calib-samples or --max-tokens, or use --dtype float16"


def peak_rss_bytes() -> int:
    """Peak resident set of this process, in bytes."""
    import resource

    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _cuda_in_use() -> bool:
    """CUDA has been initialised in this process (never initialise it just to ask)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()


def peak_memory() -> dict:
    """{"peak_rss_bytes": ..., and when CUDA is in use "cuda_max_allocated_bytes": {"cuda:0": ...}}.

    The CUDA figure is `torch.cuda.max_memory_allocated` per device: tensors only, since the start or the
    last `reset_peak_memory()` (the caching allocator reserves more: "cuda_max_reserved_bytes")."""
    peak: dict = {"peak_rss_bytes": peak_rss_bytes()}
    if _cuda_in_use():
        import torch

        count = torch.cuda.device_count()
        peak["cuda_max_allocated_bytes"] = {
            f"cuda:{i}": torch.cuda.max_memory_allocated(i) for i in range(count)
        }
        peak["cuda_max_reserved_bytes"] = {
            f"cuda:{i}": torch.cuda.max_memory_reserved(i) for i in range(count)
        }
    return peak


def reset_peak_memory() -> None:
    """Start the CUDA peaks afresh (between points of a sweep, say); RSS peaks cannot be reset."""
    if _cuda_in_use():
        import torch

        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation failure on any device: MemoryError, torch's OutOfMemoryError, or a RuntimeError
    whose message says so (MPS, the CPU allocator)."""
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch else None
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and bool(_OOM_TEXT.search(str(error)))


def _oom_device(error: BaseException) -> str:
    text = str(error)
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch else None
    if (oom_type is not None and isinstance(error, oom_type)) or re.search(r"\bCUDA\b", text):
        match = re.search(r"GPU (\d+)", text)
        if match:
            return f"cuda:{match.group(1)}"
        try:
            return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cuda"
        except Exception:  # the message matters more than the index
            return "cuda"
    if re.search(r"\bMPS\b", text):
        return "mps"
    return "cpu"


def device_memory(device: str) -> tuple[int, int] | None:
    """(bytes in use, total bytes) on `device` ("cuda:0", "mps", "cpu"); None if unknown."""
    try:
        if device.startswith("cuda"):
            import torch

            index = int(device.partition(":")[2] or torch.cuda.current_device())
            free, total = torch.cuda.mem_get_info(index)
            return total - free, total
        if device == "mps":
            import torch

            return torch.mps.driver_allocated_memory(), torch.mps.recommended_max_memory()
        import psutil

        memory = psutil.virtual_memory()
        return memory.total - memory.available, memory.total
    except Exception:  # the one-line message is printed without figures then
        return None


def out_of_memory_message(error: BaseException) -> str:
    """'out of memory on cuda:0 (14.20 GB in use of 15.64 GB): lower --batch-size, ...'"""
    device = _oom_device(error)
    used = device_memory(device)
    figures = f" ({size_text(used[0])} in use of {size_text(used[1])})" if used else ""
    return f"out of memory on {device}{figures}: {LOWER}"


__all__ = [
    "device_memory",
    "is_out_of_memory",
    "out_of_memory_message",
    "peak_memory",
    "peak_rss_bytes",
    "reset_peak_memory",
]
