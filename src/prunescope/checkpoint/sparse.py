"""Pruned checkpoints on disk: the normal HF layout (dense with zeros) and the compact sparse one.

Sparse layout (folder with config/tokenizer files, `sparse*.safetensors` shards and `sparse_manifest.json`):
for each pruned weight `T` (its (out, in) orientation, even for GPT-2's Conv1D) three tensors

  T.values       (nnz,)                   the non-zeros, row-major, in the weight's dtype
  T.mask         (out, ceil(in/16)) int16 bit j (little-endian) of word w <=> column 16·w + j is non-zero
  T.row_offsets  (out + 1,) int64         index in `values` of each row's first non-zero

which is exactly the buffer layout of `formats.bitmask.BitmaskLinear`, so loading in bitmask form wraps the
stored tensors without re-packing. Every other tensor is stored as in the source checkpoint.

A quantized checkpoint (`prune --quantize`) stores the integer codes instead of the values, at their bits:

  T.values       (nnz,) int8, or (ceil(nnz/2),) uint8 for int4 (code k of the stream: byte k//2, low
                 nibble when k is even)      the codes of the weights that dequantize to non-zero values
  T.mask, T.row_offsets                      as above, over those weights
  T.scales       (out, groups)               the scales, at the weight's floating dtype
  T.zeros        (out, groups) uint8         the zero points (int4 only)

(int8 is then the buffer layout of `formats.bitmask_int8.BitmaskInt8Linear`, scales aside.) The manifest's
layer entry names its quantizer and group size.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import PrunescopeError
from ..layers import is_conv1d, set_module
from .model_map import map_tensors, meta_model
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
        quantization=None,
    ) -> None:
        """`metadata`: extra `__metadata__` entries of every shard (e.g. the quantization of its values).
        `quantization` (a `QuantOptions`): the sparse layout stores the pruned weights' codes (`add_rows`
        then takes each row block's `QuantizedWeight`); the hf layout stores their dequantized values."""
        self.folder, self.plan, self.kind = folder, plan, kind
        self.metadata = metadata or {}
        self.quantization = quantization if kind == "sparse" else None
        self.pruned, self.conv1d = pruned, conv1d  # pruned: weight tensor -> module name
        stem = "model" if kind == "hf" else "sparse"
        self.files = {f: f.replace("model", stem, 1) for f in plan.files}
        self._writers: dict[str, ShardWriter] = {}
        self.weight_map: dict[str, str] = {}
        self.layers: dict[str, dict] = {}
        self.tensor_bytes = 0
        self.bytes_written = 0
        self._current: dict | None = None

    def _parts(self) -> tuple[str, ...]:
        if self.quantization is None:
            return SPARSE_PARTS
        return (*SPARSE_PARTS, "scales", *(("zeros",) if not self.quantization.quantizer.symmetric else ()))

    def _stored_names(self, tensor: str) -> list[str]:
        if self.kind == "sparse" and tensor in self.pruned:
            return [f"{tensor}.{part}" for part in self._parts()]
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
            if self.quantization is None:  # values stream out row block by row block
                writer.begin(f"{tensor}.values", dtype)
            else:  # codes, scales and zeros are written whole at the end (a layer's codes: <= 1 B/weight)
                self._current.update(codes=[], scales=[], zeros=[])
            for part in self._parts():
                self.weight_map[f"{tensor}.{part}"] = file

    def add_rows(self, rows: torch.Tensor, quantized=None) -> None:
        """The next (out, in) rows of the current weight (for a Conv1D, the whole weight at once); with a
        quantized sparse layout also their `QuantizedWeight`, whose codes are stored (`rows` is ignored)."""
        current = self._current
        writer = self._writer(current["tensor"])
        if self.kind == "hf":
            writer.write(rows.T if self.conv1d[current["tensor"]] else rows)
            return
        if self.quantization is not None:
            if quantized is None:
                raise PrunescopeError(f"{current['tensor']}: a quantized sparse layout needs the codes")
            self._add_codes(quantized)
            return
        from ..formats.bitmask import BitmaskLinear

        # The bitmask layout is per row, so packing row blocks and concatenating is packing the whole.
        packed = BitmaskLinear.from_dense(rows)
        writer.write(packed.values)
        current["masks"].append(packed.mask)
        current["rows"].append(packed.row_offsets.diff())

    def _add_codes(self, quantized) -> None:
        from ..formats.bitmask import pack_bitmask

        current = self._current
        codes = quantized.codes()
        stored = quantized.nonzero(codes)  # the weights that dequantize to non-zero values: pruned ones not
        current["codes"].append(codes[stored])
        current["masks"].append(pack_bitmask(stored))
        current["rows"].append(stored.sum(1, dtype=torch.int64))
        current["scales"].append(quantized.scales)
        if quantized.zeros is not None:
            current["zeros"].append(quantized.zeros)

    def _end_codes(self, writer: ShardWriter, tensor: str, current: dict) -> int:
        """Write the layer's code stream, scales and zeros; returns their bytes."""
        quantizer = self.quantization.quantizer
        codes = torch.cat(current["codes"])
        tensors = {
            "values": quantizer.pack(codes.unsqueeze(0)).reshape(-1),
            "scales": torch.cat(current["scales"]),
            **({"zeros": torch.cat(current["zeros"])} if current["zeros"] else {}),
        }
        for part, value in tensors.items():
            writer.add(f"{tensor}.{part}", value.contiguous())
        return sum(t.numel() * t.element_size() for t in tensors.values())

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
        if self.quantization is None:
            writer.end((nnz,))
            value_bytes = nnz * element
        else:
            value_bytes = self._end_codes(writer, tensor, current)
        mask = torch.cat(current["masks"])
        row_offsets = torch.zeros(out_in[0] + 1, dtype=torch.int64)
        row_offsets[1:] = counts.cumsum(0)
        writer.add(f"{tensor}.mask", mask)
        writer.add(f"{tensor}.row_offsets", row_offsets)
        self.tensor_bytes += value_bytes + mask.numel() * 2 + row_offsets.numel() * 8
        self.layers[self.pruned[tensor]] = {
            "tensor": tensor,
            "shape": list(out_in),
            "dtype": str(current["dtype"]).removeprefix("torch."),
            "conv1d": self.conv1d[tensor],
            "nnz": nnz,
            **({"quantization": self._quantization_entry(out_in[1])} if self.quantization else {}),
        }

    def _quantization_entry(self, in_features: int) -> dict:
        options = self.quantization
        return {"quantizer": options.name, "group_size": options.group_for(in_features), "values": "codes"}

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


def stored_quantized(parts: dict[str, torch.Tensor], info: dict):
    """The `QuantizedWeight` of a layer stored as codes: the code stream put back at its bitmap's places,
    every other weight at the code that dequantizes to 0 (0, or the group's zero point)."""
    from ..formats.bitmask import unpack_bitmask
    from ..quantization import QuantizedWeight, get_quantizer

    quantization, (out, in_features) = info["quantization"], info["shape"]
    quantizer, group = get_quantizer(quantization["quantizer"]), quantization["group_size"]
    zeros = parts.get("zeros")
    stored = unpack_bitmask(parts["mask"], in_features)
    if zeros is None:
        codes = torch.zeros(out, in_features, dtype=torch.int32)
    else:
        codes = zeros.to(torch.int32).repeat_interleave(group, dim=1)
    codes[stored] = quantizer.unpack(parts["values"].unsqueeze(0), info["nnz"]).reshape(-1)
    scales = parts["scales"]
    return QuantizedWeight.from_codes(quantizer, codes, scales, zeros, group, scales.dtype)


def _load_quantized(
    model, module_name: str, module, parts: dict, info: dict, state: dict, format: str
) -> None:
    """A layer stored as codes: int8 in bitmask form wraps them as `BitmaskInt8Linear` (its buffers, the
    scales in float32); otherwise the dequantized weight (int4 has no bitmask kernel: dense values)."""
    quantized = stored_quantized(parts, info)
    dtype = getattr(torch, info["dtype"])
    if format == "bitmask" and quantized.quantizer_name == "int8":
        from ..formats.bitmask_int8 import BitmaskInt8Linear

        bias = state.pop(f"{module_name}.bias", None)
        scales = parts["scales"].reshape(-1).float()
        layer = BitmaskInt8Linear(
            parts["values"], parts["mask"], parts["row_offsets"], scales, info["shape"][1], bias, dtype=dtype
        )
        set_module(model, module_name, layer)
        return
    dense = quantized.dequantize(dtype)
    state[f"{module_name}.weight"] = dense.T.contiguous() if is_conv1d(module) else dense


@torch.no_grad()
def load_sparse(folder: str | Path, format: str = "dense", dtype: torch.dtype | None = None) -> nn.Module:
    """Rebuild the model of a sparse checkpoint, in memory.

    `format="dense"`: pruned layers become ordinary projections with zeros (bit-identical to the HF
    checkpoint written alongside). `format="bitmask"`: they become `BitmaskLinear` modules wrapping the
    stored buffers as they are (`BitmaskInt8Linear` for int8 codes; int4 codes load dequantized).
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
        prefix = f"{info['tensor']}."
        parts = {name[len(prefix) :]: tensor for name, tensor in stored.items() if name.startswith(prefix)}
        module = model.get_submodule(module_name)
        if "quantization" in info:
            _load_quantized(model, module_name, module, parts, info, state, format)
            continue
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
