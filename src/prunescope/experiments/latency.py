"""Latency figures of a study or sweep point: a dense and a pruned copy of the model timed layer by layer
(`latency.study_latency`), the section for report.md made by `report.latency.latency_report`.

    latency_section(model, record=record, pruned=names)   # while the model is pruned in place
    latency_section(model, spec=spec, pruned=names)       # on a dense model (prunes a copy)
    latency_section(result, model=dense)                  # after run_study

Pruning and restoring copies lives here, above `latency/`, which never imports `pruning` or `report`.
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from ..errors import PrunescopeError
from ..latency import LatencyConfig


def _unwrap_model(source) -> nn.Module:
    # A LoadedModel carries the module in `.model`; an HF model's own `.model` is its inner decoder.
    return source if isinstance(source, nn.Module) else source.model


def latency_section(
    result_or_model,
    *,
    model: nn.Module | None = None,
    record=None,
    spec=None,
    pruned: list[str] | None = None,
    calibration=None,
    formats: list[str] | str | None = None,
    config: LatencyConfig | None = None,
    plot_dir: str | Path | None = None,
    on_step=None,
) -> dict:
    """Latency figures for a study report: {"markdown": str, "rows": [...], "model_rows": [...], ...}.

    - `latency_section(result, model=loaded.model)` after `run_study` (the model is dense again);
    - `latency_section(model, record=record, pruned=names)` while the model is pruned in place;
    - `latency_section(model, spec=spec, pruned=names)` on a dense model.
    """
    from ..latency.section import study_latency
    from ..layers import prunable_layers
    from ..pruning import prune, restore
    from ..report.latency import latency_report

    if hasattr(result_or_model, "spec") and hasattr(result_or_model, "pruned_layers"):
        if model is None:
            raise PrunescopeError("latency_section(result, model=...) needs the study's (dense) model")
        spec = spec or result_or_model.spec
        pruned = pruned or list(result_or_model.pruned_layers)
        if formats is None:
            formats = list(result_or_model.config.variants)
        source = _unwrap_model(model)
    else:
        source = _unwrap_model(result_or_model)
    pruned = pruned or list(prunable_layers(source))
    if record is not None:
        pruned_model, dense_model = source, copy.deepcopy(source)
        restore(dense_model, record)
    elif spec is not None:
        if spec.needs_calibration and not calibration:
            raise PrunescopeError(f"latency of a {spec.method} model needs its calibration data again")
        dense_model, pruned_model = source, copy.deepcopy(source)
        prune(
            pruned_model,
            {n: pruned_model.get_submodule(n) for n in pruned},
            spec,
            calibration,
            progress=False,
        )
    else:
        raise PrunescopeError("latency_section needs a study result, a prune record or a prune spec")
    result = study_latency(dense_model, pruned_model, pruned, formats=formats, config=config, on_step=on_step)
    return latency_report(result, plot_dir=plot_dir)
