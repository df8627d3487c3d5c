"""`prunescope train-demo`: the recipe that made the bundled demo model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import PrunescopeError
from .common import SeedOpt, at_least, console, user_errors


@user_errors
def train_demo_command(
    # Resumed, not replaced, when it exists: the common --out name, its own help.
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Training folder (checkpoints + final model), resumed.")
    ] = Path("demo-train"),
    seed: SeedOpt = 0,
    minutes: Annotated[
        float, typer.Option(help="Training time budget the LR schedule is planned for.")
    ] = 40.0,
    resume: Annotated[bool, typer.Option(help="Resume from the last checkpoint in OUT.")] = True,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's).")] = None,
    device: Annotated[
        str,
        typer.Option("--device", help="cpu (the recipe's, default), cuda, mps or auto."),
    ] = "cpu",
) -> None:
    """Train the bundled demo model (OPT architecture) on this interpreter's standard library."""
    from ..demo.training import train_demo

    if minutes <= 0:
        raise PrunescopeError(f"--minutes must be > 0, got {minutes:g}")
    at_least(threads, 1, "--threads")
    if out.exists() and not out.is_dir():
        raise PrunescopeError(f"--out {str(out)!r} is a file, not a folder")
    from ..device import resolve_device

    resolved = str(resolve_device(device))  # an absent device fails in one line before any work
    final = train_demo(out, seed=seed, minutes=minutes, resume=resume, threads=threads, device=resolved)
    console.print(f"model written to {final}")
