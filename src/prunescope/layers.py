"""Find the prunable layers of a causal LM and classify every module into a group.

Architecture differences live in one table (`ARCHITECTURES`): which path components mark a module as part of
the attention block or of the MLP. Everything else is decided by module type, so a new family usually needs
one line here and nothing elsewhere.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import PrunescopeError

GROUPS = ("embedding", "attention_linear", "mlp_linear", "lm_head", "norm", "other")


@dataclass(frozen=True)
class Architecture:
    """Path components (module-name segments) that mark attention and MLP sub-modules."""

    attention: tuple[str, ...]
    mlp: tuple[str, ...]


_GENERIC = Architecture(
    attention=("self_attn", "attn", "attention", "self_attention", "mixer"),
    mlp=("mlp", "feed_forward", "ffn", "fc1", "fc2", "fc_in", "fc_out"),
)

ARCHITECTURES: dict[str, Architecture] = {
    "opt": Architecture(attention=("self_attn",), mlp=("fc1", "fc2")),
    "gpt2": Architecture(attention=("attn",), mlp=("mlp",)),
    "gpt_neox": Architecture(attention=("attention",), mlp=("mlp",)),
    "gptj": Architecture(attention=("attn",), mlp=("mlp",)),
    "llama": Architecture(attention=("self_attn",), mlp=("mlp",)),
    "mistral": Architecture(attention=("self_attn",), mlp=("mlp",)),
    "qwen2": Architecture(attention=("self_attn",), mlp=("mlp",)),
    "phi": Architecture(attention=("self_attn",), mlp=("mlp",)),
    "phi3": Architecture(attention=("self_attn",), mlp=("mlp",)),
    "falcon": Architecture(attention=("self_attention",), mlp=("mlp",)),
    "bloom": Architecture(attention=("self_attention",), mlp=("mlp",)),
}


def architecture_of(model: nn.Module) -> Architecture:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return ARCHITECTURES.get(model_type, _GENERIC)


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2 style models store projections as transformers' Conv1D, with a transposed (in, out) weight."""
    # Not imported for the test: a Conv1D exists only once transformers is imported, and importing it
    # costs seconds to code that never meets one (the command line's option building).
    if "transformers" not in sys.modules:
        return False
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always has it today
        return False
    return isinstance(module, Conv1D)


def is_linear(module: nn.Module) -> bool:
    """A weight-multiplying projection: nn.Linear, GPT-2's Conv1D, or one of our sparse replacements."""
    from .formats.base import SparseLinear

    return isinstance(module, (nn.Linear, SparseLinear)) or is_conv1d(module)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight of a dense projection; a view for Conv1D, so writes go through."""
    if is_conv1d(module):
        return module.weight.T
    return module.weight


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of any projection, dense or sparse."""
    if is_conv1d(module):
        in_features, out_features = module.weight.shape
        return out_features, in_features
    return module.out_features, module.in_features


def _kind(module: nn.Module) -> str:
    if is_linear(module):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if "norm" in type(module).__name__.lower():
        return "norm"
    return "other"


def classify(name: str, module: nn.Module, model: nn.Module, arch: Architecture | None = None) -> str:
    """Group of one module: embedding / attention_linear / mlp_linear / lm_head / norm / other."""
    arch = arch or architecture_of(model)
    kind = _kind(module)
    if kind == "embedding":
        return "embedding"
    if kind == "norm":
        return "norm"
    if kind == "linear":
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if module is output or name.split(".")[-1] in ("lm_head", "embed_out"):
            return "lm_head"
        parts = set(name.split("."))
        if parts & set(arch.attention):
            return "attention_linear"
        if parts & set(arch.mlp):
            return "mlp_linear"
    return "other"


@dataclass
class LayerInfo:
    name: str
    module: nn.Module
    group: str
    kind: str


def parameter_modules(model: nn.Module) -> Iterator[LayerInfo]:
    """Every module that directly owns parameters (or a sparse weight), in model order, with its group."""
    from .formats.base import SparseLinear

    arch = architecture_of(model)
    for name, module in model.named_modules():
        owns = any(True for _ in module.parameters(recurse=False)) or isinstance(module, SparseLinear)
        if owns and name:
            yield LayerInfo(name, module, classify(name, module, model, arch), _kind(module))


DEFAULT_PRUNABLE_GROUPS = ("attention_linear", "mlp_linear")


def prunable_layers(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[str, nn.Module]:
    """Projections to prune, by module name, in model order.

    Default: every attention and MLP projection. `include` globs (fnmatch on the full module name) replace
    that default with any projection whose name matches; `exclude` globs then remove names.
    """
    selected: dict[str, nn.Module] = {}
    for info in parameter_modules(model):
        if info.kind != "linear":
            continue
        if include:
            chosen = any(fnmatch.fnmatchcase(info.name, pattern) for pattern in include)
        else:
            chosen = info.group in DEFAULT_PRUNABLE_GROUPS
        if chosen and exclude and any(fnmatch.fnmatchcase(info.name, pattern) for pattern in exclude):
            chosen = False
        if chosen:
            if info.group == "lm_head" and _is_tied(model):
                raise PrunescopeError(
                    f"{info.name} shares its weight with the input embedding; pruning it would prune the "
                    "embedding too. Exclude it or untie the weights."
                )
            selected[info.name] = info.module
    if not selected:
        detail = f" (include={list(include or [])}, exclude={list(exclude or [])})"
        raise PrunescopeError("no prunable layer matched" + detail)
    return selected


def _is_tied(model: nn.Module) -> bool:
    inp = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return inp is not None and out is not None and out.weight is inp.weight


def set_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Replace the sub-module called `name`; returns the old one."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old
