"""The sequential engine for calibrated pruning (Wanda, SparseGPT), block by block like the papers.

1. Capture what the first decoder block receives for every calibration sample: hidden states plus every
   other argument (attention mask, position ids / embeddings, cache position, ...). A forward pre-hook with
   `with_kwargs=True` records them and raises a sentinel, so nothing after the embeddings runs.
2. For each block: hook its pruned projections to accumulate statistics while all samples run through the
   (still dense) block; prune those projections; run the samples again. The outputs of the *pruned* block
   are the next block's inputs, so later layers calibrate on the activations they will really see.

Peak memory is the model plus one block's inputs and outputs for all samples, never every layer's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import PrunescopeError
from ..layers import linear_shape, linear_weight
from ..util.progress import track
from .allocation import allocation_record, outlier_ratio, owl_sparsities
from .dsnot import MomentStats, refine_layer
from .magnitude import magnitude_scores, mask_from_scores, random_scores
from .record import LayerChange, apply_mask, pack_mask, unpack_mask
from .ria import prune_ria
from .selection import global_smallest_masks
from .sparsegpt import HessianStats, prune_sparsegpt
from .spec import PruneSpec
from .wanda import WandaStats, prune_wanda, wanda_scores

# method -> (statistics accumulator class, per-layer prune function)
_METHODS: dict[str, tuple[type, Callable[[nn.Module, Any, PruneSpec], LayerChange]]] = {
    "wanda": (WandaStats, prune_wanda),
    "sparsegpt": (HessianStats, prune_sparsegpt),
    "ria": (WandaStats, prune_ria),
}


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once block 0's inputs are known."""


@dataclass
class BlockInput:
    """Everything one decoder block is called with for one sample; `hidden` replaces the hidden states."""

    args: tuple  # positional arguments after the hidden states
    kwargs: dict
    hidden: torch.Tensor
    in_kwargs: bool  # hidden states were passed as `hidden_states=` rather than positionally

    def call(self, block: nn.Module) -> torch.Tensor:
        if self.in_kwargs:
            out = block(*self.args, **{**self.kwargs, "hidden_states": self.hidden})
        else:
            out = block(self.hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


def _share(value: Any, previous: Any) -> Any:
    """`previous` when equal to `value`: masks and position tables are usually the same for every sample,
    and a (1, 1, L, L) mask per sample would cost more than the hidden states."""
    if torch.is_tensor(value) and torch.is_tensor(previous):
        same = (
            value.shape == previous.shape
            and value.dtype == previous.dtype
            and value.device == previous.device
        )
        return previous if same and torch.equal(value, previous) else value
    if isinstance(value, tuple) and isinstance(previous, tuple) and len(value) == len(previous):
        return tuple(_share(v, p) for v, p in zip(value, previous, strict=True))
    return value


def find_blocks(model: nn.Module, layers: dict[str, nn.Module]) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder blocks holding the pruned projections (`model.decoder.layers`, `h`, ...).

    The outermost list that holds the most pruned layers wins (a nested list, e.g. MoE experts, holds
    fewer). Every pruned layer must live inside one of its blocks.
    """
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList):
            continue
        prefix = f"{name}." if name else ""
        held = sum(1 for layer in layers if layer.startswith(prefix))
        if held and (best is None or held > best[0]):
            best = (held, name, module)
    if best is None:
        raise PrunescopeError(
            "calibrated pruning needs decoder blocks (an nn.ModuleList); none holds the layers"
        )
    _, name, blocks = best
    prefix = f"{name}." if name else ""
    outside = [layer for layer in layers if not layer.startswith(prefix)]
    if outside:
        raise PrunescopeError(
            f"calibrated pruning works block by block; {outside[0]} is outside the decoder blocks "
            f"({name}). Exclude it (--exclude) or use magnitude pruning"
        )
    return name, blocks


def layers_by_block(layers: dict[str, nn.Module], blocks_name: str, count: int) -> list[dict[str, nn.Module]]:
    prefix = f"{blocks_name}." if blocks_name else ""
    grouped: list[dict[str, nn.Module]] = [{} for _ in range(count)]
    for name, module in layers.items():
        grouped[int(name[len(prefix) :].split(".")[0])][name] = module
    return grouped


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, block: nn.Module, samples: Sequence[torch.Tensor]
) -> list[BlockInput]:
    """What `block` (the first decoder block) is called with, for each sample (see the module docstring)."""
    device = _device_of(model)
    captured: list[BlockInput] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        in_kwargs = not args
        hidden = kwargs.pop("hidden_states") if in_kwargs else args[0]
        rest = args if in_kwargs else args[1:]  # never keep a second reference to the hidden states
        if captured:
            rest = _share(rest, captured[-1].args)
            kwargs = {key: _share(value, captured[-1].kwargs.get(key)) for key, value in kwargs.items()}
        captured.append(BlockInput(rest, kwargs, hidden, in_kwargs))
        raise _Captured

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for sample in samples:
            try:
                model(input_ids=sample.to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    if len(captured) != len(samples):
        raise PrunescopeError(
            "could not capture the first decoder block's inputs; is it on the forward path?"
        )
    return captured


def _accumulate(
    block: nn.Module, inputs: list[BlockInput], stats: dict[str, Any], layers: dict[str, nn.Module]
):
    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            stats[name].add(args[0].detach())

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in layers.items()]
    try:
        for item in inputs:
            item.call(block)
    finally:
        for handle in handles:
            handle.remove()


def _check_samples(model: nn.Module, samples: Sequence[torch.Tensor]) -> None:
    config = getattr(model, "config", None)
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    longest = max(sample.shape[-1] for sample in samples)
    if isinstance(context, int) and longest > context:
        raise PrunescopeError(
            f"calibration samples of {longest} tokens exceed the model's context of {context}; "
            "use a smaller --calib-seqlen"
        )


class _Adders:
    """Feed one projection's inputs to several statistics (the method's, DSnoT's moments)."""

    def __init__(self, *stats: Any) -> None:
        self.stats = [item for item in stats if item is not None]

    def add(self, inputs: torch.Tensor) -> None:
        for item in self.stats:
            item.add(inputs)


def _score_masks(
    block_layers: dict[str, nn.Module],
    spec: PruneSpec,
    index_of: dict[str, int] | None,
    fixed_masks: dict[str, torch.Tensor] | None,
) -> dict[str, torch.Tensor]:
    """Masks of magnitude / random inside the sequential pass (when OWL or DSnoT needs that pass).

    `fixed_masks` (packed) are the whole model's global selection made before the pass; otherwise the
    comparison group is the layer, the row or N:M, and `global` means all of this block's layers together.
    """
    names = list(block_layers)
    if fixed_masks is not None:
        return {
            name: unpack_mask(fixed_masks[name], linear_weight(block_layers[name]).shape) for name in names
        }

    def scores(i: int) -> torch.Tensor:
        weight = linear_weight(block_layers[names[i]])
        if spec.method == "random":
            return random_scores(weight, spec.seed, (index_of or {}).get(names[i], i))
        return magnitude_scores(weight)

    if spec.effective_scope == "global" and not spec.pattern.structured:
        total = sum(linear_weight(m).numel() for m in block_layers.values())
        masks = global_smallest_masks(scores, len(names), round(spec.sparsity * total))
        return {name: masks(i) for i, name in enumerate(names)}
    return {name: mask_from_scores(scores(i), spec) for i, name in enumerate(names)}


def global_score_masks(layers: dict[str, nn.Module], spec: PruneSpec) -> dict[str, torch.Tensor]:
    """Packed masks of magnitude / random with the global scope over all `layers` (dense weights)."""
    return {name: pack_mask(mask) for name, mask in _score_masks(layers, spec, None, None).items()}


@torch.no_grad()
def prune_block(
    block: nn.Module,
    block_layers: dict[str, nn.Module],
    inputs: list,
    spec: PruneSpec,
    index_of: dict[str, int] | None = None,
    fixed_masks: dict[str, torch.Tensor] | None = None,
    report: dict | None = None,
) -> Iterator[tuple[str, LayerChange]]:
    """Collect the block's statistics over all samples, then prune its layers one by one (lazily, so a
    caller that streams to disk can release each layer's record before the next).

    `spec.sparsity` is this block's (OWL). Magnitude / random take their masks from `_score_masks`;
    with `spec.refine == "dsnot"` each mask is refined (`dsnot.refine_layer`) before the next layer, and
    the refinement summary goes to `report["refine"][name]`.
    """
    if not block_layers:
        return
    calibrated = spec.method in _METHODS
    stats: dict[str, Any] = {}
    if calibrated:
        stats_class, prune_layer = _METHODS[spec.method]
        stats = {
            name: stats_class(linear_shape(module)[1], linear_weight(module).device)
            for name, module in block_layers.items()
        }
    moments: dict[str, MomentStats] = {}
    if spec.refine == "dsnot":
        moments = {
            name: MomentStats(linear_shape(module)[1], linear_weight(module).device)
            for name, module in block_layers.items()
        }
    if stats or moments:
        adders = {name: _Adders(stats.get(name), moments.get(name)) for name in block_layers}
        _accumulate(block, inputs, adders, block_layers)
        del adders
    masks = None if calibrated else _score_masks(block_layers, spec, index_of, fixed_masks)
    for name, module in block_layers.items():
        if calibrated:
            change = prune_layer(module, stats.pop(name), spec)
        else:
            change = apply_mask(module, masks.pop(name))
        if moments:
            change, info = refine_layer(module, change, moments.pop(name), spec)
            if report is not None:
                report.setdefault("refine", {})[name] = info
        yield name, change


@torch.no_grad()
def dense_outlier_ratios(
    blocks: nn.ModuleList,
    per_block: list[dict[str, nn.Module]],
    inputs: list[BlockInput],
    m: float,
    load: Callable[[int], None] | None = None,
    release: Callable[[int], None] | None = None,
    progress: bool = True,
) -> dict[int, float]:
    """OWL's outlier ratio (LOD) of each block holding pruned layers, from one pass of the DENSE model.

    `inputs` are left as they are (the pruning pass needs block 0's inputs again); `load(i)` /
    `release(i)` bring a block's weights in and out when they live on disk.
    """
    current = [BlockInput(item.args, item.kwargs, item.hidden, item.in_kwargs) for item in inputs]
    last = max(i for i, block_layers in enumerate(per_block) if block_layers)
    ratios: dict[int, float] = {}
    for index in track(range(last + 1), "OWL outlier ratios", enabled=progress):
        if load is not None:
            load(index)
        block, block_layers = blocks[index], per_block[index]
        stats = {
            name: WandaStats(linear_shape(module)[1], linear_weight(module).device)
            for name, module in block_layers.items()
        }

        def make_hook(target: WandaStats):
            def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                target.add(args[0].detach())

            return hook

        handles = [m.register_forward_hook(make_hook(stats[name])) for name, m in block_layers.items()]
        try:
            for item in current:
                hidden = item.call(block)
                if index < last:
                    item.hidden = hidden
                del hidden
        finally:
            for handle in handles:
                handle.remove()
        if block_layers:
            scores = [wanda_scores(linear_weight(mod), stats[name]) for name, mod in block_layers.items()]
            ratios[index] = outlier_ratio(scores, m)
            del scores
        if release is not None:
            release(index)
    return ratios


def block_sparsities(
    blocks_name: str,
    ratios: dict[int, float],
    spec: PruneSpec,
    report: dict | None,
) -> dict[int, float]:
    """OWL's sparsity per block index from the outlier ratios; the allocation goes to `report`."""
    indices = sorted(ratios)
    values = owl_sparsities([ratios[i] for i in indices], spec.sparsity, spec.owl_lambda)
    if report is not None:
        prefix = f"{blocks_name}." if blocks_name else ""
        names = [f"{prefix}{i}" for i in indices]
        report["allocation"] = allocation_record(names, [ratios[i] for i in indices], values, spec)
    return dict(zip(indices, values, strict=True))


def block_spec(spec: PruneSpec, sparsities: dict[int, float] | None, index: int) -> PruneSpec:
    if sparsities is None or index not in sparsities:
        return spec
    return dataclasses.replace(spec, sparsity=sparsities[index])


def record_realised(report: dict | None, pruned: dict[str, int], weights: dict[str, int]) -> None:
    """Add each block's realised sparsity (pruned / weights of its layers) to the allocation record."""
    if not report or "allocation" not in report:
        return
    for entry in report["allocation"]["blocks"]:
        prefix = entry["block"] + "."
        names = [name for name in weights if name.startswith(prefix)]
        total = sum(weights[name] for name in names)
        entry["realised_sparsity"] = sum(pruned[name] for name in names) / total if total else 0.0


def prune_calibrated(
    model: nn.Module,
    layers: dict[str, nn.Module],
    spec: PruneSpec,
    calibration: list[torch.Tensor],
    progress: bool = True,
    report: dict | None = None,
) -> dict[str, LayerChange]:
    """Prune `layers` in place block by block (see the module docstring): Wanda, SparseGPT, RIA, or any
    method with OWL allocation and / or DSnoT refinement. `report` receives the allocation and refinement."""
    if not spec.needs_calibration:
        raise PrunescopeError(f"{spec.method} is not a calibrated method")
    if not calibration:
        raise PrunescopeError(f"{spec.method} needs calibration data; none was given")
    _check_samples(model, calibration)
    blocks_name, blocks = find_blocks(model, layers)
    per_block = layers_by_block(layers, blocks_name, len(blocks))

    inputs = capture_block_inputs(model, blocks[0], calibration)
    sparsities = None
    if spec.allocation == "owl":
        ratios = dense_outlier_ratios(blocks, per_block, inputs, spec.owl_m, progress=progress)
        sparsities = block_sparsities(blocks_name, ratios, spec, report)
    fixed = None
    if (
        spec.method not in _METHODS
        and spec.effective_scope == "global"
        and not spec.pattern.structured
        and sparsities is None
    ):
        fixed = global_score_masks(layers, spec)  # the whole model's selection, before any layer changes
    index_of = {name: i for i, name in enumerate(layers)}
    changes: dict[str, LayerChange] = {}
    last = max(i for i, block_layers in enumerate(per_block) if block_layers)
    for index in track(range(last + 1), f"{spec.method} blocks", enabled=progress):
        block, block_layers = blocks[index], per_block[index]
        changes.update(
            prune_block(
                block, block_layers, inputs, block_spec(spec, sparsities, index), index_of, fixed, report
            )
        )
        if index < last:  # the pruned block's outputs feed the next block
            for item in inputs:
                item.hidden = item.call(block)
    record_realised(
        report,
        {name: int(change.mask.sum()) for name, change in changes.items()},
        {name: change.shape.numel() for name, change in changes.items()},
    )
    return {name: changes[name] for name in layers}
