"""What every command shares: the consoles, the one-line error handling, the shared option types."""

from __future__ import annotations

import functools
import os
import sys
from typing import Annotated

import typer
from rich.console import Console

from ..errors import PrunescopeError

# Rich falls back to 80 columns when stdout is not a terminal (CI, files): too narrow for the tables.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)


def _quiet_libraries() -> None:
    # Our own progress bars cover long steps; transformers' per-file bars would only add noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def user_errors(fn):
    """One line on stderr and exit code 2 for bad input; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except PrunescopeError as error:
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; nothing was written")
            raise typer.Exit(130) from None

    return wrapper


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Hub id, local directory, or 'demo'.")]
DtypeOpt = Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16.")]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps.")]

ModelArg = Annotated[
    str, typer.Argument(help="Checkpoint folder (or .safetensors file beside a config.json).")
]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing output folder.")]
ProgressOpt = Annotated[bool, typer.Option(help="Show progress bars.")]


def size_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    return str(n)
