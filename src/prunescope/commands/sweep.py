"""`prunescope sweep`: sparsity x method x pattern curves on one model copy, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, user_errors


@user_errors
def sweep(
    model: Annotated[str, typer.Option("--model", "-m", help="Hub id, local directory, or 'demo'.")] = "demo",
    sparsity: Annotated[
        str, typer.Option(help="Range start:stop:step (stop included) or a comma list.")
    ] = "0.1:0.9:0.1",
    method: Annotated[
        str, typer.Option(help="Comma list: magnitude, random, wanda, sparsegpt.")
    ] = "magnitude",
    pattern: Annotated[
        str, typer.Option(help="Comma list: unstructured and/or N:M (e.g. 2:4).")
    ] = "unstructured",
    variants: Annotated[
        str, typer.Option(help="Comma list: masked and/or formats (csr, bitmask, ...).")
    ] = "masked",
    thresholds: Annotated[
        str, typer.Option(help="Top-1 agreement levels whose crossing is reported.")
    ] = "0.9,0.5",
    corpus: Annotated[str | None, typer.Option(help=".txt or .jsonl evaluation corpus.")] = None,
    seqlen: Annotated[int | None, typer.Option()] = None,
    max_tokens: Annotated[int, typer.Option()] = 4096,
    batch_size: Annotated[int, typer.Option()] = 8,
    calibration: Annotated[str | None, typer.Option()] = None,
    calib_samples: Annotated[int, typer.Option()] = 128,
    calib_seqlen: Annotated[int | None, typer.Option()] = None,
    include: Annotated[list[str] | None, typer.Option()] = None,
    exclude: Annotated[list[str] | None, typer.Option()] = None,
    dtype: Annotated[str, typer.Option()] = "auto",
    device: Annotated[str, typer.Option()] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option(help="Sweep folder (resumed when the configuration matches).")] = Path(
        "results/sweep"
    ),
    overwrite: Annotated[bool, typer.Option(help="Start over in OUT, discarding what is there.")] = False,
    latency: Annotated[bool, typer.Option(help="Also measure the pruned layers' speedup per point.")] = False,
    progress: Annotated[bool, typer.Option()] = True,
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
    )
    config = SweepConfig(
        sparsities=sparsity,
        methods=method,
        patterns=pattern,
        variants=variants,
        thresholds=[float(t) for t in thresholds.split(",") if t.strip()],
        base=base,
        latency=latency,
    )
    table = run_sweep(config, out, overwrite=overwrite, progress=progress)
    console.print(threshold_crossings(table, config.thresholds).to_string(index=False))
    console.print(f"{len(table)} rows in {out}/results.csv; curves and report.md beside it")
