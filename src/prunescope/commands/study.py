"""`prunescope study`: prune one model copy and compare its dense, masked and sparse-format variants."""

from __future__ import annotations

from . import options
from .common import console, print_table, print_tasks, task_plan_printer, user_errors


def print_summary(summary, title: str) -> None:
    """Cost, then behaviour, per variant (one table with the intervals would not fit 80 columns), then the
    rolling protocol's word and byte perplexities where it computed them; a legend under each."""
    from ..report import summary_cells as cells

    tables = [
        (title, cells.present(summary, cells.CONSOLE_COST), None),
        ("behaviour against dense", cells.present(summary, cells.CONSOLE_BEHAVIOUR), cells.INTERVALS_LEGEND),
        ("perplexity per token, word and byte", cells.protocol_perplexities(summary), None),
    ]
    for name, columns, note in tables:
        if columns:
            legend = "; ".join(filter(None, [cells.legend(columns), note]))
            rows = cells.rows(summary, columns, stacked=True)  # an interval or ± std under its value
            print_table(name, ["variant", *(c.header for c in columns)], rows, legend=legend)
    seeds = cells.seeds_note(summary)
    if seeds:
        console.print(seeds, highlight=False, soft_wrap=True)


def print_notes(result) -> None:
    """Under the tables: how perplexity was measured, on which tokens, and what `auto` chose."""
    from ..report.auto import auto_summary
    from ..report.run_text import evaluation_lines

    for line in [*evaluation_lines(result.run), auto_summary(result.layers)]:
        if line:
            console.print(line, highlight=False, soft_wrap=True)


def _study_options() -> list:
    return options.run_options("results/study") + options.study_options()


@options.with_options(_study_options)
@user_errors
def study(**values) -> None:
    """Prune a model and compare the dense, masked and sparse-format variants."""
    from ..experiments.study import run_study
    from ..report.output import atomic_directory, check_output
    from ..report.run_text import study_title
    from ..report.study import write_study

    out, overwrite, progress = values.pop("out"), values.pop("overwrite"), values.pop("progress")
    study_config = options.build_config(values, values.pop("config"))
    check_output(out, overwrite)
    before_tasks = task_plan_printer(study_config, study_config.variants)
    with atomic_directory(out, overwrite) as tmp:
        result = run_study(
            study_config,
            work_dir=tmp / "_work",
            progress=progress,
            results_dir=tmp,
            before_tasks=before_tasks,
        )
        import shutil

        shutil.rmtree(tmp / "_work", ignore_errors=True)
        write_study(result, tmp)
    print_summary(result.summary, study_title(result.run))
    print_notes(result)
    print_tasks(result.tasks, result.run)
    console.print(f"results: {out}/ (report.md, summary.csv, layers.csv, groups.csv, run.json, plots)")
