"""Load a causal LM and its tokenizer: a Hugging Face hub id, a local directory, or the bundled `demo`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# Device and dtype decisions live in device.py; these names stay importable from here.
from .device import DTYPES, choose_dtype, cuda_index, resolve_device, resolve_dtype  # noqa: F401
from .errors import PrunescopeError, first_line
from .util.heap import own_storage
from .util.model_config import FALLBACK_CONTEXT, context_length  # noqa: F401 - re-exported


def is_demo(model: str) -> bool:
    return model == "demo"


@dataclass(frozen=True)
class ModelSource:
    """What a model argument names: `demo`, a local folder / .safetensors file, or a hub id."""

    name: str  # as the user spelled it (`demo` stays `demo`: it selects the demo's own corpus)
    kind: str  # "demo", "local" or "hub"
    path: str  # the folder (or .safetensors file) on disk, or the hub id

    @property
    def folder(self) -> str:
        """What `from_pretrained` reads: a file's folder, else the path or hub id itself."""
        path = Path(self.path)
        return str(path.parent) if self.kind == "local" and path.is_file() else self.path


def pruned_from(model: str | Path) -> str | None:
    """The model a `prunescope prune` output folder was pruned from (its record's "source", as the user named
    it), or None for any other model. `--format both` keeps the record above its hf/ and sparse/ folders."""
    from .checkpoint.prune_stream import PRUNE_RECORD, output_folders

    path = Path(model).expanduser()
    folder = path.parent if path.is_file() else path
    candidates = [folder / PRUNE_RECORD]
    if folder.name in output_folders(Path(), "both"):  # hf/ or sparse/
        candidates.append(folder.parent / PRUNE_RECORD)
    for record in candidates:
        if record.is_file():
            try:
                source = json.loads(record.read_text(encoding="utf-8")).get("source")
            except (OSError, ValueError, AttributeError):
                return None  # an unreadable record names no source; the model is taken as it is
            return str(source) if source else None
    return None


def _looks_like_path(model: str) -> bool:
    # A hub id is `name` or `owner/name`; anything else (./x, /x, ~/x, a/b/c, x.safetensors) is a path.
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or model.endswith(".safetensors")


def resolve_model(model: str) -> ModelSource:
    """The one reading of a model argument, shared by every command; a bad local path fails here."""
    if is_demo(model):
        from .demo.corpus import DEMO_MODEL_DIR

        return ModelSource(model, "demo", str(DEMO_MODEL_DIR))
    if not model or not model.strip():
        raise PrunescopeError("no model given; pass a hub id, a local folder or demo")
    path = Path(model).expanduser()
    if path.exists():
        if path.is_file() and path.suffix != ".safetensors":
            raise PrunescopeError(f"model {model!r} is a file; pass its folder (or a .safetensors file)")
        folder = path.parent if path.is_file() else path
        if not (folder / "config.json").is_file():
            raise PrunescopeError(f"no config.json in {str(folder)!r}: it names the model's architecture")
        return ModelSource(model, "local", str(path))
    if _looks_like_path(model):
        raise PrunescopeError(f"model path {model!r} does not exist")
    return ModelSource(model, "hub", model)


def resolve_model_path(model: str) -> str:
    return resolve_model(model).folder


def check_weights(folder: str | Path) -> None:
    """Each .safetensors file in `folder` is whole: its header reads and its data fits the file.

    Reading headers only costs microseconds; a truncated download otherwise fails deep inside
    `from_pretrained` with a message naming neither the problem nor the file.
    """
    from .checkpoint.safetensors_io import check_whole, read_header

    for file in sorted(Path(folder).glob("*.safetensors")):
        check_whole(file, read_header(file)[0])


def sparse_layout_model(folder: str | Path, dtype: torch.dtype) -> nn.Module | None:
    """The model of a folder in prunescope's sparse layout (`prune --format sparse`), rebuilt dense on the
    CPU at `dtype` (`checkpoint.sparse_load`); None for any other folder, which `from_pretrained` reads."""
    from .checkpoint.sparse_load import is_sparse_layout, load_sparse_layout

    return load_sparse_layout(folder, dtype) if is_sparse_layout(folder) else None


def local_checkpoint(model: str) -> Path:
    """The folder or .safetensors file of `model` on disk, for commands that read safetensors directly.

    A hub id resolves to its snapshot in the Hugging Face cache, downloaded first unless offline.
    """
    source = resolve_model(model)
    if source.kind != "hub":
        return Path(source.path)
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
        return Path(snapshot_download(source.path, allow_patterns=patterns))
    except Exception as error:  # any hub failure (offline, unknown id, network) is one line
        raise PrunescopeError(
            f"cannot get {model!r} from the Hugging Face hub ({type(error).__name__}: unknown id, or hub "
            "unreachable/offline); pass a local model folder or demo"
        ) from None


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    name: str
    source: str
    device: torch.device
    dtype: torch.dtype
    dtype_reason: str = ""  # why this dtype (device.choose_dtype), for run.json

    @property
    def context_length(self) -> int:
        return context_length(self.model.config, FALLBACK_CONTEXT)


def _placement(dtype: torch.dtype, device: torch.device) -> dict:
    """`from_pretrained` keywords that put the weights where they will run.

    On CUDA every tensor is read from the checkpoint straight onto the GPU (`device_map`, with
    `low_cpu_mem_usage` for transformers 4; 5 always loads that way): a 7B float16 model never needs a
    full copy in host RAM. accelerate adds no hooks for a single device. CPU (and MPS) load as before."""
    if device.type == "cuda":
        return {"dtype": dtype, "device_map": {"": cuda_index(device)}, "low_cpu_mem_usage": True}
    return {"dtype": dtype}


def _unreadable(model: str, path: str, local: bool, error: OSError) -> PrunescopeError:
    """The one line for a model that cannot be read: a local folder's own error, or the hub's."""
    if local:
        return PrunescopeError(f"cannot load model from {path!r}: {first_line(error)}")
    return PrunescopeError(
        f"cannot load {model!r} from the Hugging Face hub (unknown id, or hub unreachable/offline); "
        "pass a local model directory or use --model demo"
    )


def _read(load, model: str, path: str, local: bool, invalid: str):
    """`load(path)` (a `from_pretrained`): an unreadable source or a ValueError becomes one PrunescopeError
    (`invalid`, then the error's first line)."""
    try:
        return load(path)
    except OSError as error:
        raise _unreadable(model, path, local, error) from None
    except ValueError as error:
        raise PrunescopeError(f"{invalid}: {first_line(error)}") from None


def _config(path: str, model: str, local: bool):
    """The checkpoint's config (for the dtype it names); load errors become one PrunescopeError."""
    from transformers import AutoConfig

    return _read(AutoConfig.from_pretrained, model, path, local, f"cannot read the config of {model!r}")


def _hub_tokenizer(model: str, path: str):
    from transformers import AutoTokenizer

    return _read(
        AutoTokenizer.from_pretrained, model, path, False, f"{model!r} is not a causal language model"
    )


def _pretrained(model: str, path: str, local: bool, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """`from_pretrained` of `path`, placed on `device`; load errors become one PrunescopeError."""
    from transformers import AutoModelForCausalLM

    try:
        loaded = AutoModelForCausalLM.from_pretrained(path, **_placement(dtype, device))
    except OSError as error:
        raise _unreadable(model, path, local, error) from None
    except ValueError as error:
        raise PrunescopeError(f"{model!r} is not a causal language model: {first_line(error)}") from None
    except Exception as error:
        # A damaged file on disk (tokenizer.json, weights) surfaces as whatever its parser raises.
        if not local:
            raise
        raise PrunescopeError(
            f"cannot load model from {path!r}: {type(error).__name__}: {first_line(error)}"
        ) from None
    if device.type != "cuda":
        loaded.to(device)  # CUDA: already there (loaded with a device_map)
    return loaded


def load_model(model: str = "demo", dtype: str = "auto", device: str = "auto") -> LoadedModel:
    """Load through `from_pretrained` whatever `model` names; errors become one clear PrunescopeError.

    `device` and `dtype` as device.resolve_device / choose_dtype decide (`auto`: CUDA, then MPS, then CPU;
    the checkpoint's dtype where that device runs it natively); on CUDA the weights load straight onto
    the GPU. A folder in prunescope's sparse layout (`prune --format sparse`) is rebuilt dense
    (`sparse_layout_model`) and moved there whole. `LoadedModel.dtype_reason` says why the dtype."""
    from transformers import AutoTokenizer

    source = resolve_model(model)
    resolved_device = resolve_device(device)
    path, local = source.folder, source.kind != "hub"
    if dtype == "auto" and resolved_device.type != "cpu":
        # `auto` off the CPU follows the checkpoint's dtype (device.choose_dtype): read its config first.
        resolved_dtype, dtype_reason = choose_dtype(dtype, resolved_device, _config(path, model, local))
    else:
        resolved_dtype, dtype_reason = choose_dtype(dtype, resolved_device)
    if local:
        check_weights(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as error:
            # A missing or damaged tokenizer file surfaces as whatever its parser raises.
            raise PrunescopeError(
                f"cannot load the tokenizer from {path!r}: {type(error).__name__}: {first_line(error)}"
            ) from None
    sparse = sparse_layout_model(path, resolved_dtype) if local else None
    if sparse is not None:
        # `from_pretrained` cannot read the sparse layout: it is rebuilt on the CPU, then moved there whole.
        loaded = sparse.to(resolved_device)
    else:
        if not local:
            tokenizer = _hub_tokenizer(model, path)
        loaded = _pretrained(model, path, local, resolved_dtype, resolved_device)
    own_storage(loaded)  # weights we prune and swap must be ours to write and free, not the file's
    loaded.eval()
    loaded.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        # Padding is masked out of every metric; any id works, eos is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return LoadedModel(
        loaded,
        tokenizer,
        model,
        source.kind,
        resolved_device,
        resolved_dtype,
        dtype_reason,
    )
