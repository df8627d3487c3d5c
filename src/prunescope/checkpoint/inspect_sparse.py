"""The sparse layout (`sparse.py`) in the inspector's table, from the manifest and the headers.

Each pruned weight `T` is stored as `T.values`, `T.mask`, `T.row_offsets` (and `T.scales`, `T.zeros` when
its values are quantized codes): no model parameter has those names, so the plain tensor mapping reports
`T` missing and its parts unmapped. Here the manifest puts them back together: one weight of (out, in)
positions, `nnz` non-zeros, stored in the bytes its parts take in the file. The header is checked against
the manifest (parts present, mask/offset shapes, value count); with a zero count, the set bits of the mask
are counted and must equal the manifest's nnz.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import PrunescopeError
from ..layers import LayerInfo
from ..quantization import QuantOptions, get_quantizer
from ..structure import dense_columns
from .model_map import TensorMap, config_folder
from .safetensors_io import Checkpoint, TensorEntry
from .sparse import MANIFEST, SPARSE_PARTS, read_manifest

_COUNT_BITS = 1 << 22  # mask bits unpacked at a time: memory stays at one row block whatever the layer


@dataclass(frozen=True)
class SparseWeight:
    """One pruned weight as the sparse layout stores it."""

    module: str
    tensor: str
    shape: tuple[int, int]  # (out, in), even for a Conv1D
    dtype: str  # the weight's dtype (scales are stored at it; values too unless quantized)
    nnz: int
    parts: dict[str, TensorEntry]  # part name (values, mask, ...) -> its header entry
    quantization: QuantOptions | None

    @property
    def weights(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.parts.values())


def _corrupt(folder: Path, what: str) -> PrunescopeError:
    return PrunescopeError(f"corrupt sparse checkpoint {str(folder)!r}: {what}")


def _layer(folder: Path, module: str, info: dict, checkpoint: Checkpoint, method: str) -> SparseWeight | None:
    try:
        tensor, (out, in_features), nnz = info["tensor"], (int(d) for d in info["shape"]), int(info["nnz"])
        dtype, quant = str(info["dtype"]), info.get("quantization")
        options = None if quant is None else QuantOptions(quant["quantizer"], quant["group_size"], method)
    except (KeyError, TypeError, ValueError):
        raise _corrupt(folder, f"{MANIFEST} entry of {module} is incomplete") from None
    names = list(SPARSE_PARTS)
    if options is not None:
        names += ["scales"] + ([] if options.quantizer.symmetric else ["zeros"])
    if f"{tensor}.values" not in checkpoint.entries:
        return None  # a single shard of a sharded checkpoint: this layer lives in another file
    absent = [n for n in names if f"{tensor}.{n}" not in checkpoint.entries]
    if absent:
        raise _corrupt(folder, f"{tensor}.{absent[0]} is not in the checkpoint")
    parts = {n: checkpoint.entries[f"{tensor}.{n}"] for n in names}
    if not 0 <= nnz <= out * in_features:
        raise _corrupt(folder, f"{module}: nnz {nnz} outside [0, {out * in_features}]")
    if parts["mask"].shape != (out, (in_features + 15) // 16) or parts["row_offsets"].shape != (out + 1,):
        raise _corrupt(
            folder, f"{tensor}.mask/.row_offsets do not fit the manifest shape {out}x{in_features}"
        )
    values = parts["values"]
    expected = nnz if options is None else get_quantizer(options.name).packed_bytes(nnz)
    stored = values.numel if options is None else values.nbytes
    if stored != expected:
        raise _corrupt(
            folder,
            f"{tensor}.values holds {stored} {'values' if options is None else 'bytes'}, "
            f"the manifest's nnz {nnz} needs {expected}",
        )
    return SparseWeight(module, tensor, (out, in_features), dtype, nnz, parts, options)


def sparse_weights(
    source: str | Path, checkpoint: Checkpoint, method: str = "rtn"
) -> dict[str, SparseWeight]:
    """Module name -> its pruned weight, for each manifest layer this checkpoint holds; {} when `source` is
    not a sparse-layout checkpoint. `method`: the quantization pass the header names (for the label)."""
    folder = config_folder(source)
    if not (folder / MANIFEST).is_file():
        return {}
    layers = read_manifest(folder).get("layers")
    if not isinstance(layers, dict):
        raise _corrupt(folder, f"{MANIFEST} has no layers")
    found = {module: _layer(folder, module, info, checkpoint, method) for module, info in layers.items()}
    return {module: weight for module, weight in found.items() if weight is not None}


def claim_parts(mapping: TensorMap, weights: dict[str, SparseWeight]) -> None:
    """The stored parts are those weights: neither a missing parameter nor an unmapped tensor any more."""
    parts = {entry.name for weight in weights.values() for entry in weight.parts.values()}
    owned = {f"{module}.weight" for module in weights}
    mapping.unmapped = [name for name in mapping.unmapped if name not in parts]
    mapping.missing = [name for name in mapping.missing if name not in owned]


def sparse_columns(info: LayerInfo, weight: SparseWeight, nnz: int) -> dict:
    """The weight's columns of its module's row: a dense projection's shape and FLOPs (`structure`'s
    conventions), format "bitmask", bytes at the parts' real storage."""
    columns, _ = dense_columns(info, weight.shape, getattr(torch, weight.dtype), nnz)
    columns.update(
        format="bitmask",
        quantization=weight.quantization.label if weight.quantization is not None else "",
        weights=weight.weights,
        weight_nonzero=nnz,
        weight_bytes=weight.nbytes,
    )
    return columns


def count_mask_bits(checkpoint: Checkpoint, weight: SparseWeight) -> int:
    """Set bits of the weight's mask (its non-zeros), read in row blocks; must equal the manifest's nnz."""
    from ..formats.bitmask import unpack_bitmask

    mask = weight.parts["mask"]
    rows, words = mask.shape
    step = max(1, _COUNT_BITS // max(16 * words, 1))
    # Every bit of every word, padding included: a stray padding bit is corruption too.
    counted = sum(
        int(unpack_bitmask(checkpoint.read_rows(mask.name, r, min(r + step, rows)), 16 * words).sum())
        for r in range(0, rows, step)
    )
    if counted != weight.nnz:
        raise _corrupt(
            checkpoint.folder, f"{mask.name} has {counted} set bits, the manifest says nnz {weight.nnz}"
        )
    return counted
