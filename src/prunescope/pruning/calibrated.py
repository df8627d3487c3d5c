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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import PrunescopeError
from ..layers import linear_shape, linear_weight
from ..util.progress import track
from .record import LayerChange
from .sparsegpt import HessianStats, prune_sparsegpt
from .spec import PruneSpec
from .wanda import WandaStats, prune_wanda

# method -> (statistics accumulator class, per-layer prune function)
_METHODS: dict[str, tuple[type, Callable[[nn.Module, Any, PruneSpec], LayerChange]]] = {
    "wanda": (WandaStats, prune_wanda),
    "sparsegpt": (HessianStats, prune_sparsegpt),
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


@torch.no_grad()
def prune_block(
    block: nn.Module, block_layers: dict[str, nn.Module], inputs: list, spec: PruneSpec
) -> Iterator[tuple[str, LayerChange]]:
    """Collect the block's statistics over all samples, then prune its layers one by one (lazily, so a
    caller that streams to disk can release each layer's record before the next)."""
    if not block_layers:
        return
    stats_class, prune_layer = _METHODS[spec.method]
    stats = {
        name: stats_class(linear_shape(module)[1], linear_weight(module).device)
        for name, module in block_layers.items()
    }
    _accumulate(block, inputs, stats, block_layers)
    for name, module in block_layers.items():
        yield name, prune_layer(module, stats.pop(name), spec)


def prune_calibrated(
    model: nn.Module,
    layers: dict[str, nn.Module],
    spec: PruneSpec,
    calibration: list[torch.Tensor],
    progress: bool = True,
) -> dict[str, LayerChange]:
    """Prune `layers` in place with Wanda or SparseGPT, block by block (see the module docstring)."""
    if spec.method not in _METHODS:
        raise PrunescopeError(f"{spec.method} is not a calibrated method")
    if not calibration:
        raise PrunescopeError(f"{spec.method} needs calibration data; none was given")
    _check_samples(model, calibration)
    blocks_name, blocks = find_blocks(model, layers)
    per_block = layers_by_block(layers, blocks_name, len(blocks))

    inputs = capture_block_inputs(model, blocks[0], calibration)
    changes: dict[str, LayerChange] = {}
    last = max(i for i, block_layers in enumerate(per_block) if block_layers)
    for index in track(range(last + 1), f"{spec.method} blocks", enabled=progress):
        block, block_layers = blocks[index], per_block[index]
        changes.update(prune_block(block, block_layers, inputs, spec))
        if index < last:  # the pruned block's outputs feed the next block
            for item in inputs:
                item.hidden = item.call(block)
    return {name: changes[name] for name in layers}
