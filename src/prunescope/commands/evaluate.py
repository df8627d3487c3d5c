"""`prunescope evaluate`: behaviour of a checkpoint against a reference, offloaded when it is large."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import (
    CORPUS_HELP,
    MAX_TOKENS_HELP,
    PROTOCOL_HELP,
    SEQLEN_HELP,
    TEXT_COLUMN_HELP,
    DtypeOpt,
    ModelArg,
    NumFewshotOpt,
    OptionalOutOpt,
    OverwriteOpt,
    ProgressOpt,
    TasksLimitOpt,
    TasksOpt,
    TasksPathOpt,
    at_least,
    console,
    print_tasks,
    user_errors,
)


@user_errors
def evaluate(
    model: ModelArg,
    reference: Annotated[
        str | None, typer.Option(help="Checkpoint to compare against (top-1/top-5/KL).")
    ] = None,
    max_memory: Annotated[
        str, typer.Option(help="Memory cap per device; the rest is offloaded to disk.")
    ] = "2GB",
    offload_folder: Annotated[
        Path | None, typer.Option(help="Offload folder (default: a temporary one).")
    ] = None,
    corpus: Annotated[str | None, typer.Option(help=CORPUS_HELP)] = None,
    text_column: Annotated[str | None, typer.Option(help=TEXT_COLUMN_HELP)] = None,
    ppl_protocol: Annotated[str | None, typer.Option(help=PROTOCOL_HELP)] = None,
    seqlen: Annotated[int | None, typer.Option(help=SEQLEN_HELP)] = None,
    max_tokens: Annotated[int | None, typer.Option(help=MAX_TOKENS_HELP)] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    dtype: DtypeOpt = "auto",
    out: OptionalOutOpt = None,
    overwrite: OverwriteOpt = False,
    tasks: TasksOpt = None,
    tasks_path: TasksPathOpt = None,
    tasks_limit: TasksLimitOpt = None,
    num_fewshot: NumFewshotOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Perplexity (and behaviour vs --reference) of a model larger than memory, with accelerate offload.

    With --out: evaluation.json (and tasks.csv with --tasks)."""
    from ..checkpoint.safetensors_io import parse_size
    from ..evaluation.offload import evaluate_offloaded
    from ..models import resolve_model
    from ..report.output import atomic_directory, check_output, write_json

    at_least(batch_size, 1, "--batch-size")
    at_least(max_tokens, 2, "--max-tokens")
    at_least(seqlen, 2, "--seqlen")
    for name in (model, reference):
        if name is not None:
            resolve_model(name)  # a bad path fails now, before the corpus is read or anything loaded
    if out is not None:
        check_output(out, overwrite)
    suite = None
    if tasks:  # lm-eval and every task are checked before any model loads
        from ..evaluation.tasks import TaskSuite

        suite = TaskSuite.prepare(tasks, tasks_path, tasks_limit, num_fewshot, batch_size)
    elif tasks_path or tasks_limit or num_fewshot is not None:
        from ..errors import PrunescopeError

        raise PrunescopeError("--tasks-path, --tasks-limit and --num-fewshot need --tasks")
    result = evaluate_offloaded(
        model,
        reference,
        parse_size(max_memory),
        offload_folder,
        corpus,
        seqlen,
        max_tokens,
        batch_size,
        dtype,
        progress,
        text_column=text_column,
        ppl_protocol=ppl_protocol,
        tasks=suite,
    )
    table = Table(title=f"{model} (max memory {max_memory} per device)")
    for name in ("model", "perplexity", "top1 agreement", "top5 overlap", "KL mean", "positions"):
        table.add_column(name, justify="left" if name == "model" else "right")
    if result.reference_behaviour is not None:
        r = result.reference_behaviour
        table.add_row(f"reference: {reference}", f"{r.perplexity:.3f}", "-", "-", "-", f"{r.positions:,}")
    b = result.behaviour
    compared = reference is not None
    table.add_row(
        str(model),
        f"{b.perplexity:.3f}",
        f"{b.top1_agreement:.4f}" if compared else "-",
        f"{b.top5_overlap:.4f}" if compared else "-",
        f"{b.kl_mean:.4g}" if compared else "-",
        f"{b.positions:,}",
    )
    console.print(table)
    console.print(result.protocol_line, soft_wrap=True, highlight=False)
    console.print(f"placement (modules per device): {result.placement}")
    task_table = None
    if suite is not None:
        import pandas as pd

        from ..evaluation.tasks import TASK_COLUMNS

        task_table = pd.DataFrame(result.tasks, columns=TASK_COLUMNS)
        print_tasks(task_table, {"tasks": result.tasks_info})
    if out is not None:
        with atomic_directory(out, overwrite) as tmp:
            write_json(tmp / "evaluation.json", result.as_dict())
            if task_table is not None:
                task_table.to_csv(tmp / "tasks.csv", index=False)
        console.print(f"written: {out}/evaluation.json")
