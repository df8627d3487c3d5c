"""Map checkpoint tensors to the modules of the model they belong to, without loading any weight.

The module tree is built on the meta device from the checkpoint's config.json (`from_config` under
`accelerate.init_empty_weights()`), so group classification, prunable-layer selection and tied-weight
detection are exactly those of `layers.py` on a loaded model: one table of architecture rules, no second
copy keyed on tensor names. A tied parameter (e.g. a tied lm_head) has no tensor of its own in the
checkpoint: it resolves to its owner's tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..errors import PrunescopeError
from .safetensors_io import Checkpoint


def config_folder(source: str | Path) -> Path:
    source = Path(source)
    return source.parent if source.is_file() else source


def meta_model(source: str | Path) -> nn.Module:
    """The model's module tree with every parameter on the meta device (no memory, no weights read)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = config_folder(source)
    if not (folder / "config.json").is_file():
        raise PrunescopeError(
            f"no config.json beside {str(source)!r}: it is needed to know the architecture of the tensors"
        )
    try:
        config = AutoConfig.from_pretrained(folder)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
        # Under init_empty_weights transformers does not tie the embeddings itself; tie as loading would.
        model.tie_weights()
    except (OSError, ValueError, KeyError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PrunescopeError(f"cannot build the model of {str(folder)!r}: {detail}") from None
    model.eval()
    return model


@dataclass
class TensorMap:
    """Parameter name (as in the model) -> tensor name (as in the checkpoint), and what is left over."""

    to_checkpoint: dict[str, str] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)  # parameter -> parameter it shares storage with
    missing: list[str] = field(default_factory=list)  # parameters with no tensor (and not tied)
    unmapped: list[str] = field(default_factory=list)  # checkpoint tensors no parameter claims


def map_tensors(model: nn.Module, checkpoint: Checkpoint) -> TensorMap:
    """Match every parameter of `model` to its checkpoint tensor.

    Checkpoints saved from the base model lack the `base_model_prefix.` of the causal-LM wrapper (GPT-2's
    `h.0...` vs `transformer.h.0...`); we accept either spelling.
    """
    prefix = getattr(model, "base_model_prefix", "") or ""
    result = TensorMap()
    shared: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(param), []).append(name)
    for names in shared.values():
        owner = names[0]
        for other in names[1:]:
            result.tied[other] = owner
        found = None
        for name in names:  # the owner's tensor, or any tied alias that was saved instead
            candidates = [name]
            if prefix and name.startswith(prefix + "."):
                candidates.append(name[len(prefix) + 1 :])
            found = next((c for c in candidates if c in checkpoint.entries), None)
            if found is not None:
                break
        if found is None:
            result.missing.append(owner)
            continue
        for name in names:
            result.to_checkpoint[name] = found
    claimed = set(result.to_checkpoint.values())
    result.unmapped = [n for n in checkpoint.entries if n not in claimed]
    return result
