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

from ..errors import PrunescopeError
from ..util.memory import is_out_of_memory, out_of_memory_message
from ..util.units import size_text  # noqa: F401 - the commands' one size format
from .group import err_console
from .options import CONFIG, OUT, OVERWRITE, PROGRESS, option_annotation

# Rich falls back to 80 columns when stdout is not a terminal (CI, files); the tables fit 80 columns, but
# a log reads better 120 wide. COLUMNS, when set, is the width wherever the output goes.
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120)


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
        note = f" {row['note']}" if isinstance(row.get("note"), str) and row["note"] else ""  # reused rows
        console.print(
            f"task {row['task']} ({row['metric']}, {row['n']} docs) {row['variant']}: "
            f"{row['value']:.4f}{stderr}{note}",
            highlight=False,
        )


def task_plan_printer(config, variants: list[str]):
    """What prints, just before lm-eval starts (--tasks), the variants it runs on and why the others are
    not scored again; None without --tasks."""
    if not config.lm_eval.tasks:
        return None
    from ..evaluation.tasks import plan_line
    from ..experiments.quantize import with_twins
    from ..formats import lossless_formats

    listed = with_twins(variants, config.quant.quantize)
    line = plan_line(listed, config.lm_eval.tasks_variants, lossless_formats(listed))
    return lambda: console.print(line, highlight=False, soft_wrap=True)


def print_table(
    title: str | None,
    headers: list[str],
    rows: list[list[str]],
    left: int = 1,
    legend: str | None = None,
) -> None:
    """A table that fits the console without cutting a number short.

    Every column is at least as wide as its widest cell line (a cell may stack lines: a value over its
    interval), so only the headers wrap, at their spaces, when the console is narrow; the first `left`
    columns are text, the others right-aligned numbers. `legend` (what short headers mean) goes under it.
    """
    from rich.table import Table
    from rich.text import Text

    widths = [
        max((Text.from_markup(line).cell_len for row in rows for line in row[i].splitlines()), default=1)
        for i in range(len(headers))
    ]
    # A console narrower than the numbers themselves (3 = a column's padding and rule): no minimum, so
    # rich folds digits onto a second line rather than cropping the table.
    fits = sum(width + 3 for width in widths) + 1 <= console.width
    if title:  # a line of its own: as a table title it would wrap to the (narrow) table's width
        console.print(Text(title, style="bold"), soft_wrap=True)
    table = Table()
    for index, (header, width) in enumerate(zip(headers, widths, strict=True)):
        justify = "left" if index < left else "right"
        table.add_column(header, justify=justify, min_width=width if fits else None, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if legend:  # plain text: "[a, b]" is not markup
        console.print(legend, highlight=False, soft_wrap=True, markup=False)


def at_least(value: float | None, minimum: float, option: str) -> None:
    """Numeric options are checked before any model is loaded; a bad one is one line."""
    if value is not None and value < minimum:
        raise PrunescopeError(f"{option} must be >= {minimum:g}, got {value:g}")
