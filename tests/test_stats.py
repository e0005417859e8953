"""Intervals and tests against known values (scipy/statsmodels references computed by hand)."""

import math

import numpy as np
import pytest

from cliff_lens.stats import (
    ALPHA,
    MIN_BOOTSTRAP_N,
    auroc_interval,
    bootstrap_mean,
    empirical_p_value,
    hanley_mcneil_se,
    holm_adjust,
    mcnemar_exact,
    rate,
    significant,
    wilson_interval,
)


def test_wilson_known_values():
    # statsmodels proportion_confint(15, 16, method="wilson") = (0.7167, 0.9889)
    lo, hi = wilson_interval(15, 16)
    assert lo == pytest.approx(0.71671, abs=1e-4)
    assert hi == pytest.approx(0.98888, abs=1e-4)
    # 0 of 10: lower bound 0, upper 0.2775
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    assert wilson_interval(16, 16)[1] == 1.0  # the estimate 1.0 lies inside its interval
    assert wilson_interval(9, 9)[1] == 1.0
    # 16 of 16: the Wilson lower bound n / (n + z^2)
    z2 = 1.959963984540054**2
    assert wilson_interval(16, 16)[0] == pytest.approx(16 / (16 + z2), abs=1e-9)
    with pytest.raises(ValueError, match="k <= n"):
        wilson_interval(3, 2)


def test_rate_counts_and_dict():
    r = rate([True, False, True, True])
    assert (r.k, r.n, r.value) == (3, 4, 0.75)
    d = r.to_dict()
    assert d["ci95"][0] < 0.75 < d["ci95"][1]
    assert rate([]).to_dict()["ci95"] == [None, None]


def test_bootstrap_mean_is_seeded_bca_and_covers_mean():
    xs = [0.1, 0.5, 0.9, 0.3, 0.7, 0.2, 0.6, 0.4, 0.8, 0.35, 0.55, 0.15]
    a, b = bootstrap_mean(xs), bootstrap_mean(xs)
    assert a == b and a.method == "BCa"
    assert a.low < a.mean < a.high and a.n == 12
    assert bootstrap_mean(xs, seed=1) != a  # the seed is used
    assert bootstrap_mean([None, float("nan")]).mean is None


def test_bootstrap_mean_is_scipy_bca():
    from scipy.stats import bootstrap

    xs = np.random.default_rng(3).exponential(size=25)
    ref = bootstrap((xs,), np.mean, n_resamples=2000, method="BCa", rng=np.random.default_rng(7))
    m = bootstrap_mean(xs.tolist(), seed=7)
    assert (m.low, m.high) == pytest.approx(
        (ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-12
    )


def test_no_bootstrap_interval_below_ten_values():
    assert MIN_BOOTSTRAP_N == 10
    few = bootstrap_mean([0.1, 0.5, 0.9, 0.3, 0.7, 0.2, 0.6, 0.4, 0.8])  # 9 values
    assert few.mean == pytest.approx(0.5) and few.n == 9 and few.method is None
    assert math.isnan(few.low) and math.isnan(few.high)
    assert few.to_dict()["ci95"] == [None, None] and "no interval" in str(few)
    # None / NaN do not count towards the 10
    assert math.isnan(bootstrap_mean([0.1] * 9 + [None, float("nan")]).low)
    assert math.isfinite(bootstrap_mean([0.1, 0.2] * 5).low)


def test_bootstrap_falls_back_to_percentile_where_bca_is_degenerate():
    # all values equal: BCa's acceleration is 0 / 0; the percentile interval has zero width
    c = bootstrap_mean([0.4] * 12)
    assert c.method == "percentile" and c.low == pytest.approx(0.4) and c.high == pytest.approx(0.4)


def test_significant_is_p_at_most_alpha():
    assert ALPHA == 0.05
    assert significant(0.05) and significant(1 / 20) and significant(0.0)
    assert not significant(0.0501) and not significant(None) and not significant(float("nan"))
    assert significant(0.1, alpha=0.1) and not significant(0.1)


def test_holm_adjust_hand_worked():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max -> 0.06
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm_adjust([]) == []
    assert holm_adjust([0.02]) == [0.02]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjust([0.1, 1.5])


def test_holm_adjust_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 13):
        p = rng.uniform(0, 0.2, size=m).tolist()
        ref = multitest.multipletests(p, method="holm")[1]
        assert holm_adjust(p) == pytest.approx(ref.tolist(), abs=1e-12)


def test_mcnemar_exact_known_value():
    # 15 vs 10 successes of 16, discordant 5 vs 0: exact two-sided p = 2 * 0.5**5 = 0.0625
    base = [1] * 15 + [0]
    abl = [1] * 10 + [0] * 6
    m = mcnemar_exact(base, abl)
    assert (m["a_only"], m["b_only"]) == (5, 0)
    assert m["p_value"] == pytest.approx(0.0625)
    assert mcnemar_exact([1, 0], [1, 0])["p_value"] == 1.0
    with pytest.raises(ValueError, match="paired"):
        mcnemar_exact([1], [1, 0])


def test_empirical_p_value():
    null = [0.9, 0.8, 0.7, 0.6]
    assert empirical_p_value(0.5, null) == pytest.approx(1 / 5)
    assert empirical_p_value(0.7, null) == pytest.approx(3 / 5)
    assert empirical_p_value(0.95, null, alternative="greater") == pytest.approx(1 / 5)


def test_empirical_p_value_floor_reaches_alpha_at_19_draws():
    assert empirical_p_value(0.1, [0.5] * 19) == pytest.approx(0.05) and significant(0.05)
    assert not significant(empirical_p_value(0.1, [0.5] * 18))
    # ties count as extreme; non-finite draws are dropped
    assert empirical_p_value(0.5, [0.5, 0.9, float("nan")]) == pytest.approx(2 / 3)


def test_hanley_mcneil_se_known_value():
    # A = 0.8, 50 + 50: Q1 = 2/3, Q2 = 0.64 * 2 / 1.8; var = (0.16 + 49 (Q1 - 0.64) + 49 (Q2 - 0.64)) / 2500
    q1, q2 = 0.8 / 1.2, 2 * 0.64 / 1.8
    want = math.sqrt((0.16 + 49 * (q1 - 0.64) + 49 * (q2 - 0.64)) / 2500)
    assert hanley_mcneil_se(0.8, 50, 50) == pytest.approx(want) == pytest.approx(0.0445, abs=1e-4)
    assert hanley_mcneil_se(1.0, 30, 30) == 0.0


def test_auroc_interval():
    auc, lo, hi = auroc_interval([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    assert auc == pytest.approx(8 / 9)
    assert lo <= auc <= hi
    # each end is where |auc - A0| = z SE(A0): the Hanley-McNeil test inverted
    z = 1.959963984540054
    for a0 in (lo, hi):
        assert abs(auc - a0) == pytest.approx(z * hanley_mcneil_se(a0, 3, 3), abs=1e-8)
    assert all(math.isnan(x) for x in auroc_interval([1, 1], [0.2, 0.3]))


def test_auroc_interval_does_not_collapse_at_perfect_separation():
    y = [0] * 30 + [1] * 30
    auc, lo, hi = auroc_interval(y, [float(i) for i in range(60)])
    assert auc == 1.0 and hi == 1.0
    assert 0.9 < lo < 1.0  # about 0.933
    assert 1 - lo == pytest.approx(1.959963984540054 * hanley_mcneil_se(lo, 30, 30), abs=1e-8)
    # perfectly wrong: the mirror image
    auc0, lo0, hi0 = auroc_interval(y, [float(i) for i in range(60)][::-1])
    assert auc0 == 0.0 and lo0 == 0.0 and hi0 == pytest.approx(1 - lo)
