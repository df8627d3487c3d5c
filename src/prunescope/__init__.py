"""prunescope: study unstructured weight pruning of Transformer causal LMs.

import prunescope
result = prunescope.study(model="demo", sparsity=0.3)
result.summary

The public names are imported on first use (PEP 562, as transformers does), so `import prunescope` and the
command line's `--help` do not pay for torch, transformers and pandas.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .errors import PrunescopeError
    from .experiments.study import StudyConfig, StudyResult
    from .layers import classify, parameter_modules, prunable_layers
    from .models import LoadedModel, load_model
    from .pruning import PruneRecord, PruneSpec, prune, restore
    from .structure import global_summary, group_table, layer_table

# public name -> the submodule that defines it (imported when the name is first used)
_LAZY_NAMES = {
    "PrunescopeError": "errors",
    "StudyConfig": "experiments.study",
    "StudyResult": "experiments.study",
    "classify": "layers",
    "parameter_modules": "layers",
    "prunable_layers": "layers",
    "LoadedModel": "models",
    "load_model": "models",
    "PruneRecord": "pruning",
    "PruneSpec": "pruning",
    "prune": "pruning",
    "restore": "pruning",
    "global_summary": "structure",
    "group_table": "structure",
    "layer_table": "structure",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    globals()[name] = value  # later uses find it without coming back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def study(
    config: StudyConfig | None = None, *, loaded: LoadedModel | None = None, progress: bool = True, **options
) -> StudyResult:
    """Run the dense -> masked -> sparse study; keyword options are `StudyConfig` fields."""
    from .experiments.study import StudyConfig, run_study

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
