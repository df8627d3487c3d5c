"""Latency figures of a study or sweep point: the model pruned in place timed against its dense layers
(`latency.study_latency`), the section for report.md made by `report.latency.latency_report`.

    latency_section(model, record=record, pruned=names)   # while the model is pruned in place
    latency_section(model, spec=spec, pruned=names)       # on a dense model (pruned, then restored)
    latency_section(result, model=dense)                  # after run_study

Pruning, restoring and the dense layers rebuilt from a prune record live here, above `latency/`, which
never imports `pruning` or `report`.  The model is held once: only its pruned layers are copied.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from ..errors import PrunescopeError
from ..latency import LatencyConfig


def _unwrap_model(source) -> nn.Module:
    # A LoadedModel carries the module in `.model`; an HF model's own `.model` is its inner decoder.
    return source if isinstance(source, nn.Module) else source.model


def dense_layers(model: nn.Module, record) -> Callable[[str], nn.Module]:
    """`dense_layer(name)` of `model` pruned in place by `record` (a `PruneRecord`): a copy of that pruned
    layer with what pruning changed restored, so only the layers timed are ever held twice."""
    from ..pruning.record import restore_layer

    def dense_layer(name: str) -> nn.Module:
        layer = copy.deepcopy(model.get_submodule(name))
        restore_layer(layer, record.changes[name])
        return layer

    return dense_layer


@contextmanager
def pruned_in_place(model: nn.Module, names: list[str], spec, calibration=None) -> Iterator:
    """Prune `model`'s `names` by `spec` in place and yield the `PruneRecord`; the dense weights come back
    on exit, whatever happened (the workbench's way: one model copy, no second one to compare with)."""
    from ..pruning import prune, restore

    record = prune(model, {n: model.get_submodule(n) for n in names}, spec, calibration, progress=False)
    try:
        yield record
    finally:
        restore(model, record)


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

    def measured(record) -> dict:
        result = study_latency(
            dense_layers(source, record), source, pruned, formats=formats, config=config, on_step=on_step
        )
        return latency_report(result, plot_dir=plot_dir)

    if record is not None:
        return measured(record)
    if spec is None:
        raise PrunescopeError("latency_section needs a study result, a prune record or a prune spec")
    if spec.needs_calibration and not calibration:
        raise PrunescopeError(f"latency of a {spec.method} model needs its calibration data again")
    with pruned_in_place(source, pruned, spec, calibration) as record:
        return measured(record)
