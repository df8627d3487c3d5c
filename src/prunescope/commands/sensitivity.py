"""`prunescope sensitivity`: prune one block / projection type / module at a time; map the drift."""

from __future__ import annotations

import shutil

from . import options
from .common import console, user_errors


def _sensitivity_options() -> list:
    # One unit at a time with the rest dense: no allocation; no variants, tasks or latency.
    chosen = options.study_options(
        skip=("allocation", "variants", "seeds", "latency", "per_token"),
        groups=("load", "prune", "evaluation", "calib", "run"),
        kinds=("method", "refinement"),
    )
    defaults = {
        "method": {"default": "wanda"},
        "sparsity": {"default": 0.5, "help": "Sparsity of the one pruned unit [0, 1)."},
    }
    unit = options.CliOption("by", str, "block", "Unit pruned at a time: block, projection (type) or module.")
    return [unit, *options.run_options("results/sensitivity"), *options.override(chosen, **defaults)]


@options.with_options(_sensitivity_options)
@user_errors
def sensitivity(**values) -> None:
    """Which blocks can take how much sparsity: prune each unit alone, compare with the dense model."""
    from ..experiments.sensitivity import SensitivityConfig, run_sensitivity
    from ..report.output import atomic_directory, check_output
    from ..report.sensitivity import HEATMAP, extremes, write_sensitivity

    unit, out, overwrite = values.pop("by"), values.pop("out"), values.pop("overwrite")
    progress, config = values.pop("progress"), values.pop("config")
    base = options.build_config(values, config, variants=["dense"])
    sensitivity_config = SensitivityConfig(base=base, by=unit)
    check_output(out, overwrite)
    with atomic_directory(out, overwrite) as tmp:
        result = run_sensitivity(sensitivity_config, work_dir=tmp / "_work", progress=progress)
        shutil.rmtree(tmp / "_work", ignore_errors=True)
        write_sensitivity(result, tmp)
    ends = extremes(result.table)
    console.print(
        result.ranked()[["rank", "unit", "kl_mean", "top1_agreement", "perplexity"]].to_string(index=False)
    )
    console.print(f"most sensitive: {ends['most']}; least sensitive: {ends['least']}")
    console.print(f"results: {out}/ (sensitivity.csv, {HEATMAP}, report.md, run.json)")
