"""Remember exactly what pruning changed, so the dense model comes back without a second copy of it.

For zeroing methods we keep the mask bit-packed plus only the removed values: at 30 % sparsity that is
~1.3 bytes per fp32 weight instead of 4. Methods that also update the kept weights (SparseGPT) keep a copy
of the original weight of each layer they touched: still only the pruned layers, never the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers import linear_weight

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    bits = (packed.unsqueeze(1) & _BIT_WEIGHTS.to(packed.device)) != 0
    return bits.reshape(-1)[: shape.numel()].view(shape)


@dataclass
class LayerChange:
    """How to undo pruning of one layer: mask + removed values, or the full original weight."""

    shape: torch.Size
    packed_mask: torch.Tensor
    removed: torch.Tensor | None = None
    original: torch.Tensor | None = None
    # A joint prune + quantize pass (`PruneSpec.quantize`): the layer's QuantizedWeight, whose dequantized
    # values the weight now holds. Not undo data: restoring copies `original` back.
    quantized: Any = None

    @property
    def mask(self) -> torch.Tensor:
        return unpack_mask(self.packed_mask, self.shape)

    @property
    def nbytes(self) -> int:
        tensors = [self.packed_mask, self.removed, self.original]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass
class PruneRecord:
    """The result of pruning a model in place: per-layer changes, the request, and timings."""

    spec: object
    changes: dict[str, LayerChange] = field(default_factory=dict)
    seconds: float = 0.0
    # OWL's per-block allocation ("allocation") and DSnoT's per-layer summary ("refine"), when used.
    details: dict = field(default_factory=dict)

    @property
    def layer_names(self) -> list[str]:
        return list(self.changes)

    def pruned_count(self) -> int:
        return sum(int(c.mask.sum()) for c in self.changes.values())

    def total_count(self) -> int:
        return sum(c.shape.numel() for c in self.changes.values())

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.changes.values())

    def spill(self, path: str | Path) -> None:
        """Move the removed values to a file until `unspill`: a sparse variant holds the kept values twice
        the pruned layers' size, and the record is not needed until the dense model comes back."""
        if getattr(self, "_spilled", None) is not None:
            return
        torch.save({n: (c.removed, c.original) for n, c in self.changes.items()}, path)
        for change in self.changes.values():
            change.removed = change.original = None
        self._spilled = Path(path)

    def unspill(self) -> None:
        path = getattr(self, "_spilled", None)
        if path is None:
            return
        for name, (removed, original) in torch.load(path, weights_only=True).items():
            self.changes[name].removed, self.changes[name].original = removed, original
        path.unlink()
        self._spilled = None


def apply_mask(module: nn.Module, mask: torch.Tensor, keep_original: bool = False) -> LayerChange:
    """Zero `mask` (True = prune) in the module's (out, in) weight, in place, and return how to undo it."""
    weight = linear_weight(module)
    with torch.no_grad():
        change = LayerChange(
            shape=weight.shape,
            packed_mask=pack_mask(mask),
            # What restore needs waits in host memory: on a GPU the device keeps only the model.
            removed=None if keep_original else weight[mask].to("cpu", copy=True),
            original=weight.detach().to("cpu", copy=True) if keep_original else None,
        )
        weight.masked_fill_(mask, 0)
    return change


def record_update(module: nn.Module, original: torch.Tensor, mask: torch.Tensor) -> LayerChange:
    """For methods that rewrite the kept weights: the weight is already updated; keep the original."""
    return LayerChange(shape=original.shape, packed_mask=pack_mask(mask), original=original.to("cpu"))


def keep_original(module: nn.Module, change: LayerChange) -> LayerChange:
    """The same change, undone by copying the whole original weight back: for a step after pruning that
    also moves kept weights (GPTQ). The original is the weight now with the removed values put back."""
    if change.original is not None:
        return change
    with torch.no_grad():
        original = linear_weight(module).detach().to("cpu", copy=True)
        original[change.mask] = change.removed.to(original.dtype)
    return LayerChange(shape=change.shape, packed_mask=change.packed_mask, original=original)


def restore_layer(module: nn.Module, change: LayerChange) -> None:
    weight = linear_weight(module)
    with torch.no_grad():
        if change.original is not None:
            weight.copy_(change.original)
        else:
            weight[change.mask.to(weight.device)] = change.removed.to(weight.device, weight.dtype)
