"""`uniform`: every pruned layer at the requested sparsity (no allocation pass, no calibration needed)."""

from __future__ import annotations

from ..registry import register_allocation

register_allocation("uniform", cite="", nm_patterns=True)
