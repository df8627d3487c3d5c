"""`prunescope train-demo`: the recipe that made the bundled demo model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, user_errors


@user_errors
def train_demo_command(
    out: Annotated[Path, typer.Option(help="Training folder (checkpoints + final model).")] = Path(
        "demo-train"
    ),
    seed: Annotated[int, typer.Option()] = 0,
    minutes: Annotated[
        float, typer.Option(help="Training time budget the LR schedule is planned for.")
    ] = 40.0,
    resume: Annotated[bool, typer.Option(help="Resume from the last checkpoint in OUT.")] = True,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's).")] = None,
) -> None:
    """Train the bundled demo model (OPT architecture) on this interpreter's standard library."""
    from ..demo.training import train_demo

    final = train_demo(out, seed=seed, minutes=minutes, resume=resume, threads=threads)
    console.print(f"model written to {final}")
