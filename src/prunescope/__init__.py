"""prunescope: study unstructured weight pruning of Transformer causal LMs.

import prunescope
result = prunescope.study(model="demo", sparsity=0.3)
result.summary
"""

from __future__ import annotations

from .errors import PrunescopeError  # noqa: E402
from .experiments.study import StudyConfig, StudyResult, run_study  # noqa: E402
from .layers import classify, parameter_modules, prunable_layers  # noqa: E402
from .models import LoadedModel, load_model  # noqa: E402
from .pruning import PruneRecord, PruneSpec, prune, restore  # noqa: E402
from .structure import global_summary, group_table, layer_table  # noqa: E402
from .version import __version__  # noqa: E402


def study(
    config: StudyConfig | None = None, *, loaded: LoadedModel | None = None, progress: bool = True, **options
) -> StudyResult:
    """Run the dense -> masked -> sparse study; keyword options are `StudyConfig` fields."""
    return run_study(config or StudyConfig(**options), loaded=loaded, progress=progress)


__all__ = [
    "LoadedModel",
    "PruneRecord",
    "PruneSpec",
    "PrunescopeError",
    "StudyConfig",
    "StudyResult",
    "__version__",
    "classify",
    "global_summary",
    "group_table",
    "layer_table",
    "load_model",
    "parameter_modules",
    "prunable_layers",
    "prune",
    "restore",
    "study",
]
