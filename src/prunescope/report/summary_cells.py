"""The cells of the summary tables, one rule for the console and report.md: a value in its unit, with its 95 %
bootstrap interval, or, where several seeds ran, the mean ± the standard deviation over the seeds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import pandas as pd

from ..util.units import parse_size

MB = 1 / parse_size("1MB")  # the tables' one size unit (decimal, as the CLI prints sizes)
MFLOP = 1e-6


@dataclass(frozen=True)
class Column:
    """One summary column as a table shows it."""

    key: str  # the summary.csv column
    header: str  # on the console: short (the legend under the table explains it)
    heading: str  # in report.md
    fmt: str
    scale: float = 1.0
    interval: tuple[str, str] | None = None  # the (low, high) columns of its 95 % bootstrap interval
    legend: str = ""  # what a short console header means, under the table


TOP1 = Column(
    "top1_agreement", "top-1", "top-1 agreement", ".4f", interval=("top1_ci_low", "top1_ci_high"),
    legend="top-1 agreement with dense",
)  # fmt: skip
TOP5 = Column("top5_overlap", "top-5", "top-5 overlap", ".4f")
KL = Column(
    "kl_mean", "KL", "KL (nats/token)", ".4g", interval=("kl_mean_ci_low", "kl_mean_ci_high"),
    legend="mean KL(dense ‖ variant), nats/token",
)  # fmt: skip
PERPLEXITY = Column("perplexity", "ppl", "perplexity", ".3f")
# PPL(variant)/PPL(dense): exp of ln_ppl_ratio, added by `with_ppl_ratio`.
PPL_RATIO = Column(
    "ppl_ratio", "ppl/dense", "PPL / dense PPL", ".4f", interval=("ppl_ratio_ci_low", "ppl_ratio_ci_high")
)
POSITIONS = Column("positions", "positions", "positions", ".0f")
SECONDS = Column("seconds", "eval s", "eval (s)", ".2f")
PARAMS = Column("params", "M params", "params (M)", ".3f", 1e-6)
SPARSITY = Column("sparsity", "sparsity", "sparsity (all)", ".4f")
PRUNED_SPARSITY = Column(
    "pruned_layer_sparsity", "pruned", "sparsity (pruned layers)", ".4f", legend="pruned layers' sparsity"
)
STORED = Column("stored_bytes", "MB", "stored (MB)", ".3f", MB, legend="stored size, MB")
FLOPS = Column("flops_per_token", "MFLOP", "executed MFLOP/token", ".3f", MFLOP, legend="executed per token")
NONZERO_FLOPS = Column("nonzero_flops_per_token", "nonzero MFLOP", "nonzero MFLOP/token", ".3f", MFLOP)
# The rolling protocol's perplexities (lm-eval's definitions, evaluation/protocols.py).
WORD_PPL = Column("word_perplexity", "word ppl", "word perplexity", ".5g")
BYTE_PPL = Column("byte_perplexity", "byte ppl", "byte perplexity", ".4f")
BITS_PER_BYTE = Column("bits_per_byte", "bits/byte", "bits per byte", ".4f")

# report.md's tables, and the console's narrower ones.
BEHAVIOUR = [TOP1, TOP5, KL, PERPLEXITY, PPL_RATIO, POSITIONS, SECONDS]
COST = [PARAMS, SPARSITY, PRUNED_SPARSITY, STORED, FLOPS, NONZERO_FLOPS]
CONSOLE_BEHAVIOUR = [TOP1, TOP5, KL, PERPLEXITY]
CONSOLE_COST = [STORED, SPARSITY, PRUNED_SPARSITY, FLOPS]
INTERVALS_LEGEND = "[a–b]: 95 % bootstrap interval over windows"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def mean_std_text(mean: float, std: float, stacked: bool = False) -> str:
    """'50.40 ± 0.31': the standard deviation to two significant digits, the mean to the same decimal;
    `stacked`: the ± part on a line of its own (narrow console columns)."""
    decimals = min(max(1 - math.floor(math.log10(std)), 0), 8)
    separator = "\n" if stacked else " "
    return f"{mean:.{decimals}f}{separator}± {std:.{decimals}f}"


def interval_text(value: float, low, high, fmt: str, stacked: bool = False) -> str:
    """'0.9155 [0.9101, 0.9203]'; `stacked`: '0.9155' over '[0.9101–0.9203]'; the value alone when the
    interval is missing."""
    if _missing(low) or _missing(high):
        return format(value, fmt)
    if stacked:
        return f"{value:{fmt}}\n[{low:{fmt}}–{high:{fmt}}]"
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def cell(row: Mapping, column: Column, stacked: bool = False) -> str:
    """One cell: '' when the row lacks the value; the mean ± std where its seeds disagree (a row over several
    seeds whose std is 0 shows the one value they share); else the value and its interval. `stacked` (the
    console): the ± or the interval on a second line, so columns stay narrow."""
    value = row.get(column.key)
    if _missing(value):
        return ""
    value *= column.scale
    std = row.get(f"{column.key}_std")
    if row.get("n_seeds", 1) > 1 and not _missing(std) and std > 0:
        return mean_std_text(value, std * column.scale, stacked)
    if column.interval is None:
        return format(value, column.fmt)
    low, high = (row.get(key) for key in column.interval)
    scaled = [None if _missing(b) else b * column.scale for b in (low, high)]
    return interval_text(value, *scaled, column.fmt, stacked)


def with_ppl_ratio(summary: pd.DataFrame) -> pd.DataFrame:
    """`ppl_ratio` = exp(ln_ppl_ratio), and over seeds its standard deviation by the delta method
    (sd of exp(x) ≈ exp(mean x) · sd x), so the ratio is one more column for `cell`."""
    if "ln_ppl_ratio" not in summary:
        return summary
    ratio = summary["ln_ppl_ratio"].map(math.exp, na_action="ignore")
    extra = {"ppl_ratio": ratio}
    if "ln_ppl_ratio_std" in summary:
        extra["ppl_ratio_std"] = ratio * summary["ln_ppl_ratio_std"]
    return summary.assign(**extra)


def values_only(columns: Sequence[Column]) -> list[Column]:
    """The columns without their intervals (tables of many rows: the sweep's)."""
    return [replace(c, interval=None) for c in columns]


def present(summary: pd.DataFrame, columns: Sequence[Column]) -> list[Column]:
    """The columns that hold at least one value in `summary`."""
    return [c for c in columns if c.key in summary and summary[c.key].notna().any()]


def rows(
    summary: pd.DataFrame,
    columns: Sequence[Column],
    keys: Sequence[str] = ("variant",),
    stacked: bool = False,
) -> list[list[str]]:
    """Each row's `keys` as they are, then its cells."""
    return [
        [str(row[k]) for k in keys] + [cell(row, c, stacked) for c in columns]
        for row in summary.to_dict("records")
    ]


def markdown(summary: pd.DataFrame, columns: Sequence[Column], keys: Sequence[str] = ("variant",)) -> str:
    """A report.md table: keys left-aligned, cells as `cell` writes them, right-aligned."""
    columns = present(summary, columns)
    frame = pd.DataFrame(rows(summary, columns, keys), columns=[*keys, *(c.heading for c in columns)])
    align = ["left"] * len(keys) + ["right"] * len(columns)
    return frame.to_markdown(index=False, disable_numparse=True, colalign=align)


def protocol_perplexities(summary: pd.DataFrame) -> list[Column]:
    """Token, word and byte perplexity and bits per byte where the protocol computed them (rolling); []
    for a protocol with the token perplexity only."""
    extra = present(summary, [WORD_PPL, BYTE_PPL, BITS_PER_BYTE])
    return [PERPLEXITY, *extra] if extra else []


def seeds_note(summary: pd.DataFrame) -> str | None:
    """Under several seeds, what '±' means; None otherwise."""
    if "n_seeds" not in summary or not (summary["n_seeds"] > 1).any():
        return None
    row = summary[summary["n_seeds"] > 1].iloc[0]
    seeds = str(row["seeds"]).replace(",", ", ")
    return (
        f"± std: sample standard deviation over seeds {seeds} ({row['n_seeds']} seeds); a value without ± "
        "is the same for every seed (each seed's rows: seeds.csv)"
    )


def legend(columns: Sequence[Column]) -> str:
    """What the console's short headers mean, for the ones that need it."""
    return "; ".join(f"{c.header}: {c.legend}" for c in columns if c.legend)
