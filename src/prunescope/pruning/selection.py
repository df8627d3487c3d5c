"""Exact k-smallest selection over many tensors without concatenating them.

Global magnitude pruning needs the k smallest scores across every prunable layer. Concatenating all scores
costs a second copy of the model (float32 on top of fp16 weights, even more), so instead we run a radix
select over order-preserving 32-bit keys: each pass streams over the layers (chunk by chunk) and builds a
histogram of the next digit among the candidates. Three passes pin the exact k-th key; ties at that key are
broken by (layer order, flat index), so the result is deterministic and prunes exactly k weights.
Memory overhead is one chunk of keys plus a 2048-bin histogram. The same routine works on scores streamed
from disk (larger-than-memory pruning), since it only needs to call `scores(i)` again on each pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_DIGITS = (11, 11, 10)  # bits per pass, most significant first; sums to 32
_CHUNK = 1 << 20  # 1M scores per step: the int64 key temporaries stay ~40 MB


def float_keys(scores: torch.Tensor) -> torch.Tensor:
    """Map float32 scores to int64 keys in [0, 2^32) with the same order (-0.0 and +0.0 are equal)."""
    # Adding +0.0 turns -0.0 into +0.0, so equal values get equal keys, as in a sort.
    bits = (scores.detach().to(torch.float32) + 0.0).contiguous().view(torch.int32).to(torch.int64)
    # Negative floats sort in reverse bit order: flip their magnitude bits; then shift to unsigned.
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits + (1 << 31)


def _chunks(flat: torch.Tensor):
    for start in range(0, flat.numel(), _CHUNK):
        yield flat[start : start + _CHUNK]


def kth_smallest_key(scores: Callable[[int], torch.Tensor], count: int, k: int) -> tuple[int, int]:
    """Key of the k-th smallest score (1-based) over tensors `scores(0..count-1)`, and how many are below it.

    `scores(i)` may recompute its tensor on each call (it is called once per pass).
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    prefix, shift_done, below = 0, 0, 0
    for digit in _DIGITS:
        shift = 32 - shift_done - digit
        hist = None
        for i in range(count):
            for chunk in _chunks(scores(i).reshape(-1)):
                keys = float_keys(chunk)
                if shift_done:
                    keys = keys[(keys >> (32 - shift_done)) == prefix]
                bins = torch.bincount(((keys >> shift) & ((1 << digit) - 1)), minlength=1 << digit)
                hist = bins if hist is None else hist + bins
        cumulative = torch.cumsum(hist, 0)
        bucket = int(torch.searchsorted(cumulative, torch.tensor(k - below, device=cumulative.device)))
        below += int(cumulative[bucket - 1]) if bucket > 0 else 0
        prefix = (prefix << digit) | bucket
        shift_done += digit
    return prefix, below


def global_smallest_masks(
    scores: Callable[[int], torch.Tensor], count: int, k: int
) -> Callable[[int], torch.Tensor]:
    """Masks (True = among the k smallest) for each tensor, as a function of its index.

    Must be called for i = 0, 1, ... in order: ties at the threshold go to the earliest tensors and, within a
    tensor, to the lowest flat indices.
    """
    if k <= 0:
        return lambda i: torch.zeros_like(scores(i), dtype=torch.bool)
    threshold, below = kth_smallest_key(scores, count, k)
    ties_left = k - below

    def mask_of(i: int) -> torch.Tensor:
        nonlocal ties_left
        s = scores(i)
        keys = float_keys(s.reshape(-1))
        mask = keys < threshold
        if ties_left > 0:
            equal = torch.nonzero(keys == threshold).flatten()[:ties_left]
            mask[equal] = True
            ties_left -= equal.numel()
        return mask.view(s.shape)

    return mask_of


def smallest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k smallest entries of one tensor (ties to the lowest flat index)."""
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        order = torch.sort(flat.to(torch.float32), stable=True).indices
        mask[order[:k]] = True
    return mask.view(scores.shape)


def row_smallest_mask(scores: torch.Tensor, k_per_row: int) -> torch.Tensor:
    """Mask of the k smallest entries of every row of a 2-D tensor (ties to the lowest column)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k_per_row > 0:
        order = torch.sort(scores.to(torch.float32), dim=1, stable=True).indices
        mask.scatter_(1, order[:, :k_per_row], True)
    return mask


def n_m_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M mask: in every group of M consecutive input columns of each row keep the N largest scores."""
    rows, cols = scores.shape
    groups = scores.to(torch.float32).reshape(rows, cols // m, m)
    order = torch.sort(groups, dim=2, stable=True).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, order[:, :, : m - n], True)
    return mask.reshape(rows, cols)
