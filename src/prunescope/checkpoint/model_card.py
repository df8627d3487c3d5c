"""The model card (README.md) of a checkpoint `prunescope prune` writes, rendered from its prune record.

The source model's own card and measured metrics are not copied into a pruned checkpoint
(`safetensors_io.NOT_COPIED`): they describe the dense model. This card says what the checkpoint is instead:
its source, the pruning request, how many weights were removed, the layout, the prunescope version, the date
and the command that wrote it. It states no quality figure: none was measured on the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

CARD_NAME = "README.md"

LAYOUTS = {
    "hf": "Hugging Face safetensors: loads with `AutoModelForCausalLM.from_pretrained` (pruned weights are "
    "stored as zeros)",
    "sparse": "prunescope's sparse layout (kept values + bitmask): loads with "
    "`prunescope.checkpoint.load_sparse`",
}


def _pruning_rows(spec: dict, record: dict) -> list[tuple[str, str]]:
    pruned, total = record.get("pruned_weights", 0), record.get("prunable_weights", 0)
    share = record.get("pruned_layer_sparsity", 0.0)
    rows = [
        ("method", f"`{spec['method']}`"),
        ("target sparsity", f"{spec['sparsity']:g} of the prunable weights"),
        ("pruned", f"{pruned:,} of {total:,} prunable weights ({share:.4f})"),
        ("scope", str(spec.get("scope"))),
        ("pattern", str(spec.get("pattern"))),
        ("allocation", spec.get("allocation", "uniform")),
        ("refinement", spec.get("refine", "none")),
    ]
    if "calib_samples" in spec:
        rows.append(("calibration", f"{spec['calib_samples']} windows of {spec['calib_seqlen']} tokens"))
    rows.append(("seed", str(spec.get("seed"))))
    quant = record.get("quantization")
    if quant:
        rows.append(("quantization", f"{quant['name']} {quant['method']}, values: {quant['values']}"))
    return rows


def model_card(record: dict, layout: str) -> str:
    """The card of one output folder (`layout` hf or sparse) from `prune.json`'s `record`."""
    spec, source = record["spec"], record["source"]
    where = f" ({record['source_path']})" if record.get("source_path") else ""
    rows = [
        ("source model", f"`{source}`{where}"),
        *_pruning_rows(spec, record),
        ("layout", f"{layout}: {LAYOUTS.get(layout, layout)}"),
        ("prunescope", str(record.get("prunescope", ""))),
        ("written", str(record.get("created", ""))),
    ]
    how = f"{spec['method']} {spec['sparsity']:g} ({spec.get('scope')}, {spec.get('pattern')})"
    lines = [
        f"# {source}, pruned: {how}",
        "",
        f"A checkpoint written by `prunescope prune` from `{source}`. It is not the source model: the "
        "source's model card and measured metrics were not copied, and nothing here was measured on this "
        "checkpoint (`prunescope evaluate` measures it).",
        "",
        "| | |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
    ]
    if record.get("command"):
        lines += ["Written by:", "", "```", record["command"], "```", ""]
    lines += [
        "Every pruned layer with its weight and pruned counts (and an allocation's per-block sparsities) is "
        "in `prune.json`, in the folder `prunescope prune --out` named.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(folder: str | Path, record: dict, layout: str) -> Path:
    path = Path(folder) / CARD_NAME
    path.write_text(model_card(record, layout), encoding="utf-8")
    return path
