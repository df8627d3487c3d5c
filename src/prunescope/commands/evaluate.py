"""`prunescope evaluate`: behaviour of a checkpoint against a reference, offloaded when it is large."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import options
from .common import (
    ModelArg,
    OptionalOutOpt,
    OverwriteOpt,
    ProgressOpt,
    at_least,
    console,
    print_tasks,
    user_errors,
)


def _evaluate_options() -> list:
    # The evaluation set, tasks, dtype and device as in `study`; the model is the positional argument. Two
    # models of their own weights, no sparse formats: lm-eval scores both (no --tasks-variants).
    skip = ("model", "tasks_variants")
    return options.study_options(groups=("evaluation", "lm_eval", "load"), skip=skip, kinds=())


@options.with_options(_evaluate_options)
@user_errors
def evaluate(
    model: ModelArg,
    reference: Annotated[
        str | None, typer.Option(help="Checkpoint to compare against (top-1/top-5/KL).")
    ] = None,
    max_memory: Annotated[
        str | None,
        typer.Option(
            help="Memory cap per device (GPU, CPU), e.g. 2GB (10^9) or 2GiB; the rest is offloaded to disk. "
            "Default: accelerate's own budget (free memory of each device)."
        ),
    ] = None,
    offload_folder: Annotated[
        Path | None, typer.Option(help="Offload folder (default: a temporary one).")
    ] = None,
    out: OptionalOutOpt = None,
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
    **values,
) -> None:
    """Perplexity (and behaviour vs --reference) of a model larger than memory, with accelerate offload.

    Without --corpus the builtin texts are those `study` uses for --reference (its dense model), else for the
    model, or for a `prunescope prune` checkpoint the model it was pruned from; the protocol line names them.
    With --out: evaluation.json (and tasks.csv with --tasks)."""
    from ..device import choose_dtype, resolve_device
    from ..evaluation.offload import evaluate_offloaded
    from ..models import resolve_model
    from ..report.output import atomic_directory, check_output, write_json
    from ..util.units import parse_size

    corpus, text_column, ppl_protocol = values["corpus"], values["text_column"], values["ppl_protocol"]
    seqlen, max_tokens, batch_size = values["seqlen"], values["max_tokens"], values["batch_size"]
    dtype, device = values["dtype"], values["device"]
    tasks, tasks_path = values["tasks"], values["tasks_path"]
    tasks_limit, num_fewshot = values["tasks_limit"], values["num_fewshot"]
    at_least(batch_size, 1, "--batch-size")
    at_least(max_tokens, 2, "--max-tokens")
    at_least(seqlen, 2, "--seqlen")
    cap = parse_size(max_memory) if max_memory is not None else None
    resolved_device = resolve_device(device)  # an absent device or unknown dtype fails before any loading
    if dtype != "auto":
        choose_dtype(dtype, resolved_device)
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
        cap,
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
        device=device,
    )
    budget = f"max memory {max_memory} per device" if max_memory else "accelerate's memory budget"
    table = Table(title=f"{model} on {result.device} ({budget})")
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
    console.print(f"dtype {result.dtype_reason}", highlight=False)
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
