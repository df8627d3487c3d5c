"""The built-in sparsity allocations, one file each; importing this package registers them in this order.

Adding one: a file that calls `registry.register_allocation(name, allocate=..., options=..., cite=...)`
where `allocate(context: AllocationContext) -> Allocation` (see `context.py`), then import it below.
"""

from __future__ import annotations

# isort: off
from . import uniform, owl, dlp, lsa, from_file, evo  # noqa: F401

# isort: on
from .context import Allocation, AllocationContext

__all__ = ["Allocation", "AllocationContext"]
