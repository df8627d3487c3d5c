"""Calibrated pruning (Wanda, SparseGPT, RIA; OWL, DSnoT) of a checkpoint larger than memory, block by block.

The module tree lives on the meta device. Only the modules in front of the decoder blocks (embeddings) are
loaded to capture block 0's inputs; then each block's weights are read from the checkpoint, its
projections pruned by the same driver as the in-memory path (`pruning.driver`: statistics from the
calibration activations, then the per-layer prune), its tensors written out, its outputs computed for the
next block, and its weights dropped back to meta. Peak memory: one block (in float32), its largest layer's
scoring temporaries and one block's calibration activations; the embeddings only while block 0's inputs
are captured.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate.utils import set_module_tensor_to_device
from torch import nn

from ..layers import linear_weight
from ..pruning.capture import after_blocks, find_blocks
from ..pruning.driver import BlockStorage, prune_block_by_block
from ..pruning.record import LayerChange
from ..pruning.spec import PruneSpec
from ..util.heap import trim_heap
from .safetensors_io import Checkpoint


def _load(model: nn.Module, checkpoint: Checkpoint, param: str, tensor: str, device: torch.device) -> None:
    # Calibration runs in float32 whatever the stored dtype, as SparseGPT's Hessian needs; on a GPU too.
    set_module_tensor_to_device(model, param, device, value=checkpoint.read(tensor).float())


def _front_parameters(model: nn.Module, blocks_prefix: str, to_tensor: dict[str, str]) -> list[str]:
    """The parameters that run before block 0 (embeddings): all outside the blocks except the lm_head,
    which never runs here (unless tied to the embeddings: then that one is needed)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip = {id(p) for p in output.parameters()} if output is not None else set()
    if hasattr(model, "get_input_embeddings"):
        skip -= {id(p) for p in model.get_input_embeddings().parameters()}
    return [
        name
        for name, param in model.named_parameters()
        if not name.startswith(blocks_prefix) and id(param) not in skip and name in to_tensor
    ]


def _tail_parameters(
    model: nn.Module, blocks_name: str, to_tensor: dict[str, str], owner: dict[int, str]
) -> dict[str, str]:
    """The final norm's and output head's parameters (`capture.after_blocks`) -> their checkpoint tensors.
    A head tied to the embeddings is loaded as a parameter of its own name (the embeddings stay on meta),
    read from its owner's tensor: `owner` = {id(parameter): name} taken while every tie was intact."""
    return {
        f"{module_name}.{name}": to_tensor.get(f"{module_name}.{name}") or to_tensor[owner[id(param)]]
        for module_name, module in after_blocks(model, blocks_name).items()
        for name, param in module.named_parameters()
    }


@torch.no_grad()
def prune_blocks(
    model: nn.Module,
    checkpoint: Checkpoint,
    to_tensor: dict[str, str],
    layers: dict[str, nn.Module],
    spec: PruneSpec,
    calibration: list[torch.Tensor],
    write_block: Callable[[int, dict[str, torch.Tensor], dict], None],
    progress: bool = True,
    report: dict | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, int]:
    """Prune block by block; `write_block(i, {name: pruned (out, in) weight}, {name: QuantizedWeight})`
    runs after block i (the second mapping holds the layers GPTQ quantized in the pass, `spec.quantize`).

    `to_tensor`: parameter name -> checkpoint tensor (tied aliases excluded). Returns pruned counts.
    With an allocation the blocks are read more than once: OWL's dense pass, EvoPress's passes per search
    stage (with the final norm and head in memory for the search), then the pruning pass.
    `report` receives the allocation and refinement summaries, as in `pruning.prune`.
    """
    device = torch.device(device)
    blocks_name, blocks = find_blocks(model, layers)
    prefix = f"{blocks_name}."
    front = _front_parameters(model, prefix, to_tensor)

    def load_front() -> None:
        for name in front:
            _load(model, checkpoint, name, to_tensor[name], device)

    def release_front() -> None:  # the embeddings are not needed any more: only blocks run from here on
        for name in front:
            set_module_tensor_to_device(model, name, "meta")
        trim_heap()

    def load_block(index: int) -> None:
        block_prefix = f"{prefix}{index}."
        for name, _ in blocks[index].named_parameters():
            _load(model, checkpoint, block_prefix + name, to_tensor[block_prefix + name], device)

    def release_block(index: int) -> None:  # drop this block's weights: the next one takes their place
        blocks[index].to("meta")
        trim_heap()

    owner = {id(param): name for name, param in model.named_parameters()}  # before any load unties
    tail: dict[str, str] = {}

    def load_tail() -> None:
        if not tail:  # resolved on first use: only evo needs it, and it refuses unknown architectures
            tail.update(_tail_parameters(model, blocks_name, to_tensor, owner))
        for name, tensor in tail.items():
            _load(model, checkpoint, name, tensor, device)

    def release_tail() -> None:
        for name in tail:
            set_module_tensor_to_device(model, name, "meta")
        trim_heap()

    quantized: dict = {}  # GPTQ's codes of the current block's layers, until the block is written

    def write(index: int, block_layers: dict[str, nn.Module]) -> None:
        weights = {name: linear_weight(module) for name, module in block_layers.items()}
        write_block(index, weights, {name: quantized.pop(name) for name in block_layers if name in quantized})

    def drop(name: str, change: LayerChange) -> None:
        if change.quantized is not None:
            quantized[name] = change.quantized.to("cpu")
        trim_heap()  # the weights are written with the block; the undo record is not kept

    storage = BlockStorage(
        load_front, release_front, load_block, release_block, write, load_tail, release_tail
    )
    return prune_block_by_block(model, layers, spec, calibration, drop, storage, progress, report)
