"""Load a causal LM and its tokenizer: a Hugging Face hub id, a local directory, or the bundled `demo`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import PrunescopeError
from .util.heap import own_storage

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise PrunescopeError(f"unknown device {device!r}; use auto, cpu, cuda or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise PrunescopeError("device 'cuda' requested but CUDA is not available here")
    if resolved.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise PrunescopeError("device 'mps' requested but MPS is not available here")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: float32 on CPU (half matmuls are slow there and torch's CPU CSR has no half kernels),
    float16 on CUDA/MPS."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if dtype not in DTYPES:
        raise PrunescopeError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    resolved = DTYPES[dtype]
    try:
        a = torch.ones(2, 2, dtype=resolved, device=device)
        torch.nn.functional.linear(a, a)
    except (RuntimeError, TypeError) as error:
        raise PrunescopeError(f"dtype {dtype} is not supported on {device.type}: {str(error)[:80]}") from None
    return resolved


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

    @property
    def context_length(self) -> int:
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def load_model(model: str = "demo", dtype: str = "auto", device: str = "auto") -> LoadedModel:
    """Load through `from_pretrained` whatever `model` names; errors become one clear PrunescopeError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(model)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    path, local = source.folder, source.kind != "hub"
    if local:
        check_weights(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as error:
            # A missing or damaged tokenizer file surfaces as whatever its parser raises.
            raise PrunescopeError(
                f"cannot load the tokenizer from {path!r}: {type(error).__name__}: {_first_line(error)}"
            ) from None
    try:
        if not local:
            tokenizer = AutoTokenizer.from_pretrained(path)
        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=resolved_dtype)
    except OSError as error:
        if local:
            raise PrunescopeError(f"cannot load model from {path!r}: {_first_line(error)}") from None
        raise PrunescopeError(
            f"cannot load {model!r} from the Hugging Face hub (unknown id, or hub unreachable/offline); "
            "pass a local model directory or use --model demo"
        ) from None
    except ValueError as error:
        raise PrunescopeError(f"{model!r} is not a causal language model: {_first_line(error)}") from None
    except Exception as error:
        # A damaged file on disk (tokenizer.json, weights) surfaces as whatever its parser raises.
        if not local:
            raise
        raise PrunescopeError(
            f"cannot load model from {path!r}: {type(error).__name__}: {_first_line(error)}"
        ) from None
    loaded.to(resolved_device)
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
    )
