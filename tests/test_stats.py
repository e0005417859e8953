"""Intervals and tests against known values (scipy/statsmodels references computed by hand)."""

import math

import pytest

from cliff_lens.stats import (
    auroc_interval,
    bootstrap_mean,
    empirical_p_value,
    mcnemar_exact,
    rate,
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
    with pytest.raises(ValueError, match="k <= n"):
        wilson_interval(3, 2)


def test_rate_counts_and_dict():
    r = rate([True, False, True, True])
    assert (r.k, r.n, r.value) == (3, 4, 0.75)
    d = r.to_dict()
    assert d["ci95"][0] < 0.75 < d["ci95"][1]
    assert rate([]).to_dict()["ci95"] == [None, None]


def test_bootstrap_mean_is_seeded_and_covers_mean():
    xs = [0.1, 0.5, 0.9, 0.3, 0.7, 0.2]
    a, b = bootstrap_mean(xs), bootstrap_mean(xs)
    assert a == b
    assert a.low < a.mean < a.high and a.n == 6
    assert bootstrap_mean([None, float("nan")]).mean is None
    # constant data has a zero-width interval
    c = bootstrap_mean([0.4] * 5)
    assert c.low == pytest.approx(0.4) and c.high == pytest.approx(0.4)


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


def test_auroc_interval():
    auc, lo, hi = auroc_interval([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    assert auc == pytest.approx(8 / 9)
    assert lo <= auc <= hi
