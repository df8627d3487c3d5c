"""`prunescope study`: prune one model copy and compare its dense, masked and sparse-format variants."""

from __future__ import annotations

from rich.table import Table

from . import options
from .common import console, print_tasks, user_errors


def print_summary(summary, title: str, caption: str | None = None) -> None:
    """The summary table; `caption` (the perplexity protocol line) is printed under it, unwrapped.

    top-1 and KL carry their 95 % bootstrap interval over windows in brackets when summary.csv has it.
    """
    import math

    def plain(fmt: str, scale: float | None = None):
        return lambda row, name: fmt.format(row[name] * scale if scale else row[name])

    def interval(fmt: str, low: str, high: str):
        def cell(row, name) -> str:
            value = fmt.format(row[name])
            bounds = (row.get(low), row.get(high))
            if any(b is None or (isinstance(b, float) and math.isnan(b)) for b in bounds):
                return value
            return f"{value} [{fmt.format(bounds[0])}–{fmt.format(bounds[1])}]"

        return cell

    table = Table(title=title)
    # (column, header, cell): short headers keep the table within 120 columns with the intervals.
    columns = [
        ("variant", "variant", plain("{}")),
        ("stored_bytes", "MB", plain("{:.3f}", 1e-6)),
        ("sparsity", "sparsity", plain("{:.3f}")),
        ("pruned_layer_sparsity", "pruned", plain("{:.3f}")),
        ("flops_per_token", "MFLOP/tok", plain("{:.3f}", 1e-6)),
        ("top1_agreement", "top-1 [95% CI]", interval("{:.4f}", "top1_ci_low", "top1_ci_high")),
        ("top5_overlap", "top-5", plain("{:.4f}")),
        ("kl_mean", "KL [95% CI]", interval("{:.3g}", "kl_mean_ci_low", "kl_mean_ci_high")),
        ("perplexity", "ppl", plain("{:.3f}")),
    ]
    for name, header, _ in columns:
        table.add_column(header, justify="left" if name == "variant" else "right")
    for _, row in summary.iterrows():
        table.add_row(*[cell(row, name) for name, _, cell in columns])
    console.print(table)
    if caption:
        console.print(caption, soft_wrap=True, highlight=False)


def _study_options() -> list:
    return options.run_options("results/study") + options.study_options()


@options.with_options(_study_options)
@user_errors
def study(**values) -> None:
    """Prune a model and compare the dense, masked and sparse-format variants."""
    from ..experiments.study import run_study
    from ..experiments.sweep import method_label
    from ..report.output import atomic_directory, check_output
    from ..report.study import write_study

    out, overwrite, progress = values.pop("out"), values.pop("overwrite"), values.pop("progress")
    study_config = options.build_config(values, values.pop("config"))
    check_output(out, overwrite)
    with atomic_directory(out, overwrite) as tmp:
        result = run_study(study_config, work_dir=tmp / "_work", progress=progress, results_dir=tmp)
        import shutil

        shutil.rmtree(tmp / "_work", ignore_errors=True)
        write_study(result, tmp)
    spec = result.spec
    print_summary(
        result.summary,
        f"{study_config.model}: {method_label(spec.method, spec.allocation, spec.refine)} {spec.sparsity:g} "
        f"({spec.effective_scope}, {spec.pattern})",
        caption=result.run["evaluation"].get("protocol"),
    )
    print_tasks(result.tasks, result.run)
    console.print(f"results: {out}/ (report.md, summary.csv, layers.csv, groups.csv, run.json, plots)")
