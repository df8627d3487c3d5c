"""`prunescope sweep`: sparsity x method x pattern curves on one model copy, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import PrunescopeError
from .common import (
    CALIBRATION_HELP,
    CORPUS_HELP,
    MAX_TOKENS_HELP,
    PROTOCOL_HELP,
    SEEDS_HELP,
    SEQLEN_HELP,
    TEXT_COLUMN_HELP,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    NumFewshotOpt,
    ProgressOpt,
    SeedOpt,
    TasksLimitOpt,
    TasksOpt,
    TasksPathOpt,
    console,
    user_errors,
)
from .method_options import OwlLambdaOpt, OwlMOpt, RefineCyclesOpt, RefineThresholdOpt, RiaAlphaOpt


def parse_thresholds(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 <= v <= 1 for v in values):
        raise PrunescopeError(f"--thresholds must be a comma list of numbers in [0, 1], got {text!r}")
    return values


@user_errors
def sweep(
    model: ModelOpt = "demo",
    sparsity: Annotated[
        str, typer.Option(help="Range start:stop:step (stop included) or a comma list.")
    ] = "0.1:0.9:0.1",
    method: Annotated[
        str, typer.Option(help="Comma list: magnitude, random, wanda, sparsegpt, ria.")
    ] = "magnitude",
    allocation: Annotated[
        str, typer.Option(help="Comma list: uniform and/or owl (an axis: method label 'wanda+owl').")
    ] = "uniform",
    refine: Annotated[
        str, typer.Option(help="Comma list: none and/or dsnot (an axis: method label 'wanda+dsnot').")
    ] = "none",
    owl_m: OwlMOpt = 5.0,
    owl_lambda: OwlLambdaOpt = 0.08,
    ria_alpha: RiaAlphaOpt = 0.5,
    refine_cycles: RefineCyclesOpt = 50,
    refine_threshold: RefineThresholdOpt = 0.1,
    pattern: Annotated[
        str, typer.Option(help="Comma list: unstructured and/or N:M (e.g. 2:4).")
    ] = "unstructured",
    variants: Annotated[
        str, typer.Option(help="Comma list: masked and/or formats (csr, bitmask, ...).")
    ] = "masked",
    thresholds: Annotated[
        str, typer.Option(help="Top-1 agreement levels whose crossing is reported.")
    ] = "0.9,0.5",
    corpus: Annotated[str | None, typer.Option(help=CORPUS_HELP)] = None,
    text_column: Annotated[str | None, typer.Option(help=TEXT_COLUMN_HELP)] = None,
    ppl_protocol: Annotated[str | None, typer.Option(help=PROTOCOL_HELP)] = None,
    seqlen: Annotated[int | None, typer.Option(help=SEQLEN_HELP)] = None,
    max_tokens: Annotated[int | None, typer.Option(help=MAX_TOKENS_HELP)] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    calibration: Annotated[str | None, typer.Option(help=CALIBRATION_HELP)] = None,
    calib_samples: Annotated[int, typer.Option()] = 128,
    calib_seqlen: Annotated[int | None, typer.Option()] = None,
    include: Annotated[list[str] | None, typer.Option()] = None,
    exclude: Annotated[list[str] | None, typer.Option()] = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    seeds: Annotated[str | None, typer.Option(help=SEEDS_HELP)] = None,
    # A sweep's folder is resumed, not replaced: the same names as every command, their own help.
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Sweep folder (resumed when the configuration matches).")
    ] = Path("results/sweep"),
    overwrite: Annotated[
        bool, typer.Option("--overwrite/--no-overwrite", help="Start over in OUT, discarding what is there.")
    ] = False,
    latency: Annotated[bool, typer.Option(help="Also measure the pruned layers' speedup per point.")] = False,
    tasks: TasksOpt = None,
    tasks_path: TasksPathOpt = None,
    tasks_limit: TasksLimitOpt = None,
    num_fewshot: NumFewshotOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Map behaviour, size and FLOPs against sparsity; rerun the same command to resume."""
    from ..experiments.study import StudyConfig
    from ..experiments.sweep import SweepConfig, run_sweep
    from ..report.sweep import threshold_crossings

    base = StudyConfig(
        model=model,
        variants=["dense"],
        include=include or [],
        exclude=exclude or [],
        corpus=corpus,
        seqlen=seqlen,
        max_tokens=max_tokens,
        batch_size=batch_size,
        calibration=calibration,
        calib_samples=calib_samples,
        calib_seqlen=calib_seqlen,
        dtype=dtype,
        device=device,
        seed=seed,
        text_column=text_column,
        ppl_protocol=ppl_protocol,
        seeds=seeds,
        owl_m=owl_m,
        owl_lambda=owl_lambda,
        ria_alpha=ria_alpha,
        refine_cycles=refine_cycles,
        refine_threshold=refine_threshold,
        tasks=tasks or [],
        tasks_path=tasks_path,
        tasks_limit=tasks_limit,
        num_fewshot=num_fewshot,
    )
    config = SweepConfig(
        sparsities=sparsity,
        methods=method,
        patterns=pattern,
        variants=variants,
        thresholds=parse_thresholds(thresholds),
        base=base,
        latency=latency,
        allocations=allocation,
        refines=refine,
    )
    table = run_sweep(config, out, overwrite=overwrite, progress=progress)
    console.print(threshold_crossings(table, config.thresholds).to_string(index=False))
    console.print(f"{len(table)} rows in {out}/results.csv; curves and report.md beside it")
