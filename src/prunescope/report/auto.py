"""What the `auto` format chose per layer and why: auto.csv, one sentence (console and report.md) and a table.

`auto` times its candidates on each layer (formats/auto.py); the layer table keeps its choice, the fastest
dense and best sparse timings at the first token count and its reason (`auto_*` columns of layers.csv).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

AUTO_FILE = "auto.csv"


def auto_table(layers: pd.DataFrame) -> pd.DataFrame:
    """One row per layer `auto` timed (its first variant that has them): layer, choice, tokens, dense_us,
    best_sparse, best_sparse_us, reason. Empty when no variant used `auto`."""
    if "auto_choice" not in layers or layers["auto_choice"].isna().all():
        return pd.DataFrame()
    timed = layers[layers["auto_choice"].notna()]
    rows = timed[timed["variant"] == timed["variant"].iloc[0]]
    return pd.DataFrame(
        {
            "layer": rows["module"],
            "choice": rows["auto_choice"],
            "tokens": rows["auto_tokens"].astype(int),
            "dense_us": rows["auto_dense_s"] * 1e6,
            "best_sparse": rows["auto_sparse"],
            "best_sparse_us": rows["auto_sparse_s"] * 1e6,
            "reason": rows["auto_reason"],
        }
    ).reset_index(drop=True)


def auto_summary(layers: pd.DataFrame) -> str:
    """'auto kept 24/24 layers dense (sparse slower at 1 tokens: 24)', or what it chose where it did not;
    '' without `auto`."""
    table = auto_table(layers)
    if table.empty:
        return ""
    total = len(table)
    chosen = table[table["choice"] != "dense"]["choice"].value_counts()
    kept = total - int(chosen.sum())
    parts = [f"{name} for {count}/{total} layers" for name, count in chosen.items()]
    reasons = table[table["choice"] == "dense"]["reason"].value_counts()
    why = ", ".join(f"{reason}: {count}" for reason, count in reasons.items())
    clauses = [f"chose {', '.join(parts)}"] if parts else []
    if kept:
        clauses.append(f"kept {kept}/{total} layers dense" + (f" ({why})" if why else ""))
    return "auto " + "; ".join(clauses)


def write_auto(layers: pd.DataFrame, directory: Path) -> Path | None:
    """auto.csv beside the report; None (no file) without `auto`."""
    table = auto_table(layers)
    if table.empty:
        return None
    path = Path(directory) / AUTO_FILE
    table.to_csv(path, index=False)
    return path


def auto_section(layers: pd.DataFrame) -> list[str]:
    """report.md's section: the summary sentence and the per-layer table; [] without `auto`."""
    table = auto_table(layers)
    if table.empty:
        return []
    shown = pd.DataFrame(
        {
            "layer": table["layer"],
            "choice": table["choice"],
            "dense µs": table["dense_us"].map("{:.1f}".format),
            "best sparse µs (format)": [
                "" if not name else f"{us:.1f} ({name})"
                for us, name in zip(table["best_sparse_us"], table["best_sparse"], strict=True)
            ],
            "why": table["reason"],
        }
    )
    tokens = table["tokens"].iloc[0]
    align = ("left", "left", "right", "right", "left")
    return [
        "## auto: the format chosen per layer",
        "",
        f"{auto_summary(layers)}.",
        "",
        f"Times per call at {tokens} tokens: the fastest of auto's interleaved repeats, what it decides on "
        f"(`{AUTO_FILE}`; the `auto_*` columns of `layers.csv`).",
        "",
        shown.to_markdown(index=False, disable_numparse=True, colalign=align),
        "",
    ]
