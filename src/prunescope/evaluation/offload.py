"""Evaluate models larger than memory through Hugging Face accelerate (CPU/disk offload).

`from_pretrained(device_map="auto", max_memory=..., offload_folder=...)` keeps what fits under the memory
cap resident and leaves the rest on disk; accelerate's hooks load each offloaded module's weights just
before it runs and drop them after, so a forward pass holds one module's weights beyond the resident set
(safetensors checkpoints are read in place; other formats are first copied to `offload_folder`).
The behaviour metrics are the ordinary ones (`behaviour.compute_reference` / `compare`): the reference
model is evaluated first with the same offload setup, its log-probabilities spilled to disk, and only then
is the evaluated model loaded — never both at once.
"""

from __future__ import annotations

import gc
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import PrunescopeError
from ..models import check_weights, resolve_device, resolve_dtype, resolve_model
from .behaviour import Behaviour, compare, compute_reference
from .corpus import make_batches
from .datasets import check_source, resolve
from .protocols import build as build_windows
from .protocols import default_protocol, describe


class OffloadedModel(nn.Module):
    """A dispatched model whose first parameter is a real CPU tensor.

    The behaviour functions send batches to `next(model.parameters()).device`; on a disk-offloaded model
    that parameter may sit on the meta device. accelerate's hooks move inputs to each module's execution
    device anyway, so an empty CPU anchor is the right answer.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        self.model = model
        self.config = model.config

    def forward(self, **kwargs):
        return self.model(**kwargs)


def max_memory_map(max_memory: int) -> dict:
    """The same cap for every accelerator present and for the CPU; the rest goes to disk."""
    limits: dict = {i: max_memory for i in range(torch.cuda.device_count())}
    limits["cpu"] = max_memory
    return limits


def load_offloaded(path: str | Path, max_memory: int, offload_folder: str | Path, dtype: str = "auto"):
    """(OffloadedModel, device_map summary) for the causal LM at `path`."""
    from transformers import AutoModelForCausalLM

    resolved = resolve_dtype(dtype, resolve_device("auto"))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=resolved,
            device_map="auto",
            max_memory=max_memory_map(max_memory),
            offload_folder=str(offload_folder),
        )
    except (OSError, ValueError) as error:
        raise PrunescopeError(
            f"cannot load {str(path)!r} with offload: {str(error).splitlines()[0]}"
        ) from None
    model.eval()
    model.requires_grad_(False)
    placement: dict[str, int] = {}
    for device in getattr(model, "hf_device_map", {"": "cpu"}).values():
        placement[str(device)] = placement.get(str(device), 0) + 1
    return OffloadedModel(model), placement


@dataclass
class OffloadEvaluation:
    model: str
    reference: str | None
    behaviour: Behaviour
    reference_behaviour: Behaviour | None
    placement: dict[str, dict] = field(default_factory=dict)
    windows: int = 0
    protocol: dict = field(default_factory=dict)  # perplexity protocol facts and its extra perplexities
    tasks: list[dict] = field(default_factory=list)  # --tasks: lm-eval rows of "reference" and "model"
    tasks_info: dict = field(default_factory=dict)  # lm-eval's and each task's version

    @property
    def protocol_line(self) -> str:
        return describe(self.protocol)

    def as_dict(self) -> dict:
        return {
            "protocol": self.protocol,
            "protocol_line": self.protocol_line,
            "model": self.model,
            "reference": self.reference,
            "behaviour": self.behaviour.as_dict(),
            "reference_behaviour": self.reference_behaviour.as_dict() if self.reference_behaviour else None,
            "placement": self.placement,
            "windows": self.windows,
            **({"tasks": self.tasks, "tasks_info": self.tasks_info} if self.tasks_info else {}),
        }


def _context_length(path: str | Path) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    for key in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


@torch.no_grad()
def evaluate_offloaded(
    model: str | Path,
    reference: str | Path | None = None,
    max_memory: int = 2 * 10**9,
    offload_folder: str | Path | None = None,
    corpus: str | None = None,
    seqlen: int | None = None,
    max_tokens: int = 4096,
    batch_size: int = 8,
    dtype: str = "auto",
    progress: bool = True,
    text_column: str | None = None,
    ppl_protocol: str | None = None,
    tasks=None,
) -> OffloadEvaluation:
    """Perplexity of `model`, plus top-1/top-5/KL against `reference` when one is given.

    `tasks` (an `evaluation.tasks.TaskSuite`) also scores each loaded model, offloaded as it is."""
    from transformers import AutoTokenizer

    # `demo`, a local folder or a hub id, read as every command reads them; `name` picks the default corpus.
    name, reference_name = str(model), str(reference) if reference is not None else None
    model = resolve_model(name).folder
    reference = resolve_model(str(reference)).folder if reference is not None else None
    for path in (model, reference):
        if path is not None and Path(path).exists():
            check_weights(path)
    if reference is not None:
        from transformers import AutoConfig

        vocab = {getattr(AutoConfig.from_pretrained(p), "vocab_size", None) for p in (model, reference)}
        if len(vocab) > 1:
            raise PrunescopeError(f"model and reference have different vocabulary sizes {sorted(vocab)}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(reference or model)
    except Exception as error:  # a missing or damaged tokenizer file surfaces as whatever its parser raises
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise PrunescopeError(f"cannot load the tokenizer of {reference or model!r}: {detail}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    # The corpus and its windows as `prunescope study` makes them (evaluation/datasets.py, protocols.py).
    check_source(corpus)
    protocol = ppl_protocol or default_protocol(corpus)
    texts = resolve(corpus, name, "evaluation", text_column)
    evaluation = build_windows(tokenizer, texts, protocol, _context_length(model), seqlen, max_tokens)
    batches = make_batches(evaluation.windows, batch_size, tokenizer.pad_token_id)
    placement: dict[str, dict] = {}
    task_rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="prunescope-offload-") as scratch:
        folder = Path(offload_folder) if offload_folder else Path(scratch) / "offload"
        reference_behaviour = None
        stored = None
        if reference is not None:
            ref_model, placement["reference"] = load_offloaded(
                reference, max_memory, folder / "reference", dtype
            )
            stored, reference_behaviour = compute_reference(
                ref_model, batches, Path(scratch) / "logprobs", progress=progress
            )
            if tasks is not None:
                task_rows += tasks.score(ref_model.model, tokenizer, "reference")
                tasks.release()
            del ref_model
            gc.collect()
        evaluated, placement["model"] = load_offloaded(model, max_memory, folder / "model", dtype)
        if stored is not None:
            behaviour = compare(evaluated, batches, stored, "evaluated", progress=progress)
        else:
            _, behaviour = compute_reference(
                evaluated, batches, Path(scratch) / "logprobs", progress=progress
            )
        if tasks is not None:
            task_rows += tasks.score(evaluated.model, tokenizer, "model")
            tasks.release()
        del evaluated
        gc.collect()
    return OffloadEvaluation(
        name,
        reference_name,
        behaviour,
        reference_behaviour,
        placement,
        len(batches),
        {
            **evaluation.facts,
            **evaluation.metrics(behaviour.perplexity, behaviour.predicted_tokens),
        },
        task_rows,
        tasks.describe() if tasks is not None else {},
    )
