"""Plain statistics of per-token and per-document values (numpy only, no torch): the definitions
docs/metrics.md gives, in one place, so tests can check each against its formula.

- percentiles: numpy's default linear interpolation at f·(N−1) of the sorted values (llama.cpp's
  `percentile` in tools/perplexity/perplexity.cpp);
- `paired_stderr`: llama.cpp's stderr of mean(x) − mean(y), sqrt(se_x² + se_y² − 2·cov), with
  se² = (mean x² − mean²)/(N−1) and cov = (mean xy − mean x·mean y)/(N−1) (tokens treated as independent);
- `window_bootstrap`: 95 % percentile intervals of ratio-of-sums statistics, resampling whole windows;
- `mcnemar_exact` and `flips`: paired comparison of per-document correctness (Dutta et al. 2024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def _values(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).ravel()


def percentile(x, q: float) -> float:
    """The q-th percentile (0..100), numpy's default linear interpolation; NaN for no values."""
    values = _values(x)
    return float(np.percentile(values, q)) if values.size else math.nan


def mean(x) -> float:
    values = _values(x)
    return float(values.mean()) if values.size else math.nan


def rms(x) -> float:
    values = _values(x)
    return float(np.sqrt(np.mean(values * values))) if values.size else math.nan


def stderr(x) -> float:
    """Standard error of the mean, sqrt(Var_pop(x)/(N−1)); NaN below two values."""
    values = _values(x)
    if values.size < 2:
        return math.nan
    return float(np.sqrt(np.mean((values - values.mean()) ** 2) / (values.size - 1)))


def covariance_of_means(x, y) -> float:
    """cov(x̄, ȳ) = (mean xy − mean x·mean y)/(N−1), computed as mean((x−x̄)(y−ȳ))/(N−1)."""
    a, b = _values(x), _values(y)
    if a.size < 2:
        return math.nan
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (a.size - 1))


def paired_stderr(x, y) -> float:
    """Standard error of mean(x) − mean(y) for paired values: sqrt(se_x² + se_y² − 2·cov) (llama.cpp)."""
    a, b = _values(x), _values(y)
    if a.size < 2:
        return math.nan
    variance = stderr(a) ** 2 + stderr(b) ** 2 - 2.0 * covariance_of_means(a, b)
    return float(math.sqrt(max(variance, 0.0)))


def correlation(x, y) -> float:
    """Pearson correlation; NaN when either side is constant or there are fewer than two values."""
    a, b = _values(x), _values(y)
    if a.size < 2:
        return math.nan
    da, db = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(np.sum(da * da)) * float(np.sum(db * db)))
    return float(np.sum(da * db) / denominator) if denominator > 0 else math.nan


# ------------------------------------------------------------------------------------------- bootstrap
def resample_counts(groups: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED):
    """Yield blocks of (block, groups) counts: how often each window is drawn in each resample.

    Each resample draws `groups` windows uniformly with replacement; the generator is numpy's PCG64 seeded
    with `seed`, so the intervals are reproducible. Blocks keep memory at ~8 MB whatever the window count.
    """
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, 1_000_000 // max(groups, 1)))
    done = 0
    while done < resamples:
        size = min(block, resamples - done)
        draws = rng.integers(0, groups, size=(size, groups))
        flat = (draws + np.arange(size)[:, None] * groups).ravel()
        yield np.bincount(flat, minlength=size * groups).reshape(size, groups).astype(np.float64)
        done += size


def percentile_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap replicates (percentile method); NaN if none."""
    values = _values(values)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def ratio_replicates(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> list[np.ndarray]:
    """Bootstrap replicates of Σ num / Σ den for each (num, den) pair of per-window sums.

    All pairs are indexed by the same windows and see the same resamples.
    """
    groups = len(pairs[0][0])
    out: list[list[np.ndarray]] = [[] for _ in pairs]
    for counts in resample_counts(groups, resamples, seed):
        for index, (num, den) in enumerate(pairs):
            with np.errstate(invalid="ignore", divide="ignore"):
                out[index].append((counts @ _values(num)) / (counts @ _values(den)))
    return [np.concatenate(parts) for parts in out]


@dataclass
class Intervals:
    kl_mean_ci_low: float = math.nan
    kl_mean_ci_high: float = math.nan
    top1_ci_low: float = math.nan
    top1_ci_high: float = math.nan
    ppl_ratio_ci_low: float = math.nan
    ppl_ratio_ci_high: float = math.nan


def window_bootstrap(
    compared_windows,
    kl,
    agree,
    scored_windows,
    nll_variant,
    nll_dense,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> Intervals:
    """Percentile-bootstrap intervals over windows (drawn with replacement, the same draws for all three):

    - mean KL = Σ kl / #compared and top-1 agreement = Σ agree / #compared, over the compared positions;
    - PPL(variant)/PPL(dense) = exp(Σ (nll_variant − nll_dense) / #scored), over the scored positions.
    """
    compared, scored = np.asarray(compared_windows), np.asarray(scored_windows)
    windows = np.union1d(compared, scored)
    if windows.size == 0:
        return Intervals()

    def per_window(ids, values) -> np.ndarray:
        return np.bincount(np.searchsorted(windows, ids), weights=_values(values), minlength=windows.size)

    count_c = per_window(compared, np.ones(compared.size))
    count_s = per_window(scored, np.ones(scored.size))
    diff = _values(nll_variant) - _values(nll_dense)
    kl_r, top_r, ppl_r = ratio_replicates(
        [
            (per_window(compared, kl), count_c),
            (per_window(compared, agree), count_c),
            (per_window(scored, diff), count_s),
        ],
        resamples,
        seed,
    )
    with np.errstate(over="ignore"):
        ppl_r = np.exp(ppl_r)
    return Intervals(
        *percentile_interval(kl_r, confidence),
        *percentile_interval(top_r, confidence),
        *percentile_interval(ppl_r, confidence),
    )


# -------------------------------------------------------------------------------------- per document
def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar test on the discordant pairs: min(1, 2·P(X ≤ min(b, c))), X ~ Bin(b+c, ½)."""
    b, c = int(b), int(c)
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass
class Flips:
    n: int  # documents scored by both
    correct_to_wrong: int  # b: correct for the baseline, wrong for the variant
    wrong_to_correct: int  # c: the reverse
    flips: float  # (b + c)/n
    mcnemar_p: float


def flips(baseline: dict, variant: dict) -> Flips:
    """Flips between per-document correctness maps (document key -> bool/0/1), on their common keys."""
    keys = [key for key in baseline if key in variant]
    b = sum(1 for key in keys if bool(baseline[key]) and not bool(variant[key]))
    c = sum(1 for key in keys if not bool(baseline[key]) and bool(variant[key]))
    n = len(keys)
    return Flips(n, b, c, (b + c) / n if n else math.nan, mcnemar_exact(b, c))
