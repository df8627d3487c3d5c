"""The `prunescope` command line: assembles the typer app from `commands/`, one module per command."""

from __future__ import annotations

import sys

import typer

from .commands import bench, evaluate, inspect, prune, sensitivity, study, sweep, train_demo
from .commands.common import OneLineErrors
from .commands.options import refresh

COMMANDS = {
    "study": study.study,
    "sweep": sweep.sweep,
    "bench": bench.bench,
    "inspect": inspect.inspect,
    "prune": prune.prune_command,
    "evaluate": evaluate.evaluate,
    "train-demo": train_demo.train_demo_command,
    "sensitivity": sensitivity.sensitivity,
}


def build_app() -> typer.Typer:
    """The app with every command's options generated now, from the registries as they are (a plug-in
    registered before this call has its options on every command that takes its kind)."""
    app = typer.Typer(
        cls=OneLineErrors,
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        help="Study unstructured pruning of causal LMs: behaviour, structure, bytes, FLOPs, latency.",
    )
    for name, command in COMMANDS.items():
        app.command(name)(refresh(command) if hasattr(command, "__options__") else command)
    return app


app = build_app()


def main() -> None:  # pragma: no cover
    sys.exit(app())
