"""Loader of the bundled task's documents, found by path so the task works from any working directory.

lm-eval resolves a YAML's `dataset_kwargs.data_files` against the current directory; a `custom_dataset`
function beside the YAML resolves against this file instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load(**_: Any) -> dict:
    import datasets

    path = Path(__file__).with_name("stdlib_identifier.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}
