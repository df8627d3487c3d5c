"""Calibration seeds: parse `--seeds 0,1,2` and reduce per-seed rows to mean and standard deviation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import PrunescopeError

if TYPE_CHECKING:
    import pandas as pd


def parse_seeds(value: str | int | list | tuple | None) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; each seed once. None or '' -> []."""
    if value is None:
        return []
    if isinstance(value, int):
        items: list = [value]
    elif isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
    else:
        items = list(value)
    try:
        seeds = [int(item) for item in items]
    except (TypeError, ValueError):
        raise PrunescopeError(f"seeds must be a comma list of integers, got {value!r}") from None
    if len(set(seeds)) != len(seeds):
        raise PrunescopeError("each seed may be listed once")
    return seeds


def aggregate_seeds(table: pd.DataFrame, keys: list[str], seed_column: str = "seed") -> pd.DataFrame:
    """One row per `keys` group: numeric columns averaged over seeds, plus `<column>_std` (sample standard
    deviation, ddof = 1; 0 for a single seed) for each of them, `seeds` listing them and `n_seeds`."""
    import pandas as pd  # here, not at the top: parse_seeds builds the command line's options

    numeric = [
        c
        for c in table.columns
        if c not in keys
        and c != seed_column
        and pd.api.types.is_numeric_dtype(table[c])
        and not pd.api.types.is_bool_dtype(table[c])
    ]
    rows = []
    for _, group in table.groupby(keys, sort=False, dropna=False):
        row = group.iloc[0].to_dict()
        row.pop(seed_column, None)
        for column in numeric:
            row[column] = group[column].mean()
        for column in numeric:
            row[f"{column}_std"] = group[column].std(ddof=1) if len(group) > 1 else 0.0
        row["seeds"] = ",".join(str(s) for s in group[seed_column])
        row["n_seeds"] = len(group)
        rows.append(row)
    return pd.DataFrame(rows)
