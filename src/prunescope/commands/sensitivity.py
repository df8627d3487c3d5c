"""`prunescope sensitivity`: prune one block / projection type / module at a time; map the drift."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OutOpt,
    OverwriteOpt,
    ProgressOpt,
    SeedOpt,
    console,
    user_errors,
)
from .method_options import RefineCyclesOpt, RefineOpt, RefineThresholdOpt, RiaAlphaOpt


@user_errors
def sensitivity(
    model: ModelOpt = "demo",
    sparsity: Annotated[float, typer.Option(help="Sparsity of the one pruned unit [0, 1).")] = 0.5,
    method: Annotated[str, typer.Option(help="magnitude, random, wanda, sparsegpt or ria.")] = "wanda",
    scope: Annotated[str | None, typer.Option(help="global, layer or row (default: the method's).")] = None,
    pattern: Annotated[str, typer.Option(help="unstructured or N:M, e.g. 2:4.")] = "unstructured",
    by: Annotated[
        str, typer.Option(help="Unit pruned at a time: block, projection (type) or module.")
    ] = "block",
    include: Annotated[list[str] | None, typer.Option(help="Glob on module names to consider.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Glob on module names to leave out.")] = None,
    corpus: Annotated[str | None, typer.Option(help="Evaluation corpus (as in `study`).")] = None,
    seqlen: Annotated[int | None, typer.Option()] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Evaluation token budget.")] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    calibration: Annotated[str | None, typer.Option(help="Calibration text file, or 'builtin'.")] = None,
    calib_samples: Annotated[int, typer.Option()] = 128,
    calib_seqlen: Annotated[int | None, typer.Option()] = None,
    ria_alpha: RiaAlphaOpt = 0.5,
    refine: RefineOpt = "none",
    refine_cycles: RefineCyclesOpt = 50,
    refine_threshold: RefineThresholdOpt = 0.1,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    out: OutOpt = Path("results/sensitivity"),
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Which blocks can take how much sparsity: prune each unit alone, compare with the dense model."""
    from ..experiments.sensitivity import SensitivityConfig, run_sensitivity
    from ..experiments.study import StudyConfig
    from ..report.output import atomic_directory, check_output
    from ..report.sensitivity import HEATMAP, extremes, write_sensitivity

    options = {"max_tokens": max_tokens} if max_tokens is not None else {}
    base = StudyConfig(
        model=model,
        sparsity=sparsity,
        method=method,
        scope=scope,
        pattern=pattern,
        variants=["dense"],
        include=include or [],
        exclude=exclude or [],
        corpus=corpus,
        seqlen=seqlen,
        batch_size=batch_size,
        calibration=calibration,
        calib_samples=calib_samples,
        calib_seqlen=calib_seqlen,
        dtype=dtype,
        device=device,
        seed=seed,
        ria_alpha=ria_alpha,
        refine=refine,
        refine_cycles=refine_cycles,
        refine_threshold=refine_threshold,
        **options,
    )
    config = SensitivityConfig(base=base, by=by)
    check_output(out, overwrite)
    with atomic_directory(out, overwrite) as tmp:
        result = run_sensitivity(config, work_dir=tmp / "_work", progress=progress)
        shutil.rmtree(tmp / "_work", ignore_errors=True)
        write_sensitivity(result, tmp)
    ends = extremes(result.table)
    console.print(
        result.ranked()[["rank", "unit", "kl_mean", "top1_agreement", "perplexity"]].to_string(index=False)
    )
    console.print(f"most sensitive: {ends['most']}; least sensitive: {ends['least']}")
    console.print(f"results: {out}/ (sensitivity.csv, {HEATMAP}, report.md, run.json)")
