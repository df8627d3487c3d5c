"""Read and write safetensors checkpoints one tensor at a time, never the whole model.

Reading parses the 8-byte length + JSON header ourselves (no weights touched) and fetches a tensor's bytes
with a plain positioned file read into a fresh buffer. We deliberately do not memory-map: pages of a mapped
file count in the process's RSS while mapped, which would make "peak memory" meaningless; a plain read
leaves the data in the kernel page cache (reclaimable, not ours) and only the one tensor in our heap.

Writing appends tensors in whatever order they are produced and writes the header last, into space
reserved at the start of the file (padded with spaces, which the format allows). So a writer holds one
tensor at a time, and sizes that are only known at the end (packed sparse values) need no second pass.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import PrunescopeError
from ..util.units import parse_size  # re-exported: one unit rule for every size the CLI reads

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
):
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: file, dtype, shape and byte range (absolute offsets in the file)."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype not in DTYPES:
            raise PrunescopeError(f"tensor {self.name}: unsupported safetensors dtype {self.dtype}")
        return DTYPES[self.dtype]


def read_header(path: str | Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Entries and `__metadata__` of one .safetensors file, from its header only."""
    path = Path(path)
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise PrunescopeError(f"{path} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        if length > _MAX_HEADER:
            raise PrunescopeError(f"{path} is not a safetensors file (header length {length})")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise PrunescopeError(f"{path} is not a safetensors file (bad header)") from None
    base = 8 + length
    metadata = header.pop("__metadata__", None) or {}
    entries = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        entries[name] = TensorEntry(name, path, info["dtype"], tuple(info["shape"]), base + begin, base + end)
    return entries, metadata


def check_whole(path: str | Path, entries: dict[str, TensorEntry]) -> None:
    """The file holds every byte its header describes (a cut-off download or copy fails here, by name)."""
    needed = max((entry.end for entry in entries.values()), default=0)
    size = Path(path).stat().st_size
    if size < needed:
        raise PrunescopeError(
            f"{path} is truncated: its header describes {needed:,} bytes, the file has {size:,}"
        )


class Checkpoint:
    """The tensors of a safetensors checkpoint: a folder (single file or sharded with an index) or a file."""

    def __init__(self, source: str | Path) -> None:
        source = Path(source)
        if not source.exists():
            raise PrunescopeError(f"checkpoint {str(source)!r} does not exist")
        if source.is_file():
            self.folder, files = source.parent, [source]
        elif (source / INDEX_NAME).is_file():
            self.folder = source
            index = json.loads((source / INDEX_NAME).read_text())
            files = [source / f for f in dict.fromkeys(index["weight_map"].values())]
        else:
            self.folder = source
            files = sorted(source.glob("*.safetensors"))
            if not files:
                raise PrunescopeError(f"no .safetensors file in {str(source)!r}")
        self.files = files
        self.entries: dict[str, TensorEntry] = {}
        self.metadata: dict[str, str] = {}
        for file in files:
            if not file.is_file():
                raise PrunescopeError(f"shard {file.name} listed in the index is missing")
            entries, metadata = read_header(file)
            check_whole(file, entries)
            self.entries.update(entries)
            self.metadata.update(metadata)
        self._handles: dict[Path, object] = {}

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def names(self) -> list[str]:
        return list(self.entries)

    def read(self, name: str) -> torch.Tensor:
        """The tensor `name`, in a buffer of its own (see the module docstring for why not mmap)."""
        entry = self.entries[name]
        return self.read_rows(name, 0, entry.shape[0] if entry.shape else 1)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of tensor `name` (a contiguous byte range of a row-major tensor)."""
        entry = self.entries[name]
        row_shape = entry.shape[1:]
        row_bytes = entry.nbytes // entry.shape[0] if entry.shape and entry.shape[0] else entry.nbytes
        nbytes = (stop - start) * row_bytes
        shape = (stop - start, *row_shape) if entry.shape else ()
        if nbytes == 0:
            return torch.empty(shape, dtype=entry.torch_dtype)
        buffer = bytearray(nbytes)
        handle = self._handles.get(entry.file)
        if handle is None:
            handle = self._handles[entry.file] = entry.file.open("rb", buffering=0)
        handle.seek(entry.start + start * row_bytes)
        view = memoryview(buffer)
        done = 0
        while done < nbytes:
            got = handle.readinto(view[done:])
            if not got:
                raise PrunescopeError(f"{entry.file.name} is truncated (tensor {name})")
            done += got
        return torch.frombuffer(buffer, dtype=entry.torch_dtype).view(shape)

    def copy_raw(self, name: str, out, chunk: int = 4 << 20) -> None:
        """Copy a tensor's bytes into the open file `out` without building a tensor."""
        entry = self.entries[name]
        with entry.file.open("rb") as f:
            f.seek(entry.start)
            left = entry.nbytes
            while left:
                data = f.read(min(chunk, left))
                out.write(data)
                left -= len(data)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tensor_dtype_name(dtype: torch.dtype) -> str | None:
    return DTYPE_NAMES.get(dtype)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


class ShardWriter:
    """Append tensors to one .safetensors file; the header goes into space reserved up front.

    `reserve` must bound the header's size: `header_bound(names)` gives one from the tensor names alone.
    """

    def __init__(self, path: str | Path, reserve: int, metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.reserve = reserve
        self.metadata = metadata or {}
        self.header: dict[str, dict] = {}
        self.offset = 0
        self._file = self.path.open("wb")
        self._file.write(b"\0" * (8 + reserve))

    def _record(self, name: str, dtype: str, shape: tuple[int, ...], nbytes: int) -> None:
        if name in self.header:
            raise ValueError(f"tensor {name} written twice")
        self.header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [self.offset, self.offset + nbytes],
        }
        self.offset += nbytes

    def begin(self, name: str, dtype: torch.dtype) -> None:
        """Start a tensor written in pieces (`write`), whose shape is given at `end`."""
        if tensor_dtype_name(dtype) is None:
            raise PrunescopeError(f"cannot store dtype {dtype} in safetensors")
        self._open = (name, dtype, self.offset, 0)

    def write(self, piece: torch.Tensor) -> None:
        name, dtype, start, written = self._open
        data = _tensor_bytes(piece.to(dtype).cpu())
        self._file.write(data)
        self._open = (name, dtype, start, written + data.nbytes)

    def end(self, shape: tuple[int, ...]) -> None:
        name, dtype, start, written = self._open
        self.offset = start
        self._record(name, DTYPE_NAMES[dtype], tuple(shape), written)
        self._open = None

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if tensor.dtype not in DTYPE_NAMES:
            raise PrunescopeError(f"cannot store dtype {tensor.dtype} in safetensors")
        data = _tensor_bytes(tensor.cpu())
        self._file.write(data)
        self._record(name, DTYPE_NAMES[tensor.dtype], tuple(tensor.shape), data.nbytes)

    def add_raw(self, checkpoint: Checkpoint, name: str, as_name: str | None = None) -> None:
        """Copy tensor `name` of `checkpoint` unchanged (bytes only, no tensor built)."""
        entry = checkpoint.entries[name]
        checkpoint.copy_raw(name, self._file)
        self._record(as_name or name, entry.dtype, entry.shape, entry.nbytes)

    def close(self) -> int:
        """Write the header; returns the file size."""
        header = dict(self.header)
        if self.metadata:
            header["__metadata__"] = self.metadata
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) > self.reserve:
            self._file.close()
            raise RuntimeError(f"header of {self.path.name} exceeds its reserved {self.reserve} bytes")
        self._file.seek(0)
        self._file.write(struct.pack("<Q", self.reserve))
        self._file.write(text + b" " * (self.reserve - len(text)))
        self._file.close()
        return 8 + self.reserve + self.offset


def header_bound(names: Iterable[str], metadata: dict[str, str] | None = None) -> int:
    """Upper bound of a header holding these tensor names (any dtype, up to 4-D shapes, 20-digit numbers)."""
    per_tensor = len('"":{"dtype":"BF16","shape":[],"data_offsets":[,]},') + 6 * 20
    size = sum(len(json.dumps(n)) + per_tensor for n in names)
    size += len(json.dumps({"__metadata__": metadata or {}}))
    # Keep the data 8-byte aligned, as safetensors' own writer does.
    return (size + 64 + 7) // 8 * 8


@dataclass
class ShardPlan:
    """Which tensor goes to which output shard (file names follow `from_pretrained`'s convention)."""

    files: list[str]
    assignment: dict[str, str]

    def names_in(self, file: str) -> list[str]:
        return [n for n, f in self.assignment.items() if f == file]


def plan_shards(sizes: Iterable[tuple[str, int]], max_shard_bytes: int, stem: str = "model") -> ShardPlan:
    """Cut tensors (in order) into shards of at most `max_shard_bytes` (a bigger tensor gets its own)."""
    groups: list[list[str]] = [[]]
    current = 0
    for name, nbytes in sizes:
        if groups[-1] and current + nbytes > max_shard_bytes:
            groups.append([])
            current = 0
        groups[-1].append(name)
        current += nbytes
    if len(groups) == 1:
        files = [f"{stem}.safetensors"]
    else:
        files = [f"{stem}-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    assignment = {name: file for file, group in zip(files, groups, strict=True) for name in group}
    return ShardPlan(files, assignment)


def write_index(folder: Path, plan: ShardPlan, total_size: int, stem: str = "model") -> None:
    """The `*.safetensors.index.json` that sharded `from_pretrained` loading expects (only when sharded)."""
    if len(plan.files) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(plan.assignment)}
        (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# Side files that describe the source model, not a checkpoint derived from it: an earlier prune's records,
# its model card (a pruned checkpoint gets its own, `model_card.py`) and its measured metrics (the demo's
# metrics.json; Hugging Face Trainer's results and state).
NOT_COPIED = frozenset(
    {
        "prune.json",
        "sparse_manifest.json",
        "README.md",
        "metrics.json",
        "all_results.json",
        "eval_results.json",
        "train_results.json",
        "trainer_state.json",
    }
)


def copy_side_files(source: Path, target: Path) -> list[str]:
    """Copy config, generation config, tokenizer and data files: everything but weights, their index and
    the files that describe the source model (NOT_COPIED)."""
    copied = []
    for path in sorted(source.iterdir()):
        if path.name in NOT_COPIED:
            continue
        if path.is_file() and not path.name.endswith(
            (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth")
        ):
            shutil.copy2(path, target / path.name)
            copied.append(path.name)
    return copied


def iter_files(folder: Path, suffix: str = ".safetensors") -> Iterator[Path]:
    yield from sorted(p for p in folder.iterdir() if p.name.endswith(suffix))


def folder_bytes(folder: Path, suffix: str = ".safetensors") -> int:
    return sum(p.stat().st_size for p in iter_files(folder, suffix))


__all__ = [
    "DTYPES",
    "INDEX_NAME",
    "Checkpoint",
    "ShardPlan",
    "ShardWriter",
    "TensorEntry",
    "copy_side_files",
    "folder_bytes",
    "header_bound",
    "parse_size",
    "plan_shards",
    "read_header",
    "write_index",
]
