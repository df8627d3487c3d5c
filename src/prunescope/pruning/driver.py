"""The block-by-block driver of calibrated pruning, for the model in memory and for a checkpoint on disk.

1. Capture what the first decoder block receives for every calibration sample (`capture.py`).
2. The allocation, if any, computes its target sparsities (OWL: one pass of the dense model).
3. For each block: hook its pruned projections to accumulate the method's (and the refinement's)
   statistics while all samples run through the still dense block; prune those projections one by one,
   refining each mask right after; run the samples again. The outputs of the *pruned* block are the next
   block's inputs, so later layers calibrate on the activations they will really see.

Peak memory is the model plus one block's inputs and outputs for all samples, never every layer's. From
disk (`checkpoint.prune_calibrated`) the same loop runs with `BlockStorage` callbacks that load each block
before its turn, write it after and release it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import PrunescopeError
from ..layers import linear_shape, linear_weight
from ..util.linalg import HessianStats
from ..util.progress import track
from .allocations import AllocationContext
from .capture import capture_block_inputs, check_samples, find_blocks, layers_by_block, record_inputs
from .record import LayerChange, apply_mask, keep_original
from .scoring import block_score_masks, global_score_masks
from .spec import PruneSpec


@dataclass
class BlockStorage:
    """Where the weights live. In memory every callback is None. From disk: bring the modules in front of
    the blocks in around the capture (`before_capture` / `after_capture`), block i in before its turn
    (`load(i)`) and out after it (`release(i)`), and `write(i, {name: pruned module})` its projections.
    An allocation that needs the logits (evo) brings the final norm and output head in with `load_tail()`
    and out with `release_tail()`."""

    before_capture: Callable[[], None] | None = None
    after_capture: Callable[[], None] | None = None
    load: Callable[[int], None] | None = None
    release: Callable[[int], None] | None = None
    write: Callable[[int, dict[str, nn.Module]], None] | None = None
    load_tail: Callable[[], None] | None = None
    release_tail: Callable[[], None] | None = None


class _Adders:
    """Feed one projection's inputs to several statistics (the method's, the refinement's)."""

    def __init__(self, *stats: Any) -> None:
        self.stats = [item for item in stats if item is not None]

    def add(self, inputs: torch.Tensor) -> None:
        for item in self.stats:
            item.add(inputs)


def _new_stats(stats_class: type | None, block_layers: dict[str, nn.Module]) -> dict[str, Any]:
    if stats_class is None:
        return {}
    return {
        name: stats_class(linear_shape(module)[1], linear_weight(module).device)
        for name, module in block_layers.items()
    }


def _with_sparsity(spec: PruneSpec, targets: dict, key: Any) -> PruneSpec:
    return dataclasses.replace(spec, sparsity=targets[key]) if key in targets else spec


@torch.no_grad()
def prune_block(
    block: nn.Module,
    block_layers: dict[str, nn.Module],
    inputs: list,
    spec: PruneSpec,
    index_of: dict[str, int] | None = None,
    fixed_masks: dict[str, torch.Tensor] | None = None,
    report: dict | None = None,
    layer_sparsity: dict[str, float] | None = None,
) -> Iterator[tuple[str, LayerChange]]:
    """Collect the block's statistics over all samples, then prune its layers one by one (lazily, so a
    caller that streams to disk can release each layer's record before the next).

    `spec.sparsity` is this block's; `layer_sparsity` overrides it per module. Scored methods take their
    masks from `scoring.block_score_masks`. A refinement refines each mask before the next layer; its
    summary goes to `report["refine"][name]`.
    """
    if not block_layers:
        return
    method, refinement = spec.method_plugin, spec.refinement_plugin
    layer_sparsity = layer_sparsity or {}
    stats = _new_stats(method.stats, block_layers)
    moments = _new_stats(refinement.stats, block_layers) if refinement.refine is not None else {}
    gptq_after = spec.quantize is not None and not spec.joint_quantization
    hessians = _new_stats(HessianStats, block_layers) if gptq_after else {}
    if stats or moments or hessians:
        adders = {
            name: _Adders(stats.get(name), moments.get(name), hessians.get(name)) for name in block_layers
        }
        record_inputs(block, inputs, adders, block_layers)
        del adders
    masks = None
    if not method.calibrated:
        masks = block_score_masks(block_layers, spec, index_of, fixed_masks, layer_sparsity)
    for name, module in block_layers.items():
        layer_spec = _with_sparsity(spec, layer_sparsity, name)
        if method.calibrated:
            change = method.prune_layer(module, stats.pop(name), layer_spec)
        else:
            change = apply_mask(module, masks.pop(name))
        if refinement.refine is not None:
            change, info = refinement.refine(module, change, moments.pop(name, None), layer_spec)
            if report is not None:
                report.setdefault("refine", {})[name] = info
        if gptq_after:
            change = quantize_after_pruning(module, change, hessians.pop(name), spec.quantize)
        yield name, change


def quantize_after_pruning(
    module: nn.Module, change: LayerChange, hessian: HessianStats, options: Any
) -> LayerChange:
    """GPTQ on the layer's kept weights right after it is pruned (and refined), on the Hessian of the
    calibration inputs the method saw, its pruned weights held at 0; the change then keeps the whole original
    weight, since GPTQ moves kept weights too."""
    from ..quantization import quantize_layer  # lazily: only GPTQ in the pass needs it

    change = keep_original(module, change)
    change.quantized = quantize_layer(module, options, hessian, change.mask, keep_original=False).quantized
    return change


def whole_model_selection(spec: PruneSpec) -> bool:
    """A scored method's global selection over every layer, made on the dense weights before the pass."""
    return (
        not spec.method_plugin.calibrated
        and spec.effective_scope == "global"
        and not spec.pattern.structured
        and spec.allocation_plugin.allocate is None
    )


def record_realised(report: dict | None, pruned: dict[str, int], weights: dict[str, int]) -> None:
    """Add each block's realised sparsity (pruned / weights of its layers) to the allocation record."""
    if not report or "allocation" not in report:
        return
    for entry in report["allocation"].get("blocks", []):
        prefix = entry["block"] + "."
        names = [name for name in weights if name.startswith(prefix)]
        total = sum(weights[name] for name in names)
        entry["realised_sparsity"] = sum(pruned[name] for name in names) / total if total else 0.0


def _call(callback: Callable | None, *args: Any) -> None:
    if callback is not None:
        callback(*args)


@torch.no_grad()
def prune_block_by_block(
    model: nn.Module,
    layers: dict[str, nn.Module],
    spec: PruneSpec,
    calibration: list[torch.Tensor],
    on_layer: Callable[[str, LayerChange], None],
    storage: BlockStorage | None = None,
    progress: bool = True,
    report: dict | None = None,
) -> dict[str, int]:
    """Prune `layers` in place block by block (see the module docstring); `on_layer(name, change)` gets
    each layer's change as soon as it is made. Returns the pruned count per layer; `report` receives the
    allocation and refinement summaries."""
    storage = storage or BlockStorage()
    if storage.load is not None and whole_model_selection(spec):
        raise PrunescopeError(
            f"{spec.method} with the global scope in a block pass from disk (--refine or GPTQ) is not "
            "supported: the global selection needs every layer before the pass. Use --scope layer or row"
        )
    check_samples(model, calibration)
    blocks_name, blocks = find_blocks(model, layers)
    per_block = layers_by_block(layers, blocks_name, len(blocks))
    _call(storage.before_capture)
    inputs = capture_block_inputs(model, blocks[0], calibration)
    _call(storage.after_capture)

    allocate = spec.allocation_plugin.allocate
    context = AllocationContext(
        model, spec, blocks_name, blocks, per_block, inputs, storage.load, storage.release, progress, report
    )
    context.load_tail, context.release_tail = storage.load_tail, storage.release_tail
    context.samples = list(calibration)  # token ids, for allocations that run the whole model (evo)
    allocation = allocate(context) if allocate is not None else None
    block_sparsity = allocation.blocks if allocation is not None else {}
    layer_sparsity = allocation.layers if allocation is not None else {}
    fixed = None
    if allocation is None and whole_model_selection(spec):
        fixed = global_score_masks(layers, spec)  # the whole model's selection, before any layer changes
    index_of = {name: i for i, name in enumerate(layers)}
    pruned: dict[str, int] = {}
    last = context.last
    for index in track(range(last + 1), f"{spec.method} blocks", enabled=progress):
        _call(storage.load, index)
        block, block_layers = blocks[index], per_block[index]
        block_spec = _with_sparsity(spec, block_sparsity, index)
        for name, change in prune_block(
            block, block_layers, inputs, block_spec, index_of, fixed, report, layer_sparsity
        ):
            pruned[name] = int(change.mask.sum())
            on_layer(name, change)
            del change
        if block_layers:
            _call(storage.write, index, block_layers)
        if index < last:  # the pruned block's outputs feed the next block
            for item in inputs:
                item.advance(block)
        _call(storage.release, index)
    record_realised(report, pruned, {name: linear_weight(m).numel() for name, m in layers.items()})
    return pruned


def prune_calibrated(
    model: nn.Module,
    layers: dict[str, nn.Module],
    spec: PruneSpec,
    calibration: list[torch.Tensor],
    progress: bool = True,
    report: dict | None = None,
) -> dict[str, LayerChange]:
    """Prune `layers` of a model in memory block by block: a calibrated method, or any method with an
    allocation and / or a refinement. `report` receives the allocation and refinement summaries."""
    if not spec.needs_calibration:
        raise PrunescopeError(f"{spec.method} is not a calibrated method")
    if not calibration:
        raise PrunescopeError(f"{spec.method} needs calibration data; none was given")
    changes: dict[str, LayerChange] = {}
    prune_block_by_block(model, layers, spec, calibration, changes.__setitem__, None, progress, report)
    return {name: changes[name] for name in layers}
