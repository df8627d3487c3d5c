"""Checkpoints larger than memory: read safetensors headers and tensors one at a time, prune tensor by
tensor into a new checkpoint (HF layout, or a compact bitmask layout), and load the sparse one back.

    inspect_checkpoint(path)                  # structure table from the headers, no weights read
    prune_checkpoint(path, out, spec, "both")  # streaming pruning: memory of a row block / decoder block
    load_sparse(out / "sparse", "bitmask")     # the pruned model, with BitmaskLinear layers
"""

from __future__ import annotations

from .inspect_table import Inspection, inspect_checkpoint
from .model_map import map_tensors, meta_model
from .prune_stream import CHECKPOINT_OUTPUTS, StreamPruneResult, prune_checkpoint
from .safetensors_io import Checkpoint, ShardWriter, parse_size, read_header
from .sparse import MANIFEST, load_sparse, read_manifest

__all__ = [
    "CHECKPOINT_OUTPUTS",
    "MANIFEST",
    "Checkpoint",
    "Inspection",
    "ShardWriter",
    "StreamPruneResult",
    "inspect_checkpoint",
    "load_sparse",
    "map_tensors",
    "meta_model",
    "parse_size",
    "prune_checkpoint",
    "read_header",
    "read_manifest",
]
