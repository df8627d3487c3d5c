"""What every command shares: the consoles, the one-line error handling, the shared option types."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from ..errors import PrunescopeError
from ..util.memory import is_out_of_memory, out_of_memory_message
from ..util.units import size_text  # noqa: F401 - the commands' one size format
from .options import CONFIG, OUT, OVERWRITE, PROGRESS, option_annotation

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
            # The message is text, not markup: "pip install 'prunescope[tasks]'" must keep its brackets.
            err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; nothing was written")
            raise typer.Exit(130) from None
        except (MemoryError, RuntimeError) as error:
            # torch.cuda.OutOfMemoryError is a RuntimeError; MPS and the CPU allocator raise plain ones.
            if not is_out_of_memory(error):
                raise
            message = out_of_memory_message(error)
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


try:  # typer >= 0.20 vendors click; its exceptions are what the parser raises
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import ClickException, NoArgsIsHelpError


class OneLineErrors(TyperGroup):
    """The command group whose usage errors (a value of the wrong type, an unknown option) are one line
    and exit 2, like every other bad input; `prunescope` alone still prints the help."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as error:
            error.show()
            sys.exit(error.exit_code)
        except ClickException as error:
            name = error.ctx.command_path if getattr(error, "ctx", None) else "prunescope"
            err_console.print(
                f"[bold red]error:[/] {error.format_message()} (see {name} --help)",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(error.exit_code)
        except typer.Abort:
            err_console.print("aborted; nothing was written")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


# Options a command declares itself but every command spells, explains and defaults alike: from the
# option groups (experiments/config.py), like the generated ones.
ModelOpt = option_annotation("model")
DtypeOpt = option_annotation("dtype")
DeviceOpt = option_annotation("device")
SeedOpt = option_annotation("seed")

ModelArg = Annotated[
    str,
    typer.Argument(
        help="'demo', a checkpoint folder, a .safetensors file beside a config.json, or a hub id "
        "(read from the local Hugging Face cache)."
    ),
]
# The options every command spells and means alike (one definition each, so help texts cannot drift).
OutOpt = OUT.parameter().annotation
OptionalOutOpt = OUT.replace(type=Path | None).parameter().annotation
OverwriteOpt = OVERWRITE.parameter().annotation
ProgressOpt = PROGRESS.parameter().annotation
ConfigOpt = CONFIG.parameter().annotation


def print_tasks(tasks, run: dict) -> None:
    """The main metric of each task per variant, named (acc or acc_norm), under the summary table."""
    if tasks is None or tasks.empty:
        return
    import pandas as pd

    from ..report.tasks import main_rows

    rows = main_rows(tasks, run)
    for _, row in rows.iterrows():
        stderr = f" +- {row['stderr']:.4f}" if pd.notna(row["stderr"]) else ""
        console.print(
            f"task {row['task']} ({row['metric']}, {row['n']} docs) {row['variant']}: "
            f"{row['value']:.4f}{stderr}",
            highlight=False,
        )


def at_least(value: float | None, minimum: float, option: str) -> None:
    """Numeric options are checked before any model is loaded; a bad one is one line."""
    if value is not None and value < minimum:
        raise PrunescopeError(f"{option} must be >= {minimum:g}, got {value:g}")
