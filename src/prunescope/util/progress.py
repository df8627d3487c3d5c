"""Progress bars on stderr (rich), silent when disabled or when stderr is not a terminal in tests."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def track(
    items: Iterable[T], description: str, enabled: bool = True, total: int | None = None
) -> Iterator[T]:
    if not enabled:
        yield from items
        return
    with make_progress() as progress:
        yield from progress.track(items, total=total, description=description)
