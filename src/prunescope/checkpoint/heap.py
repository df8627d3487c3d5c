"""Give freed heap memory back to the OS between layers.

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
