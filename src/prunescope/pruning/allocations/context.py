"""What an allocation plug-in receives and returns.

The driver calls `allocate(context)` once, after block 0's inputs are captured and before any weight
changes. The allocation may run the dense model block by block (`dense_statistics`), whether the blocks live
in memory or are loaded from disk one at a time (`load` / `release`), and returns target sparsities per
block index and / or per module name. Its record for run.json goes to `report["allocation"]`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...layers import linear_shape, linear_weight
from ...util.progress import track
from ..capture import BlockInput, record_inputs
from ..spec import PruneSpec


@dataclass
class Allocation:
    """Target sparsities replacing `spec.sparsity`: per block index (all its pruned layers) and per module
    name (wins over its block's; inside such a block every matrix is its own comparison group)."""

    blocks: dict[int, float] = field(default_factory=dict)
    layers: dict[str, float] = field(default_factory=dict)


@dataclass
class AllocationContext:
    model: nn.Module  # from disk, its blocks are on the meta device except while loaded
    spec: PruneSpec
    blocks_name: str  # "model.decoder.layers"
    blocks: nn.ModuleList
    per_block: list[dict[str, nn.Module]]  # each block's pruned projections by module name
    inputs: list[BlockInput]  # block 0's inputs per sample; leave them as they are (use `fresh_inputs`)
    load: Callable[[int], None] | None = None  # bring block i's weights in (from disk), or None
    release: Callable[[int], None] | None = None
    progress: bool = True
    report: dict | None = None
    samples: list[torch.Tensor] | None = None  # the calibration token ids (1, seqlen), for whole-model passes
    # From disk: bring the final norm and output head in (`capture.after_blocks`) / out again, or None.
    load_tail: Callable[[], None] | None = None
    release_tail: Callable[[], None] | None = None

    @property
    def last(self) -> int:
        """Index of the last block holding pruned layers: later blocks need not run."""
        return max(i for i, block_layers in enumerate(self.per_block) if block_layers)

    def block_name(self, index: int) -> str:
        return f"{self.blocks_name}.{index}" if self.blocks_name else str(index)

    def fresh_inputs(self) -> list[BlockInput]:
        """Copies of block 0's inputs that a pass may advance (the pruning pass starts from the originals)."""
        return [item.copy() for item in self.inputs]

    def record(self, entry: dict) -> None:
        if self.report is not None:
            self.report["allocation"] = entry

    @contextmanager
    def loaded(self, index: int) -> Iterator[nn.Module]:
        """Block `index`, its weights brought in (from disk) while the caller uses it and released after."""
        if self.load is not None:
            self.load(index)
        try:
            yield self.blocks[index]
        finally:
            if self.release is not None:
                self.release(index)

    @torch.no_grad()
    def dense_statistics(
        self, stats_class: type, label: str
    ) -> Iterator[tuple[int, dict[str, nn.Module], dict[str, Any]]]:
        """One pass of the calibration samples through the DENSE blocks: for each block holding pruned
        layers, (index, its layers, {name: stats_class(in_features, device) fed with that layer's inputs}).

        The block's weights are loaded while the caller handles what is yielded, released after.
        """
        current = self.fresh_inputs()
        last = self.last
        for index in track(range(last + 1), label, enabled=self.progress):
            if self.load is not None:
                self.load(index)
            block_layers = self.per_block[index]
            stats = {
                name: stats_class(linear_shape(module)[1], linear_weight(module).device)
                for name, module in block_layers.items()
            }
            record_inputs(self.blocks[index], current, stats, block_layers, advance=index < last)
            if block_layers:
                yield index, block_layers, stats
            del stats
            if self.release is not None:
                self.release(index)


def allocate_by_block(
    context: AllocationContext,
    stats_class: type,
    label: str,
    measure: Callable[[dict[str, nn.Module], dict[str, Any]], float],
    sparsities: Callable[[list[float]], list[float]],
    key: str,
    header: dict,
) -> Allocation:
    """The closed-form allocations' frame: one dense pass measuring each block (`measure(its layers, its
    stats)`), block sparsities from the measures in block order, and the record (`header`, then per block
    its measure under `key` and its target sparsity; the driver adds the realised one)."""
    measures: dict[int, float] = {}
    for index, block_layers, stats in context.dense_statistics(stats_class, label):
        measures[index] = measure(block_layers, stats)
    indices = sorted(measures)
    values = sparsities([measures[i] for i in indices])
    context.record(
        {
            **header,
            "blocks": [
                {"block": context.block_name(i), key: measures[i], "sparsity": s}
                for i, s in zip(indices, values, strict=True)
            ],
        }
    )
    return Allocation(blocks=dict(zip(indices, values, strict=True)))
