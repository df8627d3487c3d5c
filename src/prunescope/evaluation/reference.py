"""The dense reference of a study: the dense model's final hidden states (tokens x hidden) and a few facts per
position, batch by batch, in memory or spilled to a folder, with a private copy of the dense output head that
turns them back into the dense distribution, bit for bit (see `behaviour.py` for why this mechanism)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import PrunescopeError


def to_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """The same float32 log-softmax as `log_probs`, in place where the dtype allows."""
    logits = logits.float()
    return logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True))


# ------------------------------------------------------------------------------------------ output head
def output_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(the module that owns it, the output head): the first `get_output_embeddings()` in the model."""
    for module in model.modules():
        getter = getattr(module, "get_output_embeddings", None)
        if callable(getter):
            head = getter()
            if isinstance(head, nn.Module):
                return module, head
    raise PrunescopeError(
        f"{type(model).__name__} exposes no output head (get_output_embeddings); the dense reference "
        "stores the head's inputs and needs it"
    )


def _transforms(config) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """Candidate final-logit transforms, as transformers' models apply them after the head."""
    configs = [config]
    text = getattr(config, "get_text_config", None)
    if callable(text):
        configs.append(text())
    found: list[tuple[str, Callable]] = [("none", lambda x: x)]
    for cfg in configs:
        cap = getattr(cfg, "final_logit_softcapping", None)
        if isinstance(cap, (int, float)) and cap:
            found.append(("final_logit_softcapping", lambda x, c=cap: torch.tanh(x / c) * c))
            found.append(("final_logit_softcapping, float32", lambda x, c=cap: torch.tanh(x.float() / c) * c))
        scale = getattr(cfg, "logit_scale", None)
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            found.append(("logit_scale", lambda x, s=scale: x * s))
        scaling = getattr(cfg, "logits_scaling", None)
        if isinstance(scaling, (int, float)) and not isinstance(scaling, bool) and scaling:
            found.append(("1/logits_scaling", lambda x, s=scaling: x / s))
            found.append(("logits_scaling", lambda x, s=scaling: x * s))
    return found


class DenseHead:
    """A private copy of the dense output head (weight, bias) and the model's final-logit transform.

    Bounded: vocabulary × hidden, whatever the token count. Kept because a variant may prune or swap the
    head (`--include lm_head`), and `prunescope evaluate` compares another checkpoint after the dense model
    is gone. A head that accelerate offloaded to disk stays on disk: its copy is written to `spill_dir` and
    memory-mapped when used, so an offloaded evaluation holds no more of it than the model's own forward.
    """

    def __init__(self, module: nn.Module, device: torch.device, spill_dir: Path | None = None) -> None:
        self.linear = isinstance(module, nn.Linear)
        self.path: Path | None = None
        weight = getattr(module, "weight", None)
        if weight is not None and weight.device.type == "meta":
            from accelerate.utils import align_module_device

            with align_module_device(module, execution_device=device):
                self._copy(module, device)
            if self.linear and spill_dir is not None:
                spill_dir.mkdir(parents=True, exist_ok=True)
                self.path = spill_dir / "output_head.pt"
                torch.save({"weight": self.weight.cpu(), "bias": self.bias}, self.path)
                self.weight = self.bias = None
        else:
            self._copy(module, device)
        self.transform_name = "none"
        self.transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x

    def _copy(self, module: nn.Module, device: torch.device) -> None:
        if self.linear:
            self.weight = module.weight.detach().to(device, copy=True)
            self.bias = None if module.bias is None else module.bias.detach().to(device, copy=True)
        else:
            import copy

            self.module = copy.deepcopy(module).to(device)

    def _parameters(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.path is not None:  # offloaded: memory-mapped from the spill folder, one batch at a time
            stored = torch.load(self.path, mmap=True, weights_only=True)
            bias = stored["bias"]
            return stored["weight"].to(device), None if bias is None else bias.to(device)
        if self.weight.device != device:
            self.weight = self.weight.to(device)
            self.bias = None if self.bias is None else self.bias.to(device)
        return self.weight, self.bias

    @property
    def nbytes(self) -> int:
        if self.path is not None:
            return self.path.stat().st_size
        if self.linear:
            return sum(t.numel() * t.element_size() for t in (self.weight, self.bias) if t is not None)
        return sum(p.numel() * p.element_size() for p in self.module.parameters())

    def raw(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.linear:
            return nn.functional.linear(hidden, *self._parameters(hidden.device))
        self.module = self.module.to(hidden.device)
        return self.module(hidden)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transform(self.raw(hidden))

    def verify(self, hidden: torch.Tensor, logits: torch.Tensor, owner: nn.Module) -> None:
        """Pick the transform that reproduces `logits` from `hidden` exactly; raise when none does."""
        raw = self.raw(hidden)
        closest = math.inf
        for name, transform in _transforms(getattr(owner, "config", None)):
            candidate = transform(raw)
            if candidate.shape == logits.shape:
                if torch.equal(candidate.to(logits.dtype), logits):
                    self.transform_name, self.transform = name, transform
                    return
                difference = (candidate.float() - logits.float()).abs().max()
                closest = min(closest, float(difference))
            del candidate
        raise PrunescopeError(
            f"the dense reference recomputes the dense distribution from the final hidden states through the "
            f"output head, but on {type(owner).__name__} the head does not reproduce the model's logits "
            f"(max difference {closest:.3g}): its forward changes the logits after the head in a way "
            "prunescope does not know (known: final_logit_softcapping, logit_scale, logits_scaling)"
        )


# ------------------------------------------------------------------------------------------ reference
class DenseReference:
    """The dense model's final hidden states and per-position facts per batch, in memory or spilled to
    `spill_dir`, and the dense output head that turns them back into the dense distribution."""

    def __init__(self, spill_dir: str | Path | None = None) -> None:
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._memory: list[dict[str, torch.Tensor]] = []
        self.count = 0
        self.head: DenseHead | None = None
        self.nbytes = 0  # bytes of the stored batches (RAM or disk), excluding the head

    def append(self, record: dict[str, torch.Tensor]) -> None:
        record = {key: value.detach().to("cpu", copy=True) for key, value in record.items()}
        self.nbytes += sum(t.numel() * t.element_size() for t in record.values())
        if self.spill_dir is None:
            self._memory.append(record)
        else:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            torch.save(record, self.spill_dir / f"reference_{self.count:05d}.pt")
        self.count += 1

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.spill_dir is None:
            return self._memory[index]
        return torch.load(self.spill_dir / f"reference_{index:05d}.pt", weights_only=True)

    def dense_log_probs(self, record: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """The dense model's float32 log-probabilities for one stored batch, recomputed on `device`."""
        if self.head is None:
            raise PrunescopeError("the dense reference holds no batch")
        return to_log_probs(self.head(record["hidden"].to(device)))
