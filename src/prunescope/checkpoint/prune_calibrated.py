"""Calibrated pruning (Wanda, SparseGPT, RIA; OWL, DSnoT) of a checkpoint larger than memory, block by block.

The module tree lives on the meta device. Only the modules in front of the decoder blocks (embeddings) are
loaded to capture block 0's inputs; then each block's weights are read from the checkpoint, its
projections pruned by the same engine as the in-memory path (`pruning.calibrated`: statistics from the
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

from ..errors import PrunescopeError
from ..layers import linear_weight
from ..pruning.calibrated import (
    block_sparsities,
    block_spec,
    capture_block_inputs,
    dense_outlier_ratios,
    find_blocks,
    layers_by_block,
    prune_block,
    record_realised,
)
from ..pruning.spec import CALIBRATED, PruneSpec
from ..util.heap import trim_heap
from ..util.progress import track
from .safetensors_io import Checkpoint


def _load(model: nn.Module, checkpoint: Checkpoint, param: str, tensor: str) -> None:
    # Calibration runs in float32 whatever the stored dtype, as `prunescope study` does on CPU.
    set_module_tensor_to_device(model, param, "cpu", value=checkpoint.read(tensor).float())


@torch.no_grad()
def prune_blocks(
    model: nn.Module,
    checkpoint: Checkpoint,
    to_tensor: dict[str, str],
    layers: dict[str, nn.Module],
    spec: PruneSpec,
    calibration: list[torch.Tensor],
    write_block: Callable[[int, dict[str, torch.Tensor]], None],
    progress: bool = True,
    report: dict | None = None,
) -> dict[str, int]:
    """Prune block by block; `write_block(i, {tensor: pruned (out, in) weight})` runs after block i.

    `to_tensor`: parameter name -> checkpoint tensor (tied aliases excluded). Returns pruned counts.
    With OWL allocation the blocks are read twice: a dense pass for the outlier ratios, then the pruning
    pass. `report` receives the allocation and DSnoT summaries, as in `pruning.prune`.
    """
    if (
        spec.method not in CALIBRATED
        and spec.effective_scope == "global"
        and not spec.pattern.structured
        and spec.allocation == "uniform"
    ):
        raise PrunescopeError(
            f"{spec.method} with the global scope and --refine from disk is not supported: the global "
            "selection needs every layer before the block pass. Use --scope layer or row"
        )
    blocks_name, blocks = find_blocks(model, layers)
    prefix = f"{blocks_name}."
    per_block = layers_by_block(layers, blocks_name, len(blocks))
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip = {id(p) for p in output.parameters()} if output is not None else set()
    if hasattr(model, "get_input_embeddings"):  # a tied lm_head is the embedding: that one is needed
        skip -= {id(p) for p in model.get_input_embeddings().parameters()}
    front = [
        name
        for name, param in model.named_parameters()
        # Only what runs before block 0 is needed to capture its inputs; the lm_head never runs here.
        if not name.startswith(prefix) and id(param) not in skip and name in to_tensor
    ]
    for name in front:
        _load(model, checkpoint, name, to_tensor[name])
    inputs = capture_block_inputs(model, blocks[0], calibration)
    for name in front:  # the embeddings are not needed any more: only blocks run from here on
        set_module_tensor_to_device(model, name, "meta")
    trim_heap()
    pruned: dict[str, int] = {}

    def load_block(index: int) -> None:
        block_prefix = f"{prefix}{index}."
        for name, _ in blocks[index].named_parameters():
            _load(model, checkpoint, block_prefix + name, to_tensor[block_prefix + name])

    def release_block(index: int) -> None:
        blocks[index].to("meta")
        trim_heap()

    sparsities = None
    if spec.allocation == "owl":
        ratios = dense_outlier_ratios(
            blocks, per_block, inputs, spec.owl_m, load_block, release_block, progress=progress
        )
        sparsities = block_sparsities(blocks_name, ratios, spec, report)
    index_of = {name: i for i, name in enumerate(layers)}
    last = max(i for i, block_layers in enumerate(per_block) if block_layers)
    for index in track(range(last + 1), f"{spec.method} blocks", enabled=progress):
        block, block_layers = blocks[index], per_block[index]
        load_block(index)
        if block_layers:
            this_spec = block_spec(spec, sparsities, index)
            for name, change in prune_block(block, block_layers, inputs, this_spec, index_of, None, report):
                pruned[name] = int(change.mask.sum())
                del change
                trim_heap()
            write_block(index, {name: linear_weight(module) for name, module in block_layers.items()})
        if index < last:
            for item in inputs:
                item.hidden = item.call(block)
        release_block(index)  # drop this block's weights: the next one takes their place
    record_realised(report, pruned, {name: linear_weight(m).numel() for name, m in layers.items()})
    return pruned
