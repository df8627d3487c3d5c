"""The `prunescope` command line: one module per command in `commands/`, each imported only when it runs or
its own help is asked for; `prunescope --help`, `--version` and a mistyped name import none of them (nor
torch, transformers or pandas), so they answer at once."""

from __future__ import annotations

import platform
import sys
from typing import Annotated

import typer

from .commands.group import LazyCommand, LazyGroup
from .version import __version__


def _command(module: str, function: str, help: str) -> LazyCommand:
    return LazyCommand(f"{__package__}.commands.{module}", function, help)


# name -> where the command lives and the first paragraph of its docstring, which `prunescope --help` lists
# without importing it (tests/commands/test_startup.py checks that the two agree).
COMMANDS: dict[str, LazyCommand] = {
    "study": _command(
        "study", "study", "Prune a model and compare the dense, masked and sparse-format variants."
    ),
    "sweep": _command(
        "sweep", "sweep", "Map behaviour, size and FLOPs against sparsity; rerun the same command to resume."
    ),
    "bench": _command(
        "bench",
        "bench",
        "Time the sparse forward of every pruned layer shape and of the whole model against dense.",
    ),
    "inspect": _command(
        "inspect",
        "inspect",
        "Structure of a safetensors checkpoint from its headers: shapes, params, bytes, FLOPs per group.",
    ),
    "prune": _command(
        "prune",
        "prune_command",
        "Prune a checkpoint from disk and save it: magnitude/random row block by row block, "
        "wanda/sparsegpt decoder block by decoder block; memory is bounded by a block, not the model.",
    ),
    "evaluate": _command(
        "evaluate",
        "evaluate",
        "Perplexity (and behaviour vs --reference) of a model larger than memory, with accelerate offload.",
    ),
    "train-demo": _command(
        "train_demo",
        "train_demo_command",
        "Train the bundled demo model (OPT architecture) on this interpreter's standard library.",
    ),
    "sensitivity": _command(
        "sensitivity",
        "sensitivity",
        "Which blocks can take how much sparsity: prune each unit alone, compare with the dense model.",
    ),
}


class PrunescopeGroup(LazyGroup):
    """`prunescope` and the commands of the table above."""

    lazy = COMMANDS


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"prunescope {__version__} (Python {platform.python_version()})")
        raise typer.Exit()


def _group_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print prunescope's version and exit."
        ),
    ] = False,
) -> None:
    """The options of `prunescope` itself (before the command name)."""


def build_app() -> typer.Typer:
    """The app; each command's options are generated when the command is looked up, from the registries
    as they are then (a plug-in registered before that has its options on every command that takes its
    kind)."""
    app = typer.Typer(
        cls=PrunescopeGroup,
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        help="Study unstructured pruning of causal LMs: behaviour, structure, bytes, FLOPs, latency.",
    )
    app.callback()(_group_options)
    return app


app = build_app()


def import_everything() -> None:
    """Import every command and the public API now, as `import prunescope.cli` did before it imported on
    demand: for a caller that measures a command's own cost (checkpoint/memwatch.py) without its imports."""
    import prunescope

    for name in prunescope.__all__:
        getattr(prunescope, name)
    for command in COMMANDS.values():
        command.load()


def main() -> None:  # pragma: no cover
    sys.exit(app())
