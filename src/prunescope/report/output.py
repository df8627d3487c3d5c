"""Results folders that appear whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import PrunescopeError


def check_output(out: str | Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not overwrite:
        raise PrunescopeError(f"output folder {str(out)!r} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise PrunescopeError(f"output path {str(out)!r} exists and is not a folder")
    # The folder is made at the end, after the work: a place it cannot be made must fail now.
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PrunescopeError(f"cannot create output folder {str(out)!r}: {str(ancestor)!r} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PrunescopeError(f"cannot create output folder {str(out)!r}: {str(ancestor)!r} is not writable")
    return out


@contextmanager
def atomic_directory(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it is renamed to `out`, on any failure removed.

    A crash, an error or Ctrl-C therefore never leaves a half-written `out` (an old `out` stays intact).
    """
    out = check_output(out, overwrite)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as error:
        detail = error.strerror or error
        raise PrunescopeError(f"cannot create output folder {str(out)!r}: {detail}") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def write_json(path: str | Path, data: object) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
