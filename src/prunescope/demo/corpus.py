"""The shipped demo model: its corpus (this interpreter's stdlib) and its held-out evaluation.

The training recipe is in ``training.py`` beside this module.

Corpus. ``stdlib_documents`` reads every ``*.py`` file of the *running* interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``). It skips ``site-packages`` (third-party code, differs per machine),
every folder named ``test``, ``tests`` or ``idle_test`` (CPython's own test suites: huge, repetitive, and
they would dominate a 12 MB corpus), ``__pycache__``, and files that are not valid UTF-8. Module names
are dotted paths; a package's ``__init__.py`` is named after the package.

Split. ``split_modules`` splits by *top-level* name (``email.mime.text`` goes with ``email``), so a
held-out package was never seen in any of its files. The held-out groups are drawn with a fixed seed.

Nothing foreign is committed: the model folder stores only the held-out module *names*
(``heldout_modules.json``); ``heldout_texts`` reads the files from the running interpreter at run time.

BOS. Like OPT, the tokenizer prepends ``</s>`` (id 1, which is also EOS) to every text. Training
concatenates the documents as ``</s> doc1 </s> doc2 ...``; evaluation tokenizes each held-out text with
``add_special_tokens=True`` and concatenates the same way, so both see the same convention.
"""

from __future__ import annotations

import functools
import json
import math
import random
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PrunescopeError

DEMO_MODEL_DIR: Path = Path(__file__).parent / "model"

HELDOUT_FILE = "heldout_modules.json"
UNIGRAM_FILE = "unigram.json"
METRICS_FILE = "metrics.json"

_SKIP_DIRS = frozenset({"site-packages", "test", "tests", "idle_test", "__pycache__"})

PAD_TOKEN = "<pad>"
BOS_TOKEN = "</s>"  # OPT convention: BOS and EOS are the same token
PAD_ID = 0
BOS_ID = 1


# --------------------------------------------------------------------------------------------- corpus
def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _module_path(root: Path, name: str) -> Path | None:
    parts = name.split(".")
    for cand in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
        if cand.is_file():
            return cand
    return None


def stdlib_documents() -> dict[str, str]:
    """Module name -> source text of the running interpreter's stdlib (see the module docstring for skips)."""
    return dict(_stdlib_documents(str(_stdlib_root())))


@functools.lru_cache(maxsize=2)
def _stdlib_documents(stdlib: str) -> tuple[tuple[str, str], ...]:
    # Cached (immutably) because reading ~700 files costs about a second and tests call this often.
    root = Path(stdlib)
    docs: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts[:-1]):
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        name = _module_name(rel)
        if name and text.strip():
            docs[name] = text
    return tuple(sorted(docs.items()))


def split_modules(
    names: list[str], seed: int = 0, heldout_fraction: float = 0.05
) -> tuple[list[str], list[str]]:
    """Split module names into (train, held-out) by top-level name; deterministic in ``seed``.

    ``heldout_fraction`` is a fraction of the top-level *groups* (at least one when there are two or more).
    """
    groups = sorted({n.split(".")[0] for n in names})
    n_held = 0
    if len(groups) >= 2:
        n_held = min(len(groups) - 1, max(1, round(heldout_fraction * len(groups))))
    held_groups = set(random.Random(seed).sample(groups, n_held))
    train = sorted(n for n in names if n.split(".")[0] not in held_groups)
    held = sorted(n for n in names if n.split(".")[0] in held_groups)
    return train, held


def heldout_texts(model_dir: str | Path = DEMO_MODEL_DIR) -> list[str]:
    """Source texts of the held-out modules listed beside the model, read from this interpreter's stdlib."""
    return [text for _, text in heldout_sources(model_dir)]


def heldout_sources(model_dir: str | Path = DEMO_MODEL_DIR) -> list[tuple[str, str]]:
    """(module name, source) of the held-out modules listed beside the model, in listing order: those this
    interpreter's stdlib has, can decode and finds non-empty; raises PrunescopeError when none is left."""
    listing = Path(model_dir) / HELDOUT_FILE
    try:
        names = json.loads(listing.read_text(encoding="utf-8"))["modules"]
    except (OSError, ValueError, KeyError) as exc:
        raise PrunescopeError(f"cannot read the held-out module list {listing}: {exc}") from exc
    root = _stdlib_root()
    sources = []
    for name in names:
        path = _module_path(root, name)
        if path is None:
            continue  # a module this Python version does not have
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if text.strip():
            sources.append((name, text))
    if not sources:
        raise PrunescopeError(f"none of the {len(names)} held-out modules in {listing} exist in {root}")
    return sources


# ------------------------------------------------------------------------------------------ evaluation
def _load_unigram(model: Any, unigram: str | Path | dict | None) -> dict | None:
    if isinstance(unigram, dict):
        return unigram
    if unigram is None:
        name = getattr(model, "name_or_path", "") or getattr(
            getattr(model, "config", None), "_name_or_path", ""
        )
        if not name or not (Path(name) / UNIGRAM_FILE).is_file():
            return None
        unigram = Path(name) / UNIGRAM_FILE
    path = Path(unigram)
    if path.is_dir():
        path = path / UNIGRAM_FILE
    return json.loads(path.read_text(encoding="utf-8"))


def _token_stream(tokenizer: Any, texts: list[str]) -> np.ndarray:
    # Texts are far longer than the context; we only want ids, so silence the "sequence too long" warning.
    enc = tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
    return np.fromiter((t for ids in enc for t in ids), dtype=np.int64)


def evaluate_heldout(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    seqlen: int = 256,
    max_windows: int | None = 64,
    batch_size: int = 8,
    unigram: str | Path | dict | None = None,
) -> dict:
    """Next-token loss, perplexity and top-1 accuracy on ``texts``, next to a unigram baseline.

    The texts are tokenized (BOS prepended), concatenated and cut into non-overlapping windows of
    ``seqlen`` tokens; when there are more than ``max_windows`` windows, that many are taken evenly spread
    over the stream (deterministic). Within a window every token but the first is predicted.

    The unigram baseline predicts every token from train-split token counts (add-one smoothed; top-1 is
    the most frequent train token). The counts come from ``unigram`` (dict, file or folder) or, by default,
    from ``unigram.json`` in the folder the model was loaded from; with none found the unigram figures are
    ``None``.
    """
    import torch

    stream = _token_stream(tokenizer, texts)
    n_windows = len(stream) // seqlen
    if n_windows == 0:
        raise PrunescopeError(f"held-out texts give {len(stream)} tokens, fewer than one window of {seqlen}")
    starts = np.arange(n_windows) * seqlen
    if max_windows is not None and n_windows > max_windows:
        starts = starts[np.unique(np.linspace(0, n_windows - 1, max_windows).round().astype(np.int64))]
    windows = torch.from_numpy(np.stack([stream[s : s + seqlen] for s in starts]))

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll_sum = 0.0
    correct = 0
    count = 0
    targets_all = []
    try:
        with torch.inference_mode():
            for i in range(0, len(windows), batch_size):
                batch = windows[i : i + batch_size].to(device)
                logits = model(input_ids=batch).logits[:, :-1].float()
                targets = batch[:, 1:]
                nll = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
                )
                nll_sum += float(nll)
                correct += int((logits.argmax(-1) == targets).sum())
                count += targets.numel()
                targets_all.append(targets.reshape(-1).cpu())
    finally:
        model.train(was_training)

    loss = nll_sum / count
    result: dict[str, Any] = {
        "loss": loss,
        "perplexity": math.exp(loss),
        "top1_accuracy": correct / count,
        "tokens": count,
        "windows": len(windows),
        "seqlen": seqlen,
        "unigram_loss": None,
        "unigram_perplexity": None,
        "unigram_top1_accuracy": None,
    }
    stats = _load_unigram(model, unigram)
    if stats is not None:
        counts = np.asarray(stats["counts"], dtype=np.float64)
        logp = np.log(counts + 1.0) - np.log(counts.sum() + len(counts))
        tgt = torch.cat(targets_all).numpy()
        if tgt.max() >= len(counts):
            raise PrunescopeError(
                f"unigram counts cover {len(counts)} ids but the tokenizer gave id {tgt.max()}"
            )
        uni_loss = float(-logp[tgt].mean())
        result["unigram_loss"] = uni_loss
        result["unigram_perplexity"] = math.exp(uni_loss)
        result["unigram_top1_accuracy"] = float((tgt == int(counts.argmax())).mean())
    return result
