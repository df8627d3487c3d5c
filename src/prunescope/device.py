"""The one place where the device and the dtype are decided, for every command, the API and the notebooks.

Device: `auto` is CUDA, then MPS, then CPU; an explicit device must exist here.

Dtype (`choose_dtype`): an explicit dtype is used as asked (if the device can run a matmul in it). `auto`
follows the checkpoint's own dtype (`config.dtype`, `config.torch_dtype` before transformers 5) where the
device computes it natively:

- CPU: float32 always (half matmuls are slow there and torch's CPU CSR has no half kernels).
- CUDA: a bfloat16 checkpoint stays bfloat16 on compute capability >= 8.0 (Ampere and later); below that
  (a T4 is 7.5) bf16 is emulated, so it runs in float16. A float16 checkpoint stays float16. A float32 or
  unlabelled checkpoint runs in float16 (half precision is what every CUDA GPU runs fast, and float16
  keeps 3 more mantissa bits than bfloat16).
- MPS: float16.

The reason comes back with the dtype as one line, which run.json records.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import PrunescopeError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_NAMES = {value: key for key, value in DTYPES.items()}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit device that is not here is one clear error."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise PrunescopeError(f"unknown device {device!r}; use auto, cpu, cuda or mps") from None
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise PrunescopeError(f"unknown device {device!r}; use auto, cpu, cuda or mps")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise PrunescopeError("device 'cuda' requested but CUDA is not available here")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise PrunescopeError(
                f"device {device!r} requested but there are {torch.cuda.device_count()} CUDA device(s)"
            )
    if resolved.type == "mps" and not _mps_available():
        raise PrunescopeError("device 'mps' requested but MPS is not available here")
    return resolved


def cuda_index(device: torch.device) -> int:
    """The CUDA ordinal of `device` (`cuda` alone is the current device)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def device_label(device: torch.device) -> str:
    """'NVIDIA H200 (cc 9.0)' for a CUDA device, 'CPU' / 'MPS' otherwise."""
    if device.type != "cuda":
        return device.type.upper()
    index = cuda_index(device)
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} (cc {major}.{minor})"


def native_bf16(device: torch.device) -> bool:
    """bfloat16 in hardware: CUDA compute capability >= 8.0 (ROCm: as torch says); never emulation.

    `torch.cuda.is_bf16_supported()` alone is True on a T4 in recent torch (it counts emulation), hence
    the capability check and `including_emulation=False` where torch has it."""
    if device.type != "cuda":
        return False
    index = cuda_index(device)
    if torch.cuda.get_device_capability(index)[0] < 8 and not getattr(torch.version, "hip", None):
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3: no emulation counted
        return bool(torch.cuda.is_bf16_supported())


def checkpoint_dtype(config) -> torch.dtype | None:
    """The dtype a checkpoint's config names (`dtype`, or `torch_dtype` before transformers 5); None if
    it names none we run (or the config is unknown)."""
    if config is None:
        return None
    if isinstance(config, dict):
        value = config.get("dtype") or config.get("torch_dtype")
    else:
        value = getattr(config, "dtype", None)
        if value is None:
            # transformers 5 warns on reading `torch_dtype`: read the attribute only when `dtype` is absent.
            value = config.__dict__.get("torch_dtype") if hasattr(config, "__dict__") else None
    if isinstance(value, str):
        value = DTYPES.get(value.removeprefix("torch."))
    return value if value in _NAMES else None


def _probe(dtype: torch.dtype, name: str, device: torch.device) -> None:
    try:
        a = torch.ones(2, 2, dtype=dtype, device=device)
        torch.nn.functional.linear(a, a)
    except (RuntimeError, TypeError) as error:
        raise PrunescopeError(f"dtype {name} is not supported on {device.type}: {str(error)[:80]}") from None


def choose_dtype(dtype: str, device: torch.device, config=None) -> tuple[torch.dtype, str]:
    """(dtype, one-line reason) for `--dtype` on `device`; `config` is the checkpoint's (for `auto`).

    e.g. (torch.bfloat16, "bfloat16: checkpoint dtype, native on NVIDIA H200 (cc 9.0)")."""
    if isinstance(dtype, torch.dtype):
        dtype = _NAMES.get(dtype, str(dtype))
    if dtype != "auto":
        if dtype not in DTYPES:
            raise PrunescopeError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
        resolved = DTYPES[dtype]
        _probe(resolved, dtype, device)
        reason = f"{dtype}: requested (--dtype {dtype})"
        if resolved == torch.bfloat16 and device.type == "cuda" and not native_bf16(device):
            reason += f"; bfloat16 is emulated (slow) on {device_label(device)}"
        return resolved, reason
    if device.type == "cpu":
        return torch.float32, "float32: CPU (half matmuls are slow there; no half CSR kernels)"
    stored = checkpoint_dtype(config)
    stored_name = _NAMES.get(stored, "unlabelled")
    if device.type == "mps":
        return torch.float16, f"float16: half precision on MPS ({stored_name} checkpoint)"
    label = device_label(device)
    if stored == torch.bfloat16:
        if native_bf16(device):
            return torch.bfloat16, f"bfloat16: checkpoint dtype, native on {label}"
        return torch.float16, f"float16: bfloat16 checkpoint, bf16 not native on {label}"
    if stored == torch.float16:
        return torch.float16, f"float16: checkpoint dtype, native on {label}"
    return torch.float16, f"float16: half precision on {label} ({stored_name} checkpoint)"


def resolve_dtype(dtype: str, device: torch.device, config=None) -> torch.dtype:
    """The dtype alone of `choose_dtype`."""
    return choose_dtype(dtype, device, config)[0]


def input_device(model: nn.Module) -> torch.device:
    """Where a batch must go: the execution device of the first module that runs (the input embedding).

    A model dispatched by accelerate may hold its first parameters on another device than its embedding,
    or on `meta` (offloaded to disk: its hook names the execution device); a plain model has all its
    weights on one device."""
    inner = getattr(model, "model", None) if not hasattr(model, "get_input_embeddings") else model
    embedding = None
    try:
        embedding = inner.get_input_embeddings() if inner is not None else None
    except (AttributeError, NotImplementedError):
        embedding = None
    if embedding is not None:
        hook = getattr(embedding, "_hf_hook", None)
        execution = getattr(hook, "execution_device", None)
        if execution is not None:
            return _as_device(execution)
        weight = getattr(embedding, "weight", None)
        if weight is not None and weight.device.type != "meta":
            return weight.device
    placement = getattr(inner, "hf_device_map", None) or {}
    for where in placement.values():  # in module order: the first one runs first
        if where not in ("disk", "meta"):
            return _as_device(where)
    for parameter in model.parameters():
        if parameter.device.type != "meta":
            return parameter.device
    return torch.device("cpu")


def _as_device(where) -> torch.device:
    if isinstance(where, torch.device):
        return where
    if isinstance(where, int):
        return torch.device("cuda", where)
    return torch.device(str(where))


__all__ = [
    "DTYPES",
    "checkpoint_dtype",
    "choose_dtype",
    "cuda_index",
    "device_label",
    "input_device",
    "native_bf16",
    "resolve_device",
    "resolve_dtype",
]
