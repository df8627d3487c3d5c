"""Helpers shared by the closed-form allocations (DLP, LSA): the OWL-style spread of block scores."""

from __future__ import annotations

from collections.abc import Sequence

# A block sparsity is kept inside [0, MAX_BLOCK_SPARSITY], as OWL's (`owl.py`).
MAX_BLOCK_SPARSITY = 0.99


def minmax_spread(values: Sequence[float], amplitude: float) -> list[float]:
    """d_l = 2 * amplitude * (v_l - min v) / (max v - min v); all zeros when the values are equal."""
    if not values:
        return []
    low, high = min(values), max(values)
    spread = high - low
    return [(v - low) / spread * 2 * amplitude if spread > 0 else 0.0 for v in values]


def clip_sparsity(value: float) -> float:
    return min(max(value, 0.0), MAX_BLOCK_SPARSITY)
