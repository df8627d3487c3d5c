"""Pruned checkpoints on disk: the normal HF layout (dense with zeros) and the compact sparse one.

Sparse layout (folder with config/tokenizer files, `sparse*.safetensors` shards and `sparse_manifest.json`):
for each pruned weight `T` (its (out, in) orientation, even for GPT-2's Conv1D) three tensors

  T.values       (nnz,)                   the non-zeros, row-major, in the weight's dtype
  T.mask         (out, ceil(in/16)) int16 bit j (little-endian) of word w <=> column 16·w + j is non-zero
  T.row_offsets  (out + 1,) int64         index in `values` of each row's first non-zero

which is exactly the buffer layout of `formats.bitmask.BitmaskLinear`, so loading in bitmask form wraps the
stored tensors without re-packing. Every other tensor is stored as in the source checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import PrunescopeError
from ..layers import set_module
from .model_map import is_conv1d, map_tensors, meta_model
from .safetensors_io import Checkpoint, ShardPlan, ShardWriter, header_bound, write_index

MANIFEST = "sparse_manifest.json"
SPARSE_PARTS = ("values", "mask", "row_offsets")
MASK_LAYOUT = "per row, int16 words of 16 columns, bit j of word w = column 16*w+j (little-endian)"


class SparseOutput:
    """Writes one output checkpoint (`kind` hf or sparse) following a shard plan, one tensor at a time."""

    def __init__(
        self,
        folder: Path,
        plan: ShardPlan,
        kind: str,
        pruned: dict[str, str],
        conv1d: dict[str, bool],
        metadata: dict[str, str] | None = None,
    ) -> None:
        """`metadata`: extra `__metadata__` entries of every shard (e.g. the quantization of its values)."""
        self.folder, self.plan, self.kind = folder, plan, kind
        self.metadata = metadata or {}
        self.pruned, self.conv1d = pruned, conv1d  # pruned: weight tensor -> module name
        stem = "model" if kind == "hf" else "sparse"
        self.files = {f: f.replace("model", stem, 1) for f in plan.files}
        self._writers: dict[str, ShardWriter] = {}
        self.weight_map: dict[str, str] = {}
        self.layers: dict[str, dict] = {}
        self.tensor_bytes = 0
        self.bytes_written = 0
        self._current: dict | None = None

    def _stored_names(self, tensor: str) -> list[str]:
        if self.kind == "sparse" and tensor in self.pruned:
            return [f"{tensor}.{part}" for part in SPARSE_PARTS]
        return [tensor]

    def _writer(self, tensor: str) -> ShardWriter:
        source_file = self.plan.assignment[tensor]
        if source_file not in self._writers:
            names = [n for t in self.plan.names_in(source_file) for n in self._stored_names(t)]
            metadata = {"format": "pt", **self.metadata}
            self._writers[source_file] = ShardWriter(
                self.folder / self.files[source_file], header_bound(names, metadata), metadata
            )
        return self._writers[source_file]

    def copy(self, checkpoint: Checkpoint, tensor: str) -> None:
        self._writer(tensor).add_raw(checkpoint, tensor)
        self.weight_map[tensor] = self.files[self.plan.assignment[tensor]]
        self.tensor_bytes += checkpoint.entries[tensor].nbytes

    def begin_pruned(self, tensor: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        """Start pruned weight `tensor`; its (out, in) rows then come in order through `add_rows`."""
        writer = self._writer(tensor)
        file = self.files[self.plan.assignment[tensor]]
        self._current = {"tensor": tensor, "dtype": dtype, "shape": shape, "masks": [], "rows": []}
        if self.kind == "hf":
            writer.begin(tensor, dtype)
            self.weight_map[tensor] = file
        else:
            writer.begin(f"{tensor}.values", dtype)
            for part in SPARSE_PARTS:
                self.weight_map[f"{tensor}.{part}"] = file

    def add_rows(self, rows: torch.Tensor) -> None:
        """The next (out, in) rows of the current weight (for a Conv1D, the whole weight at once)."""
        current = self._current
        writer = self._writer(current["tensor"])
        if self.kind == "hf":
            writer.write(rows.T if self.conv1d[current["tensor"]] else rows)
            return
        from ..formats.bitmask import BitmaskLinear

        # The bitmask layout is per row, so packing row blocks and concatenating is packing the whole.
        packed = BitmaskLinear.from_dense(rows)
        writer.write(packed.values)
        current["masks"].append(packed.mask)
        current["rows"].append(packed.row_offsets.diff())

    def end_pruned(self) -> None:
        current, self._current = self._current, None
        tensor, shape = current["tensor"], current["shape"]
        writer = self._writer(tensor)
        element = torch.tensor([], dtype=current["dtype"]).element_size()
        if self.kind == "hf":
            writer.end(shape)
            self.tensor_bytes += element * torch.Size(shape).numel()
            return
        out_in = tuple(shape[::-1]) if self.conv1d[tensor] else tuple(shape)
        counts = torch.cat(current["rows"])
        nnz = int(counts.sum())
        writer.end((nnz,))
        mask = torch.cat(current["masks"])
        row_offsets = torch.zeros(out_in[0] + 1, dtype=torch.int64)
        row_offsets[1:] = counts.cumsum(0)
        writer.add(f"{tensor}.mask", mask)
        writer.add(f"{tensor}.row_offsets", row_offsets)
        self.tensor_bytes += nnz * element + mask.numel() * 2 + row_offsets.numel() * 8
        self.layers[self.pruned[tensor]] = {
            "tensor": tensor,
            "shape": list(out_in),
            "dtype": str(current["dtype"]).removeprefix("torch."),
            "conv1d": self.conv1d[tensor],
            "nnz": nnz,
        }

    def finish(self, spec, source: str, stats: dict) -> None:
        for writer in self._writers.values():
            self.bytes_written += writer.close()
        if self.kind == "hf":
            write_index(self.folder, self.plan, self.tensor_bytes)
            return
        manifest = {
            "format": "prunescope-sparse",
            "version": 1,
            "mask_layout": MASK_LAYOUT,
            "source": source,
            "spec": spec.describe(),
            "layers": self.layers,
            "weight_map": self.weight_map,
        }
        (self.folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise PrunescopeError(f"{str(folder)!r} is not a prunescope sparse checkpoint (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != "prunescope-sparse" or manifest.get("version") != 1:
        raise PrunescopeError(f"{path} has an unknown format/version")
    return manifest


def _dense_weight(values: torch.Tensor, mask: torch.Tensor, shape: list[int]) -> torch.Tensor:
    from ..formats.bitmask import unpack_bitmask

    dense = torch.zeros(shape, dtype=values.dtype)
    dense[unpack_bitmask(mask, shape[1])] = values
    return dense


@torch.no_grad()
def load_sparse(folder: str | Path, format: str = "dense", dtype: torch.dtype | None = None) -> nn.Module:
    """Rebuild the model of a sparse checkpoint, in memory.

    `format="dense"`: pruned layers become ordinary projections with zeros (bit-identical to the HF
    checkpoint written alongside). `format="bitmask"`: they become `BitmaskLinear` modules wrapping the
    stored buffers as they are.
    """
    if format not in ("dense", "bitmask"):
        raise PrunescopeError(f"unknown load format {format!r}; use dense or bitmask")
    folder = Path(folder)
    manifest = read_manifest(folder)
    from safetensors.torch import load_file

    stored: dict[str, torch.Tensor] = {}
    for file in dict.fromkeys(manifest["weight_map"].values()):
        stored.update(load_file(folder / file))
    model = meta_model(folder)
    checkpoint = Checkpoint(folder)
    mapping = map_tensors(model, checkpoint)
    checkpoint.close()
    state: dict[str, torch.Tensor] = {
        param: stored[tensor] for param, tensor in mapping.to_checkpoint.items() if param not in mapping.tied
    }
    for module_name, info in manifest["layers"].items():
        parts = {p: stored[f"{info['tensor']}.{p}"] for p in SPARSE_PARTS}
        module = model.get_submodule(module_name)
        if format == "bitmask":
            from ..formats.bitmask import BitmaskLinear

            bias = state.pop(f"{module_name}.bias", None)
            in_features = info["shape"][1]
            set_module(
                model,
                module_name,
                BitmaskLinear(parts["values"], parts["mask"], parts["row_offsets"], in_features, bias),
            )
        else:
            dense = _dense_weight(parts["values"], parts["mask"], info["shape"])
            state[f"{module_name}.weight"] = dense.T.contiguous() if is_conv1d(module) else dense
    model.load_state_dict(state, strict=False, assign=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise PrunescopeError(f"sparse checkpoint lacks {len(left)} tensors, e.g. {left[0]}")
    if dtype is not None:
        model.to(dtype)
    model.eval()
    model.requires_grad_(False)
    return model
