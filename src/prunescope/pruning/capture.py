"""Find the decoder blocks and capture what the first one receives for every calibration sample.

The capture records hidden states plus every other argument (attention mask, position ids / embeddings,
cache position, ...) through a forward pre-hook with `with_kwargs=True`, then raises a sentinel so nothing
after the embeddings runs. `BlockInput.call` replays a block on one sample with new hidden states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import PrunescopeError
from ..util.model_config import context_length


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once block 0's inputs are known."""


def park(hidden: torch.Tensor) -> torch.Tensor:
    """Where a sample's hidden states wait between blocks: in pinned host memory when they were computed on
    a GPU (128 samples x seqlen x hidden do not fit next to a 7B model on a T4; each comes back as its
    block needs it), else where they are."""
    if hidden.device.type != "cuda":
        return hidden
    parked = torch.empty(hidden.shape, dtype=hidden.dtype, pin_memory=True)
    parked.copy_(hidden)
    return parked


@dataclass
class BlockInput:
    """Everything one decoder block is called with for one sample; `hidden` replaces the hidden states.

    `hidden` may be parked in host memory (`park`); `call` brings it to `device`, where the block runs."""

    args: tuple  # positional arguments after the hidden states
    kwargs: dict
    hidden: torch.Tensor
    in_kwargs: bool  # hidden states were passed as `hidden_states=` rather than positionally
    device: torch.device | None = None  # where the block computes; None = where `hidden` is

    def call(self, block: nn.Module) -> torch.Tensor:
        hidden = self.hidden if self.device is None else self.hidden.to(self.device, non_blocking=True)
        if self.in_kwargs:
            out = block(*self.args, **{**self.kwargs, "hidden_states": hidden})
        else:
            out = block(hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def advance(self, block: nn.Module) -> None:
        """The block's outputs become this sample's hidden states (parked until the next block)."""
        self.hidden = park(self.call(block))

    def copy(self) -> BlockInput:
        """A copy whose `hidden` can be advanced without touching this one (tensors are shared)."""
        return BlockInput(self.args, self.kwargs, self.hidden, self.in_kwargs, self.device)


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


# The final norm's attribute on the module holding the decoder blocks: Llama / Mistral / Qwen, OPT / NeoX,
# GPT-2 / Falcon / Bloom, Phi, Mamba-style names.
FINAL_NORMS = ("norm", "final_layer_norm", "ln_f", "final_layernorm", "norm_f")


def after_blocks(model: nn.Module, blocks_name: str) -> dict[str, nn.Module]:
    """What turns the last decoder block's outputs into logits, in order, by module name: the final norm,
    OPT's `project_out` where it has one, then the output head (`get_output_embeddings()`).

    Any other module with weights outside the blocks that is not an embedding would run somewhere we do
    not know: refused, rather than a silently different output."""
    parent_name = blocks_name.rpartition(".")[0]
    parent = model.get_submodule(parent_name)
    prefix = f"{parent_name}." if parent_name else ""
    found = {
        prefix + attr: module
        for attr in (*FINAL_NORMS, "project_out")
        if isinstance(module := getattr(parent, attr, None), nn.Module)
    }
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    norms = [name for name in found if name.rpartition(".")[2] in FINAL_NORMS]
    if head is None or len(norms) != 1:
        raise PrunescopeError(
            f"{type(model).__name__}: no output head or no single final norm ({', '.join(FINAL_NORMS)}) "
            f"beside {blocks_name}; the model's last steps are unknown"
        )
    names = {id(module): name for name, module in model.named_modules()}
    found[names[id(head)]] = head
    known = {id(module) for module in found.values()}
    for name, module in model.named_modules():
        if name == blocks_name or name.startswith(f"{blocks_name}.") or id(module) in known:
            continue
        leaf = name.rpartition(".")[2]
        embedding = (
            isinstance(module, nn.Embedding) or "embed" in leaf or leaf in ("wte", "wpe", "project_in")
        )
        if not embedding and any(True for _ in module.parameters(recurse=False)):
            raise PrunescopeError(
                f"{type(model).__name__}: {name} has weights outside the decoder blocks and is neither an "
                "embedding nor the final norm / output head; where it runs is unknown"
            )
    return found


def layers_by_block(layers: dict[str, nn.Module], blocks_name: str, count: int) -> list[dict[str, nn.Module]]:
    """The pruned projections of each of the `count` blocks of `blocks_name`, by module name."""
    prefix = f"{blocks_name}." if blocks_name else ""
    grouped: list[dict[str, nn.Module]] = [{} for _ in range(count)]
    for name, module in layers.items():
        grouped[int(name[len(prefix) :].split(".")[0])][name] = module
    return grouped


def check_samples(model: nn.Module, samples: Sequence[torch.Tensor]) -> None:
    """Calibration samples must fit the model's context (a longer one fails deep inside the forward)."""
    context = context_length(getattr(model, "config", None))
    longest = max(sample.shape[-1] for sample in samples)
    if isinstance(context, int) and longest > context:
        raise PrunescopeError(
            f"calibration samples of {longest} tokens exceed the model's context of {context}; "
            "use a smaller --calib-seqlen"
        )


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, block: nn.Module, samples: Sequence[torch.Tensor]
) -> list[BlockInput]:
    """What `block` (the first decoder block) is called with, for each sample (see the module docstring)."""
    device = next(model.parameters()).device
    captured: list[BlockInput] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        in_kwargs = not args
        hidden = kwargs.pop("hidden_states") if in_kwargs else args[0]
        rest = args if in_kwargs else args[1:]  # never keep a second reference to the hidden states
        if captured:
            rest = _share(rest, captured[-1].args)
            kwargs = {key: _share(value, captured[-1].kwargs.get(key)) for key, value in kwargs.items()}
        captured.append(BlockInput(rest, kwargs, park(hidden), in_kwargs, hidden.device))
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


def record_inputs(
    block: nn.Module,
    inputs: list[BlockInput],
    stats: dict[str, Any],
    layers: dict[str, nn.Module],
    advance: bool = False,
) -> None:
    """Run every sample through `block`, giving each of its `layers`' inputs to `stats[name].add`; with
    `advance`, each sample's hidden states become the block's outputs."""

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            stats[name].add(args[0].detach())

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in layers.items()]
    try:
        for item in inputs:
            if advance:
                item.advance(block)
            else:
                item.call(block)
    finally:
        for handle in handles:
            handle.remove()
