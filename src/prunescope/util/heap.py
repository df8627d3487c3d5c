"""Keep RSS honest: return freed heap memory to the OS, and own the weights a checkpoint mmap lends.

glibc keeps freed chunks of the many tensor-sized allocations in its arenas, so a loop that allocates and
frees one layer at a time still sees its RSS ratchet up towards several layers. `malloc_trim(0)` after each
layer returns that memory; it costs well under a millisecond per call. A no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _trim = _libc.malloc_trim
except (OSError, AttributeError):  # musl, macOS, Windows
    _trim = None


def trim_heap() -> None:
    if _trim is not None:
        _trim(0)


_PAGE = 4096
_MADV_DONTNEED = 4


def _checkpoint_mappings() -> list[tuple[int, int]]:
    """Address ranges of memory-mapped safetensors files in this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            lines = maps.readlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[5].endswith(".safetensors"):
            low, high = (int(part, 16) for part in fields[0].split("-"))
            ranges.append((low, high))
    return ranges


def own_storage(model) -> int:
    """Copy every parameter and buffer that is a view of a memory-mapped checkpoint into its own memory.

    from_pretrained leaves CPU weights as views of the mmapped safetensors file. Pruning then writes into
    them copy-on-write, and a weight swapped for a sparse module is never freed while the file mapping
    lives. After each copy the source pages are dropped with MADV_DONTNEED: they are clean pages of a
    private file mapping, so this only evicts them (a later read would re-read the file), and the copy
    does not double the model in memory. Returns how many tensors were copied.
    """
    ranges = _checkpoint_mappings()
    if not ranges or _libc is None:
        return 0
    import torch

    copied = 0
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            storage = tensor.untyped_storage()
            start, size = storage.data_ptr(), storage.nbytes()
            if tensor.device.type != "cpu" or not any(
                lo <= start and start + size <= hi for lo, hi in ranges
            ):
                continue
            tensor.data = tensor.data.clone()
            first, last = -(-start // _PAGE) * _PAGE, (start + size) // _PAGE * _PAGE
            if last > first:
                _libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)
            copied += 1
    return copied
