"""CLI commands beyond `study` and `train-demo`, one module per feature; each decorates `cli.app`."""
from . import bench  # noqa: F401
from . import large  # noqa: F401
from . import sweep  # noqa: F401
