"""The demo model's bundled zero-shot task: which in-scope identifier completes a line of held-out code.

``build_identifier_task`` writes ``demo/tasks/stdlib_identifier.jsonl`` from the *held-out* modules only
(``heldout_modules.json`` beside the demo model, read from the running interpreter), so the model never saw
any of it during training.

One document: ``context`` is up to ``CONTEXT_LINES`` whole source lines (at most ``CONTEXT_CHARS``
characters) followed by the start of the next line, cut just before an identifier; ``choices`` are four
identifiers, ``label`` the index of the one the code really has there. The truth and all three distractors
are names that occur in the context lines, so every choice is "in scope" and copying any name seen above
gives nothing away: the model has to know which of the names fits (``self.`` + attribute, the argument
that is passed on, the class that is instantiated ...). Identifiers are Python ``NAME`` tokens (from
``tokenize``, so nothing inside strings or comments), at least ``MIN_CHARS`` long, neither keywords nor
``self``/``cls``/``None``/``True``/``False``. Chance is 1/4 for lm-eval's ``acc`` and ``acc_norm`` alike.

Everything is drawn from ``random.Random(seed)`` over sorted inputs: the same stdlib gives the same file.
The shipped file was built with Python 3.11.7 (the demo model's interpreter); its text is CPython
standard-library source (PSF License).
"""

from __future__ import annotations

import io
import json
import keyword
import random
import tokenize
from pathlib import Path

from ..errors import PrunescopeError
from .corpus import DEMO_MODEL_DIR, heldout_sources

TASKS_DIR: Path = Path(__file__).parent / "tasks"
TASK_NAME = "stdlib_identifier"
DATA_FILE = f"{TASK_NAME}.jsonl"

CONTEXT_LINES = 10
CONTEXT_CHARS = 360  # ~100 demo tokens: well inside the 256-token context, and cheap to score
MIN_CHARS = 3
N_CHOICES = 4
SKIP = frozenset(keyword.kwlist) | {"self", "cls", "None", "True", "False"}


def _heldout_sources(model_dir: Path) -> list[tuple[str, str]]:
    """(module name, source with LF line ends) of the held-out modules (`corpus.heldout_sources`) by name."""
    return sorted((name, source.replace("\r\n", "\n")) for name, source in heldout_sources(model_dir))


def _names(source: str) -> dict[int, list[tuple[int, str]]]:
    """Line index (0-based) -> [(column, identifier)] of the usable NAME tokens on that line."""
    found: dict[int, list[tuple[int, str]]] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.NAME and len(token.string) >= MIN_CHARS and token.string not in SKIP:
                found.setdefault(token.start[0] - 1, []).append((token.start[1], token.string))
    except (tokenize.TokenError, SyntaxError):
        return {}
    return found


def _context_start(lines: list[str], i: int) -> int:
    """First line of the whole-line context before line ``i`` (CONTEXT_LINES, CONTEXT_CHARS)."""
    start, size = i, 0
    while start > max(0, i - CONTEXT_LINES) and size + len(lines[start - 1]) + 1 <= CONTEXT_CHARS:
        start -= 1
        size += len(lines[start]) + 1
    return start


def build_documents(n: int = 200, seed: int = 0, model_dir: str | Path = DEMO_MODEL_DIR) -> list[dict]:
    """The task's documents (``context``, ``choices``, ``label``, ``module``, ``line``), deterministic."""
    candidates = []  # (module, line index, column, truth, sorted in-scope distractor pool)
    for module, source in _heldout_sources(Path(model_dir)):
        lines = source.split("\n")
        names = _names(source)
        for i in range(2, len(lines)):
            start = _context_start(lines, i)
            scope = sorted({name for row in range(start, i) for _, name in names.get(row, [])})
            for column, name in names.get(i, []):
                if column == 0 or name not in scope:
                    continue  # a name at column 0 has no line start to condition on
                pool = [other for other in scope if other != name]
                if len(pool) >= N_CHOICES - 1:
                    candidates.append((module, i, column, name, pool))
                break  # one document per line: its first usable in-scope name
    if len(candidates) < n:
        raise PrunescopeError(f"only {len(candidates)} usable held-out lines for {n} documents")
    rng = random.Random(seed)
    sources = dict(_heldout_sources(Path(model_dir)))
    documents = []
    picked = sorted(rng.sample(range(len(candidates)), n))
    for module, i, column, truth, pool in (candidates[k] for k in picked):
        lines = sources[module].split("\n")
        start = _context_start(lines, i)
        choices = [truth, *rng.sample(pool, N_CHOICES - 1)]
        rng.shuffle(choices)
        documents.append(
            {
                "context": "".join(line + "\n" for line in lines[start:i]) + lines[i][:column],
                "choices": choices,
                "label": choices.index(truth),
                "module": module,
                "line": i + 1,
            }
        )
    return documents


def build_identifier_task(
    out_dir: str | Path = TASKS_DIR, n: int = 200, seed: int = 0, model_dir: str | Path = DEMO_MODEL_DIR
) -> Path:
    """Write ``stdlib_identifier.jsonl`` into ``out_dir`` (the YAML and its loader are shipped beside it)."""
    path = Path(out_dir) / DATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for document in build_documents(n, seed, model_dir):
            handle.write(json.dumps(document, ensure_ascii=False) + "\n")
    return path
