"""Each statistic of evaluation/statistics.py against a plain re-implementation of its formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prunescope.evaluation import statistics as stats
from tests.helpers import plain_percentile


def llama_mean_and_stderr(values) -> tuple[float, float]:
    """llama.cpp's mean_and_uncertainty from running sums (without its N > 10 guard)."""
    n = len(values)
    total = sum(float(v) for v in values)
    total2 = sum(float(v) * float(v) for v in values)
    mean = total / n
    return mean, math.sqrt(max(total2 / n - mean * mean, 0.0) / (n - 1))


def llama_covariance(a, b) -> float:
    n = len(a)
    sa, sb = sum(map(float, a)), sum(map(float, b))
    sab = sum(float(x) * float(y) for x, y in zip(a, b, strict=True))
    return (sab / n - (sa / n) * (sb / n)) / (n - 1)


@pytest.fixture
def values():
    rng = np.random.default_rng(3)
    return rng.gamma(0.5, 0.02, size=997)


@pytest.mark.parametrize("q", [0, 1, 10, 50, 90, 99, 99.9, 100])
def test_percentiles_are_linear_interpolation_of_sorted_values(values, q):
    assert stats.percentile(values, q) == pytest.approx(plain_percentile(values, q), rel=1e-12, abs=1e-15)


def test_empty_inputs_are_nan():
    assert math.isnan(stats.percentile([], 50)) and math.isnan(stats.mean([])) and math.isnan(stats.rms([]))
    assert math.isnan(stats.paired_stderr([1.0], [2.0])) and math.isnan(stats.correlation([1.0], [1.0]))
    assert math.isnan(stats.correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))  # a constant side


def test_mean_rms_stderr(values):
    assert stats.mean(values) == pytest.approx(sum(values) / len(values), rel=1e-12)
    assert stats.rms(values) == pytest.approx(math.sqrt(sum(v * v for v in values) / len(values)), rel=1e-12)
    assert stats.stderr(values) == pytest.approx(llama_mean_and_stderr(values)[1], rel=1e-9)


def test_paired_stderr_and_correlation_follow_llama_cpp():
    rng = np.random.default_rng(5)
    dense = rng.exponential(2.0, size=2000)
    variant = dense + rng.normal(0.05, 0.3, size=2000)
    se_v, se_d = llama_mean_and_stderr(variant)[1], llama_mean_and_stderr(dense)[1]
    cov = llama_covariance(variant, dense)
    expected = math.sqrt(se_v**2 + se_d**2 - 2 * cov)
    assert stats.paired_stderr(variant, dense) == pytest.approx(expected, rel=1e-9)
    # the same thing: the standard error of the per-token differences
    diff = variant - dense
    assert stats.paired_stderr(variant, dense) == pytest.approx(
        np.std(diff) / math.sqrt(len(diff) - 1), rel=1e-9
    )
    assert stats.correlation(variant, dense) == pytest.approx(cov / (se_v * se_d), rel=1e-9)
    assert stats.correlation(variant, dense) == pytest.approx(np.corrcoef(variant, dense)[0, 1], rel=1e-12)
    assert stats.paired_stderr(dense, dense) == 0.0


def plain_bootstrap(windows, kl, agree, nll_v, nll_d, resamples=200, seed=0):
    """One resample at a time: draw windows with replacement, pool their tokens, recompute each statistic."""
    ids = sorted(set(windows))
    rng = np.random.default_rng(seed)
    kls, tops, ratios = [], [], []
    for _ in range(resamples):
        drawn = rng.integers(0, len(ids), size=len(ids))
        pooled = np.concatenate([np.flatnonzero(np.asarray(windows) == ids[i]) for i in drawn])
        kls.append(kl[pooled].sum() / pooled.size)
        tops.append(agree[pooled].sum() / pooled.size)
        ratios.append(math.exp((nll_v[pooled] - nll_d[pooled]).sum() / pooled.size))
    return [tuple(np.percentile(x, [2.5, 97.5])) for x in (kls, tops, ratios)]


def test_window_bootstrap_resamples_whole_windows():
    rng = np.random.default_rng(1)
    windows = np.repeat(np.arange(12) * 3 + 7, rng.integers(5, 40, size=12))  # unequal windows, odd ids
    n = windows.size
    kl = rng.gamma(0.5, 0.02, size=n)
    agree = (rng.random(n) < 0.9).astype(float)
    nll_d = rng.exponential(2.0, size=n)
    nll_v = nll_d + rng.normal(0.02, 0.2, size=n)
    got = stats.window_bootstrap(windows, kl, agree, windows, nll_v, nll_d, resamples=200, seed=0)
    (kl_lo, kl_hi), (top_lo, top_hi), (ppl_lo, ppl_hi) = plain_bootstrap(windows, kl, agree, nll_v, nll_d)
    assert (got.kl_mean_ci_low, got.kl_mean_ci_high) == pytest.approx((kl_lo, kl_hi), rel=1e-10)
    assert (got.top1_ci_low, got.top1_ci_high) == pytest.approx((top_lo, top_hi), rel=1e-10)
    assert (got.ppl_ratio_ci_low, got.ppl_ratio_ci_high) == pytest.approx((ppl_lo, ppl_hi), rel=1e-10)
    assert got.kl_mean_ci_low < kl.mean() < got.kl_mean_ci_high
    # fixed seed: the same intervals every time
    again = stats.window_bootstrap(windows, kl, agree, windows, nll_v, nll_d, resamples=200, seed=0)
    assert again == got


def test_window_bootstrap_blocks_equal_one_draw():
    """Many windows are drawn in blocks; the blocks continue one generator, as a single draw would."""
    blocks = list(stats.resample_counts(400_001, resamples=5, seed=2))
    assert len(blocks) == 3  # 2 + 2 + 1 resamples of 400,001 windows
    draws = np.random.default_rng(2).integers(0, 400_001, size=(5, 400_001))
    counts = np.stack([np.bincount(row, minlength=400_001) for row in draws])
    assert np.array_equal(np.concatenate(blocks), counts)


def plain_mcnemar(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    tail = math.fsum(math.comb(n, k) * 0.5**n for k in range(0, min(b, c) + 1))
    return min(1.0, 2.0 * tail)


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 5), (5, 0), (3, 3), (1, 9), (12, 30), (200, 170), (7, 0)])
def test_mcnemar_exact(b, c):
    assert stats.mcnemar_exact(b, c) == pytest.approx(plain_mcnemar(b, c), rel=1e-12)
    scipy_stats = pytest.importorskip("scipy.stats")
    if b + c:
        assert stats.mcnemar_exact(b, c) == pytest.approx(
            scipy_stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9
        )


def test_known_mcnemar_values():
    assert stats.mcnemar_exact(0, 5) == 2 / 32
    assert stats.mcnemar_exact(4, 4) == 1.0


def test_flips_count_discordant_documents_on_common_keys():
    dense = {0: True, 1: True, 2: False, 3: False, 4: True, 5: True}
    pruned = {0: True, 1: False, 2: True, 3: False, 4: False, 6: True}  # 5 and 6 not shared
    result = stats.flips(dense, pruned)
    assert (result.n, result.correct_to_wrong, result.wrong_to_correct) == (5, 2, 1)
    assert result.flips == pytest.approx(3 / 5)
    assert result.mcnemar_p == pytest.approx(plain_mcnemar(2, 1))
