"""A checkpoint in prunescope's sparse layout (`prune --format sparse`) where a model folder is expected:
`study --model`, `evaluate` and the API's `load_model` read it like an HF folder.  `from_pretrained` cannot
read the layout, so it is checked against its manifest (headers only) and rebuilt dense on the CPU by
`sparse.load_sparse`: pruned layers hold their zeros and quantized codes come back dequantized, as the hf
layout of the same prune holds them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import PrunescopeError, first_line


def is_sparse_layout(folder: str | Path) -> bool:
    """Whether `folder` holds a checkpoint in prunescope's sparse layout (`prune --format sparse`)."""
    from .sparse import MANIFEST

    return (Path(folder) / MANIFEST).is_file()


def _check_sparse_layout(folder: Path) -> None:
    """The manifest agrees with the stored tensors: its shards exist and each pruned layer's parts are there,
    with the shapes and value count its entry names (read from the headers, no data)."""
    from .inspect_sparse import sparse_weights
    from .safetensors_io import Checkpoint
    from .sparse import MANIFEST, read_manifest

    manifest = read_manifest(folder)
    weight_map, layers = manifest.get("weight_map"), manifest.get("layers")
    if not isinstance(weight_map, dict) or not isinstance(layers, dict):
        raise PrunescopeError(
            f"corrupt sparse checkpoint {str(folder)!r}: {MANIFEST} lacks its weight map or layers"
        )
    for file in dict.fromkeys(weight_map.values()):
        if not (folder / str(file)).is_file():
            raise PrunescopeError(f"corrupt sparse checkpoint {str(folder)!r}: shard {file} is missing")
    checkpoint = Checkpoint(folder)
    try:
        found = sparse_weights(folder, checkpoint)
    finally:
        checkpoint.close()
    # sparse_weights skips a layer whose values are in no file it was given (another shard); here every shard
    # was given, so such a layer has lost its values.
    for module in layers:
        if module not in found:
            tensor = layers[module].get("tensor", module) if isinstance(layers[module], dict) else module
            raise PrunescopeError(f"corrupt sparse checkpoint {str(folder)!r}: {tensor}.values is missing")


def load_sparse_layout(folder: str | Path, dtype: torch.dtype) -> nn.Module:
    """The model of a sparse-layout checkpoint, rebuilt on the CPU at `dtype` by `load_sparse` in dense
    form: pruned layers hold their zeros, quantized codes come back dequantized, as the hf layout of the
    same prune holds them. The manifest is checked against the stored tensors first; any failure is one
    PrunescopeError line."""
    from .sparse import load_sparse

    folder = Path(folder)
    try:
        _check_sparse_layout(folder)
        model = load_sparse(folder, "dense", dtype=dtype)
    except PrunescopeError:
        raise
    except Exception as error:  # a damaged manifest or shard surfaces as whatever its reader raises
        raise PrunescopeError(
            f"cannot load sparse checkpoint {str(folder)!r}: {type(error).__name__}: {first_line(error)}"
        ) from None
    _generation_config(model, folder)
    return model


def _generation_config(model: nn.Module, folder: Path) -> None:
    """The folder's generation_config.json, as `from_pretrained` would read it (the model is built from its
    config alone); a folder without one keeps the config's defaults."""
    if not (folder / "generation_config.json").is_file() or not hasattr(model, "generation_config"):
        return
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(folder)
    except (OSError, ValueError):
        pass  # only generation defaults: the model scores the same without them
