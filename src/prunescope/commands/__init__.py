"""CLI commands beyond `study` and `train-demo`, one module per feature; each decorates `cli.app`."""

from . import (
    bench,  # noqa: F401
    large,  # noqa: F401
    sweep,  # noqa: F401
)
