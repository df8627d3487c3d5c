"""The allocation file itself: a JSON object {pruned module name: sparsity}, read and hashed (no pruning here,
so `PruneSpec` can validate a path without importing the allocation machinery)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ...errors import PrunescopeError

SUFFIX = ".json"

_cache: dict[tuple[str, int, int], tuple[dict[str, float], str]] = {}


def is_allocation_file(value: str) -> bool:
    return str(value).lower().endswith(SUFFIX)


def mapping_hash(mapping: dict[str, float]) -> str:
    """SHA-256 of the mapping in a canonical form (sorted keys, floats as JSON writes them)."""
    text = json.dumps(mapping, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def load_mapping(path: str | os.PathLike) -> tuple[dict[str, float], str]:
    """The file's mapping and its hash; an unreadable file or a bad value is a one-line PrunescopeError."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        raise PrunescopeError(f"allocation file {path} does not exist") from None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _cache:
        return _cache[key]
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PrunescopeError(f"allocation file {path} is not valid JSON: {str(error)[:80]}") from None
    if not isinstance(data, dict) or not data:
        raise PrunescopeError(f"allocation file {path} must be a JSON object {{module name: sparsity}}")
    mapping: dict[str, float] = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise PrunescopeError(
                f"allocation file {path}: sparsity of {name} must be in [0, 1), got {value!r}"
            )
        mapping[name] = float(value)
    result = (mapping, mapping_hash(mapping))
    _cache[key] = result
    return result
