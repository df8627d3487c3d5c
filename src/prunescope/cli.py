"""The `prunescope` command line: assembles the typer app from `commands/`, one module per command."""

from __future__ import annotations

import sys

import typer

from .commands import bench, evaluate, inspect, prune, sensitivity, study, sweep, train_demo
from .commands.common import OneLineErrors

app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Study unstructured pruning of causal LMs: behaviour, structure, bytes, FLOPs, latency.",
)
app.command("study")(study.study)
app.command("sweep")(sweep.sweep)
app.command("bench")(bench.bench)
app.command("inspect")(inspect.inspect)
app.command("prune")(prune.prune_command)
app.command("evaluate")(evaluate.evaluate)
app.command("train-demo")(train_demo.train_demo_command)
app.command("sensitivity")(sensitivity.sensitivity)


def main() -> None:  # pragma: no cover
    sys.exit(app())
