"""Prune a checkpoint that need not fit in memory: row block by row block from the source, shard by shard out.

Magnitude and random (global / layer / row, N:M) read each prunable weight in row blocks of about
PIECE_ELEMENTS weights (a contiguous byte range of a row-major tensor), so only one block of rows, its
scores and its mask are materialised at a time. Global and per-layer thresholds come from the same
streaming radix select as the in-memory path (`pruning.selection`), whose `scores(j)` callable here reads
row block j from disk on every pass; masks are then produced in order while the output is written.
Masks and kept weights are exactly those `pruning.prune` gives on the loaded model (tested).
Calibrated methods, allocations and refinements go decoder block by decoder block instead
(`prune_calibrated`, through the same driver as the in-memory path).
Tensors that are not pruned are copied byte for byte, in chunks.

Quantization (issue 25): `quantize` (RTN) quantizes each pruned weight after masking (int8: per row; int4:
per row and group of input columns, so a row block quantizes as the whole layer); GPTQ comes with the spec
(`spec.quantize`) and runs inside the block pass. The hf layout gets the *dequantized* values, so any loader
reads them; the sparse layout the codes, scales and zeros (`sparse.py`). Every shard's `__metadata__` names
the quantizer, its pass, the layers and what the values hold (`QUANT_METADATA`), from which `inspect` counts
the packed storage an hf checkpoint's values need.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from ..errors import PrunescopeError
from ..layers import is_conv1d, prunable_layers
from ..pruning import PruneSpec, check_pattern_fits
from ..pruning.scoring import mask_from_scores
from ..pruning.selection import global_smallest_masks
from ..quantization import rtn_quantize
from ..util.heap import trim_heap
from ..util.progress import track
from .model_map import map_tensors, meta_model
from .safetensors_io import Checkpoint, copy_side_files, plan_shards
from .sparse import SparseOutput

CHECKPOINT_OUTPUTS = ("hf", "sparse", "both")
PRUNE_RECORD = "prune.json"  # `prunescope prune`'s record in OUT: its "source" is the model it pruned
QUANT_METADATA = "prunescope_quantization"  # shard __metadata__ key: JSON of the quantizer and its layers
DEFAULT_SHARD_BYTES = 2 * 10**9
# Rows are read and scored in blocks of about this many weights: the selection's scratch (float32 scores,
# int64 keys and their temporaries, ~40 bytes per weight) stays near 40 MB whatever the layer size.
PIECE_ELEMENTS = 1 << 18


@dataclass
class StreamPruneResult:
    spec: PruneSpec
    layers: dict[str, dict] = field(default_factory=dict)  # module -> weights, pruned, tensor
    outputs: dict[str, dict] = field(default_factory=dict)  # format -> folder, bytes, files
    checkpoint_bytes: int = 0
    seconds: float = 0.0
    details: dict = field(default_factory=dict)  # OWL allocation / DSnoT summary (`PruneRecord.details`)

    @property
    def pruned(self) -> int:
        return sum(v["pruned"] for v in self.layers.values())

    @property
    def weights(self) -> int:
        return sum(v["weights"] for v in self.layers.values())

    def as_dict(self) -> dict:
        return {
            "spec": self.spec.describe(),
            "pruned_weights": self.pruned,
            "prunable_weights": self.weights,
            "pruned_layer_sparsity": self.pruned / self.weights if self.weights else 0.0,
            "checkpoint_bytes": self.checkpoint_bytes,
            "outputs": self.outputs,
            "seconds": self.seconds,
            "layers": self.layers,
            **self.details,
        }


def _processing_order(model, mapping, checkpoint: Checkpoint) -> list[str]:
    """Checkpoint tensors in model order (prunable layers in `prunable_layers` order), then the rest."""
    order = dict.fromkeys(
        mapping.to_checkpoint[n] for n, _ in model.named_parameters() if n in mapping.to_checkpoint
    )
    order.update(dict.fromkeys(mapping.unmapped))
    return list(order)


def output_folders(out: Path, fmt: str) -> dict[str, Path]:
    if fmt not in CHECKPOINT_OUTPUTS:
        raise PrunescopeError(
            f"unknown checkpoint format {fmt!r}; choose one of {', '.join(CHECKPOINT_OUTPUTS)}"
        )
    if fmt == "both":
        return {"hf": out / "hf", "sparse": out / "sparse"}
    return {fmt: out}


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of prunable layer `layer`, in its (out, in) orientation."""

    layer: int
    start: int
    stop: int


def _out_in(checkpoint: Checkpoint, tensor: str, conv1d: bool) -> tuple[int, int]:
    shape = checkpoint.entries[tensor].shape
    return (shape[1], shape[0]) if conv1d else (shape[0], shape[1])


def _pieces(checkpoint: Checkpoint, tensors: list[str], conv1d: list[bool]) -> list[Piece]:
    """Row blocks of about PIECE_ELEMENTS weights: a contiguous byte range of a row-major weight.

    A Conv1D stores (in, out): its (out, in) rows are not contiguous on disk, so it is one piece.
    """
    pieces = []
    for i, tensor in enumerate(tensors):
        out_features, in_features = _out_in(checkpoint, tensor, conv1d[i])
        step = out_features if conv1d[i] else max(1, PIECE_ELEMENTS // max(in_features, 1))
        pieces += [Piece(i, r, min(r + step, out_features)) for r in range(0, out_features, step)]
    return pieces


def _mask_function(spec: PruneSpec, checkpoint, tensors, pieces, pieces_of, scores):
    """mask_of(j) for pieces j = 0, 1, ... in order, matching `pruning.prune`'s masks row block by row block.

    Selections over pieces equal selections over whole layers: pieces are row blocks in order, and the
    streaming select breaks ties by (piece order, flat index) = (layer order, flat index), as the in-memory
    global select and the stable sort of `smallest_mask` do (scores here are never negative or -0.0).
    """
    if spec.pattern.structured or spec.effective_scope == "row":
        return lambda j: mask_from_scores(scores(j), spec)
    if spec.effective_scope == "global":
        total = sum(checkpoint.entries[t].numel for t in tensors)
        return global_smallest_masks(scores, len(pieces), round(spec.sparsity * total))
    per_layer: dict[int, object] = {}

    def layer_mask(j: int) -> torch.Tensor:
        layer = pieces[j].layer
        if layer not in per_layer:
            per_layer.clear()
            js = pieces_of[layer]
            k = round(spec.sparsity * checkpoint.entries[tensors[layer]].numel)
            per_layer[layer] = (js[0], global_smallest_masks(lambda q: scores(js[0] + q), len(js), k))
        first, masks = per_layer[layer]
        return masks(j - first)

    return layer_mask


@torch.no_grad()
def prune_checkpoint(
    source: str | Path,
    out: str | Path,
    spec: PruneSpec,
    fmt: str = "hf",
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
    calibration: list[torch.Tensor] | None = None,
    quantize=None,
    device: str | torch.device = "cpu",
) -> StreamPruneResult:
    """Write the pruned checkpoint of `source` into `out` (an empty folder) in format hf, sparse or both.

    `calibration`: token-id tensors (1, seqlen) for wanda / sparsegpt / ria, OWL, DSnoT or GPTQ
    (see `pruning.calibration`). `quantize`: a `QuantOptions` (RTN) applied to each pruned weight; GPTQ
    instead comes with the spec (`spec.quantize`: inside the block pass, jointly with SparseGPT).
    `device`: where a calibrated method's blocks run (one block at a time there; host RAM stays bounded
    by a block as on the CPU); magnitude and random stream row blocks on the CPU.
    """
    if quantize is not None and quantize.method != "rtn":
        raise PrunescopeError("GPTQ runs inside the block pass: give it as spec.quantize, not quantize=")
    if quantize is not None and spec.quantize is not None:
        raise PrunescopeError("one quantization per checkpoint: RTN after pruning or GPTQ in the pass")
    quantization = quantize if quantize is not None else spec.quantize
    if spec.needs_calibration and not calibration:
        raise PrunescopeError(f"{spec.method} needs calibration data; none was given")
    start = time.perf_counter()
    folders = output_folders(Path(out), fmt)
    checkpoint = Checkpoint(source)
    model = meta_model(source)
    mapping = map_tensors(model, checkpoint)
    layers = prunable_layers(model, include, exclude)
    check_pattern_fits(layers, spec)
    names = list(layers)
    tensors = []
    for name in names:
        tensor = mapping.to_checkpoint.get(f"{name}.weight")
        if tensor is None:
            raise PrunescopeError(f"checkpoint has no weight for {name}")
        tensors.append(tensor)
    conv1d = [is_conv1d(layers[n]) for n in names]
    describe = None
    if quantization is not None:
        for name, tensor, c in zip(names, tensors, conv1d, strict=True):
            in_features = _out_in(checkpoint, tensor, c)[1]
            grouped = quantization.quantizer.grouped and quantization.group_size
            if grouped and in_features % quantization.group_size:
                raise PrunescopeError(
                    f"--group-size {quantization.group_size} does not divide in_features {in_features} "
                    f"of {name}"
                )
        describe = {
            "quantizer": quantization.name,
            "group_size": quantization.group_size,
            "method": quantization.method,
            "pass": _quantization_pass(spec, quantize),
            "layers": names,
        }
    index_of = {t: i for i, t in enumerate(tensors)}
    pieces = _pieces(checkpoint, tensors, conv1d)
    pieces_of: dict[int, list[int]] = {}
    for j, piece in enumerate(pieces):
        pieces_of.setdefault(piece.layer, []).append(j)

    last: dict[int, torch.Tensor] = {}
    whole_layer: dict[int, torch.Tensor] = {}

    def rows(j: int) -> torch.Tensor:
        # One piece cached: the mask pass and the write that follows it read the same rows once.
        if j not in last:
            last.clear()
            piece = pieces[j]
            if conv1d[piece.layer]:
                last[j] = checkpoint.read(tensors[piece.layer]).T
            else:
                last[j] = checkpoint.read_rows(tensors[piece.layer], piece.start, piece.stop)
        return last[j]

    method = spec.method_plugin

    def scores(j: int) -> torch.Tensor:
        piece = pieces[j]
        if method.weight_free:
            # Such scores (random) depend on (seed, layer index, layer shape) only, as in `pruning.prune`;
            # the layer's are drawn whole (same generator stream) and kept while its pieces are served.
            if piece.layer not in whole_layer:
                whole_layer.clear()
                shape = torch.Size(_out_in(checkpoint, tensors[piece.layer], conv1d[piece.layer]))
                stub = SimpleNamespace(shape=shape, device=torch.device("cpu"))
                whole_layer[piece.layer] = method.score(stub, spec, piece.layer)
            return whole_layer[piece.layer][piece.start : piece.stop]
        return method.score(rows(j), spec, piece.layer)  # elementwise: a row block scores as in the layer

    mask_of = _mask_function(spec, checkpoint, tensors, pieces, pieces_of, scores)

    order = _processing_order(model, mapping, checkpoint)
    pruned_positions = [index_of[t] for t in order if t in index_of]
    if pruned_positions != sorted(pruned_positions):
        raise RuntimeError("prunable layers are not in checkpoint order")  # global masks need increasing i
    plan = plan_shards(((t, checkpoint.entries[t].nbytes) for t in order), max_shard_bytes)
    writers = {}
    for kind, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        writers[kind] = SparseOutput(
            folder,
            plan,
            kind,
            {tensors[i]: names[i] for i in range(len(names))},
            conv1d={tensors[i]: conv1d[i] for i in range(len(names))},
            metadata=_quantization_metadata(describe, kind),
            quantization=quantization,
        )
    result = StreamPruneResult(spec, checkpoint_bytes=checkpoint.nbytes)
    if spec.needs_calibration:
        _write_calibrated(
            checkpoint, model, mapping, layers, spec, calibration, writers, result, progress, quantize, device
        )
    else:
        for tensor in track(order, f"pruning ({spec.method})", enabled=progress):
            i = index_of.get(tensor)
            if i is None:
                for writer in writers.values():
                    writer.copy(checkpoint, tensor)
                continue
            entry = checkpoint.entries[tensor]
            for writer in writers.values():
                writer.begin_pruned(tensor, entry.torch_dtype, entry.shape)
            pruned = 0
            for j in pieces_of[i]:
                mask = mask_of(j)
                w = rows(j)
                w.masked_fill_(mask, 0)
                pruned += int(mask.sum())
                codes = None
                if quantize is not None:
                    codes = rtn_quantize(w, quantize)
                    w = codes.dequantize(w.dtype)
                for writer in writers.values():
                    writer.add_rows(w, codes)
                last.clear()
                del w, mask
            for writer in writers.values():
                writer.end_pruned()
            trim_heap()
            result.layers[names[i]] = {"tensor": tensor, "weights": entry.numel, "pruned": pruned}
    for kind, writer in writers.items():
        writer.finish(spec, str(source), result.layers)
        copy_side_files(checkpoint.folder, folders[kind])
        result.outputs[kind] = {
            "folder": str(folders[kind]),
            "bytes": writer.bytes_written,
            "files": len(writer.files),
        }
    checkpoint.close()
    result.seconds = time.perf_counter() - start
    return result


def _quantization_metadata(describe: dict | None, kind: str) -> dict[str, str] | None:
    """Each shard's `__metadata__` entry naming the quantization: the hf layout holds the dequantized
    values (any loader reads them), the sparse layout the codes (`sparse.py`)."""
    if describe is None:
        return None
    values = "codes" if kind == "sparse" else "dequantized"
    return {QUANT_METADATA: json.dumps({**describe, "values": values}, separators=(",", ":"))}


def _quantization_pass(spec: PruneSpec, quantize) -> str:
    """How the written values were quantized: RTN after pruning, or GPTQ inside the block pass."""
    if quantize is not None:
        return "after pruning"
    return "joint" if spec.joint_quantization else "in pass"


def _write_calibrated(
    checkpoint,
    model,
    mapping,
    layers,
    spec,
    calibration,
    writers,
    result,
    progress,
    quantize=None,
    device="cpu",
) -> None:
    """Block by block (`prune_calibrated.prune_blocks`); every tensor that is not pruned is copied."""
    from .prune_calibrated import prune_blocks

    to_tensor = {p: t for p, t in mapping.to_checkpoint.items() if p not in mapping.tied}
    pruned_tensors = {to_tensor[f"{name}.weight"]: name for name in layers}

    def write_block(index: int, weights: dict[str, torch.Tensor], quantized: dict) -> None:
        for name, weight in weights.items():
            tensor = to_tensor[f"{name}.weight"]
            entry = checkpoint.entries[tensor]
            weight = weight.to("cpu", entry.torch_dtype)
            codes = quantized.get(name)  # GPTQ in the pass: the weight holds its dequantized values
            if quantize is not None:  # RTN after pruning (per row / group: a row block as the layer)
                codes = rtn_quantize(weight, quantize)
                weight = codes.dequantize(weight.dtype)
            for writer in writers.values():
                writer.begin_pruned(tensor, entry.torch_dtype, entry.shape)
                writer.add_rows(weight, codes)
                writer.end_pruned()
            result.layers[name] = {"tensor": tensor, "weights": entry.numel, "pruned": 0}

    counts = prune_blocks(
        model, checkpoint, to_tensor, layers, spec, calibration, write_block, progress, result.details, device
    )
    for name, count in counts.items():
        result.layers[name]["pruned"] = count
    for tensor in _processing_order(model, mapping, checkpoint):
        if tensor not in pruned_tensors:
            for writer in writers.values():
                writer.copy(checkpoint, tensor)
