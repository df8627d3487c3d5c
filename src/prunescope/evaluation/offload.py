"""Evaluate models larger than memory through Hugging Face accelerate (CPU/disk offload).

`from_pretrained(device_map="auto", max_memory=..., offload_folder=...)` keeps what fits under the memory
cap resident and leaves the rest on disk; accelerate's hooks load each offloaded module's weights just
before it runs and drop them after, so a forward pass holds one module's weights beyond the resident set
(safetensors checkpoints are read in place; other formats are first copied to `offload_folder`).
The behaviour metrics are the ordinary ones (`behaviour.compute_reference` / `compare`): the reference
model is evaluated first with the same offload setup, its log-probabilities spilled to disk, and only then
is the evaluated model loaded — never both at once.

On a GPU (`--device cuda`, or `auto` where CUDA is): without `--max-memory`, accelerate sizes each device
itself (the free memory of every GPU, then host RAM, then disk), so a model that fits on the GPU runs there
whole; batches go to the device of the first module that runs (the input embedding's).

A checkpoint in prunescope's sparse layout (`prune --format sparse`) has no file `from_pretrained` reads: it
is rebuilt whole in host memory (`models.sparse_layout_model`), then placed by accelerate under the same
budget (`dispatch`); on the CPU it stays as it is, so --max-memory does not bound its host memory.
"""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..device import choose_dtype, input_device, resolve_device
from ..errors import PrunescopeError
from ..models import FALLBACK_CONTEXT, check_weights, context_length, resolve_model, sparse_layout_model
from ..util.records import pick
from .behaviour import Behaviour, compare, compute_reference
from .corpus import make_batches
from .datasets import check_source, resolve
from .protocols import build as build_windows
from .protocols import default_protocol, describe


class OffloadedModel(nn.Module):
    """A dispatched model whose first parameter is an empty tensor on the device its inputs go to.

    The behaviour functions send batches to `next(model.parameters()).device`; on a dispatched model that
    parameter may sit on the meta device (offloaded to disk) or on another device than the embedding, and
    a model that fits on one GPU is moved there whole without hooks to move its inputs. The anchor sits
    where the first module runs (`device.input_device`), so batches land there.
    """

    def __init__(self, model: nn.Module, device: torch.device | None = None) -> None:
        super().__init__()
        device = input_device(model) if device is None else device
        self.anchor = nn.Parameter(torch.empty(0, device=device), requires_grad=False)
        self.model = model
        self.config = model.config
        self.dtype_reason = ""

    def forward(self, **kwargs):
        return self.model(**kwargs)


def max_memory_map(max_memory: int | None, device: torch.device | str = "cpu") -> dict | None:
    """The memory budget of each device accelerate may use for `device`; what does not fit goes to disk.

    An explicit `max_memory` (bytes) caps each of them alike: the GPU(s) `device` names (`cuda` = all of
    them, `cuda:1` = that one), MPS, and the CPU. None is accelerate's own budget per device (its free
    memory on each GPU, the available host RAM), restricted to those devices; for plain `cuda` it is None
    itself, and accelerate balances over every GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        gpus = [device.index] if device.index is not None else list(range(torch.cuda.device_count()))
        keys: list = [*gpus, "cpu"]
    elif device.type == "mps":
        keys = ["mps", "cpu"]
    else:
        keys = ["cpu"]
    if max_memory is not None:
        return dict.fromkeys(keys, max_memory)
    if device.type == "cuda" and device.index is None:
        return None
    from accelerate.utils import get_max_memory

    available = get_max_memory()
    return {key: available[key] for key in keys if key in available}


def dispatch(
    model: nn.Module, memory: dict | None, offload_folder: str | Path, dtype: torch.dtype
) -> nn.Module:
    """`model` (in memory) placed by accelerate under the budget `memory` (`max_memory_map`), as
    `from_pretrained(device_map="auto")` places a checkpoint: what fits the devices stays there, the rest
    goes to host RAM, then to `offload_folder` on disk. A model that fits one device is moved there whole,
    without hooks; `hf_device_map` records the placement."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = sorted(getattr(model, "_no_split_modules", None) or [])
    memory = get_balanced_memory(model, max_memory=memory, no_split_module_classes=no_split, dtype=dtype)
    options = {"max_memory": memory, "no_split_module_classes": no_split, "dtype": dtype}
    device_map = infer_auto_device_map(model, **options)
    if device_map.get("") == "disk":
        # Nothing fits: dispatch_model offloads named modules only, not the whole model as "".
        device_map = infer_auto_device_map(model, **options, clean_result=False)
    return dispatch_model(model, device_map, offload_dir=str(offload_folder))


def _placed(model: nn.Module, device: torch.device, max_memory: int | None, offload_folder: str | Path):
    """A model rebuilt in host memory (the sparse layout's, whose peak is the whole model there, whatever
    `max_memory` says), placed: on the CPU it stays as it is; on a GPU (or MPS) accelerate places it under
    the same budget as any checkpoint (`dispatch`)."""
    if device.type == "cpu":
        return model
    return dispatch(model, max_memory_map(max_memory, device), offload_folder, model.dtype)


def load_offloaded(
    path: str | Path,
    max_memory: int | None,
    offload_folder: str | Path,
    dtype: str = "auto",
    device: str | torch.device = "auto",
):
    """(OffloadedModel, device_map summary) for the causal LM at `path`, placed for `device`.

    A folder in prunescope's sparse layout loads whole in host memory first (`_placed`). The
    model's `dtype_reason` says why it runs in its dtype (device.choose_dtype)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    resolved_device = resolve_device(device)
    try:
        config = AutoConfig.from_pretrained(path) if dtype == "auto" else None
        resolved, reason = choose_dtype(dtype, resolved_device, config)
        sparse = sparse_layout_model(path, resolved)
        if sparse is not None:
            model = _placed(sparse, resolved_device, max_memory, offload_folder)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                path,
                dtype=resolved,
                device_map="auto",
                max_memory=max_memory_map(max_memory, resolved_device),
                offload_folder=str(offload_folder),
            )
    except (OSError, ValueError) as error:
        raise PrunescopeError(
            f"cannot load {str(path)!r} with offload: {str(error).splitlines()[0]}"
        ) from None
    model.eval()
    model.requires_grad_(False)
    placement: dict[str, int] = {}
    for where in getattr(model, "hf_device_map", {"": "cpu"}).values():
        name = f"cuda:{where}" if isinstance(where, int) else str(where)
        placement[name] = placement.get(name, 0) + 1
    wrapped = OffloadedModel(model)
    wrapped.dtype_reason = reason
    return wrapped, placement


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
    device: str = ""  # where the inputs went (the first module's device), e.g. cuda:0
    dtype_reason: str = ""  # device.choose_dtype's one line, e.g. "float32: CPU (...)"

    @property
    def protocol_line(self) -> str:
        return describe(self.protocol)

    def as_dict(self) -> dict:
        return {
            **pick(self, "protocol", "protocol_line", "model", "reference"),
            "behaviour": self.behaviour.as_dict(),
            "reference_behaviour": self.reference_behaviour.as_dict() if self.reference_behaviour else None,
            **pick(self, "placement", "device", "dtype_reason", "windows"),
            **(pick(self, "tasks", "tasks_info") if self.tasks_info else {}),
        }


def _context_length(path: str | Path) -> int:
    from transformers import AutoConfig

    return context_length(AutoConfig.from_pretrained(path), FALLBACK_CONTEXT)


@torch.no_grad()
def evaluate_offloaded(
    model: str | Path,
    reference: str | Path | None = None,
    max_memory: int | None = None,
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
    device: str = "auto",
) -> OffloadEvaluation:
    """Perplexity of `model`, plus top-1/top-5/KL against `reference` when one is given.

    `max_memory` (bytes per device; None: accelerate's own budget) and `device` (auto: CUDA, then MPS,
    then CPU) place each model in turn. `tasks` (an `evaluation.tasks.TaskSuite`) also scores each loaded
    model, offloaded as it is."""
    from transformers import AutoTokenizer

    resolved_device = resolve_device(device)  # an unknown or absent device fails before anything loads
    if dtype != "auto":
        choose_dtype(dtype, resolved_device)  # so does an unknown dtype

    # `demo`, a local folder or a hub id, read as every command reads them.
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
    # The builtin texts are those `study` evaluates the reference (its dense model) on; without a reference,
    # the model's own, or those of the model a pruned checkpoint came from (`corpus.builtin_corpus_model`).
    texts = resolve(corpus, reference_name or name, "evaluation", text_column)
    evaluation = build_windows(tokenizer, texts, protocol, _context_length(model), seqlen, max_tokens)
    batches = make_batches(evaluation.windows, batch_size, tokenizer.pad_token_id)
    placement: dict[str, dict] = {}
    task_rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="prunescope-offload-") as scratch:
        folder = Path(offload_folder) if offload_folder else Path(scratch) / "offload"
        logprobs = Path(scratch) / "logprobs"

        def scored(path: str | Path, role: str, measure: Callable[[Any], Any]) -> Any:
            """Load `path` offloaded (placement[role]), measure it, score the tasks on it, release it."""
            offloaded, placement[role] = load_offloaded(
                path, max_memory, folder / role, dtype, resolved_device
            )
            result = measure(offloaded)
            if tasks is not None:
                task_rows.extend(tasks.score(offloaded.model, tokenizer, role))
                tasks.release()
            del offloaded
            gc.collect()
            return result

        def measure_reference(ref) -> tuple[Any, Behaviour]:
            return compute_reference(ref, batches, logprobs, progress=progress)

        def measure_model(evaluated) -> tuple[str, str, Behaviour]:
            inputs_on = str(next(evaluated.parameters()).device)
            if stored is not None:
                behaviour = compare(evaluated, batches, stored, "evaluated", progress=progress)
            else:
                _, behaviour = compute_reference(evaluated, batches, logprobs, progress=progress)
            return inputs_on, evaluated.dtype_reason, behaviour

        reference_behaviour = None
        stored = None
        if reference is not None:
            stored, reference_behaviour = scored(reference, "reference", measure_reference)
        inputs_on, dtype_reason, behaviour = scored(model, "model", measure_model)
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
        inputs_on,
        dtype_reason,
    )
