"""`prunescope sweep`: sparsity x method x pattern curves on one model copy, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import PrunescopeError
from ..experiments.config import SWEEP_VARIANTS
from . import options
from .common import ConfigOpt, ProgressOpt, console, print_table, task_plan_printer, user_errors


def parse_thresholds(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 <= v <= 1 for v in values):
        raise PrunescopeError(f"--thresholds must be a comma list of numbers in [0, 1], got {text!r}")
    return values


# The sweep's axes: the study's options of the same names as comma lists (each value a curve).
AXES = {
    "sparsity": {
        "type": str,
        "default": "0.1:0.9:0.1",
        "help": "Range start:stop:step (stop included) or a comma list.",
    },
    "method": {"help": "Comma list of methods (an axis)."},
    "allocation": {"help": "Comma list of allocations (an axis: method label 'wanda+owl')."},
    "refine": {"help": "Comma list: none and/or dsnot (an axis: method label 'wanda+dsnot')."},
    "pattern": {"help": "Comma list: unstructured and/or N:M (e.g. 2:4)."},
    "variants": {
        "default": ",".join(SWEEP_VARIANTS),
        "help": "Comma list: masked and/or formats (csr, bitmask, ...); a lossless format's behaviour and "
        "task scores are masked's (same predictions up to float rounding), its size and FLOPs its own.",
    },
    "latency": {"help": "Also measure the pruned layers' speedup per point."},
}


def print_points(table) -> None:
    """Each (method, pattern)'s points in the study's units (MB, MFLOP/token), one table each."""
    from ..report import summary_cells as cells
    from ..report.sweep import CONSOLE_POINTS, point_rows

    points = point_rows(table)
    headers = ["sparsity", "variant"]
    legend = "sparsity: target sparsity of the pruned layers; " + cells.legend(CONSOLE_POINTS)
    for (method, pattern), rows in points.groupby(["method", "pattern"], sort=False):
        shown = cells.present(rows, CONSOLE_POINTS)
        cell_rows = cells.rows(rows, shown, keys=("target_sparsity", "variant"), stacked=True)
        print_table(f"{method} ({pattern})", [*headers, *(c.header for c in shown)], cell_rows, left=2)
    console.print(legend, highlight=False, soft_wrap=True)
    seeds = cells.seeds_note(points)
    if seeds:
        console.print(seeds, highlight=False, soft_wrap=True)


def print_crossings(table, thresholds: list[float]) -> None:
    """The lowest swept sparsity where top-1 agreement falls below each threshold."""
    from ..report.sweep import threshold_crossings

    crossings = threshold_crossings(table, thresholds)
    rows = [[str(value) for value in row] for row in crossings.itertuples(index=False)]
    print_table("where top-1 agreement collapses", list(crossings.columns), rows, left=len(crossings.columns))


def _sweep_options() -> list:
    return options.override(options.study_options(skip=("per_token",)), **AXES)


@options.with_options(_sweep_options)
@user_errors
def sweep(
    thresholds: Annotated[
        str, typer.Option(help="Top-1 agreement levels whose crossing is reported.")
    ] = "0.9,0.5",
    # A sweep's folder is resumed, not replaced: the same names as every command, their own help.
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Sweep folder (resumed when the configuration matches).")
    ] = Path("results/sweep"),
    overwrite: Annotated[
        bool, typer.Option("--overwrite/--no-overwrite", help="Start over in OUT, discarding what is there.")
    ] = False,
    config: ConfigOpt = None,
    progress: ProgressOpt = True,
    **values,
) -> None:
    """Map behaviour, size and FLOPs against sparsity; rerun the same command to resume."""
    from ..experiments.sweep import SweepConfig, run_sweep

    axes = {name: values.pop(name) for name in AXES}
    base = options.build_config(values, config, variants=["dense"])
    sweep_config = SweepConfig(
        sparsities=axes["sparsity"],
        methods=axes["method"],
        patterns=axes["pattern"],
        variants=axes["variants"],
        thresholds=parse_thresholds(thresholds),
        base=base,
        latency=axes["latency"],
        allocations=axes["allocation"],
        refines=axes["refine"],
    )
    before_tasks = task_plan_printer(base, ["dense", *sweep_config.variants])
    table = run_sweep(sweep_config, out, overwrite=overwrite, progress=progress, before_tasks=before_tasks)
    if not table.empty:
        print_points(table)
        print_crossings(table, sweep_config.thresholds)
    console.print(f"{len(table)} rows in {out}/results.csv; curves and report.md beside it")
