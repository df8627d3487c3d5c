"""A sweep's folder is its live result: `points.jsonl` gets one line per finished (point, variant), appended
and fsynced as soon as the point completes, so a killed sweep loses at most the point in flight."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd

from .output import write_json

POINTS_FILE = "points.jsonl"


def read_points(path: Path) -> list[dict]:
    """Finished rows; a torn last line (killed mid-write) is cut off so the file stays append-only valid."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as handle:
            handle.truncate(keep)
        data = data[:keep]
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def append_point(path: Path, row: dict) -> None:
    line = (json.dumps(row, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def start_folder(out: Path, config) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_json(out / "config.json", {"fingerprint": config.fingerprint(), "config": config.asdict()})


def results_table(out: Path) -> pd.DataFrame:
    return pd.DataFrame(read_points(out / POINTS_FILE))


ALLOCATIONS_FOLDER = "allocations"


def save_point_allocation(
    out: Path, point: tuple[str, str, float], allocation: dict, layers: list[str]
) -> Path:
    """A non-uniform point's {module: sparsity} as allocations/<method>_<sparsity>.json (re-applicable
    with `--allocation PATH.json`; the sweep report draws them side by side)."""
    from .allocation import allocation_mapping, write_allocation_json

    method, pattern, sparsity = point
    folder = out / ALLOCATIONS_FOLDER / f"{method.replace('/', '_')}_{pattern.replace(':', '-')}_{sparsity:g}"
    folder.mkdir(parents=True, exist_ok=True)
    return write_allocation_json(allocation_mapping(allocation, layers), folder)


def point_allocations(out: Path) -> dict[str, dict[str, float]]:
    """The saved allocations by point label (`wanda+owl unstructured 0.7`), for the side-by-side heatmap."""
    found = {}
    for path in sorted((out / ALLOCATIONS_FOLDER).glob("*/allocation.json")):
        found[path.parent.name.replace("_", " ")] = json.loads(path.read_text())
    return found
