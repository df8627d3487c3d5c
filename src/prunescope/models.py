"""Load a causal LM and its tokenizer: a Hugging Face hub id, a local directory, or the bundled `demo`."""

from __future__ import annotations

import os
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


def resolve_model_path(model: str) -> str:
    if is_demo(model):
        from .demo.corpus import DEMO_MODEL_DIR

        return str(DEMO_MODEL_DIR)
    return model


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


def load_model(model: str = "demo", dtype: str = "auto", device: str = "auto") -> LoadedModel:
    """Load through `from_pretrained` whatever `model` names; errors become one clear PrunescopeError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    path = resolve_model_path(model)
    local = Path(path).exists()
    if not local and (path.startswith((".", "/", "~")) or os.sep in path.strip("/").replace("/", "", 1)):
        raise PrunescopeError(f"model path {model!r} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=resolved_dtype)
    except OSError as error:
        if local:
            raise PrunescopeError(f"cannot load model from {path!r}: {str(error).splitlines()[0]}") from None
        raise PrunescopeError(
            f"cannot load {model!r} from the Hugging Face hub (unknown id, or hub unreachable/offline); "
            "pass a local model directory or use --model demo"
        ) from None
    except ValueError as error:
        raise PrunescopeError(
            f"{model!r} is not a causal language model: {str(error).splitlines()[0]}"
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
        "demo" if is_demo(model) else ("local" if local else "hub"),
        resolved_device,
        resolved_dtype,
    )
