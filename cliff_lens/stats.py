"""Intervals and tests for the rates and means cliff_lens reports.

Every rate comes with its ``n`` and a 95% interval; two settings measured on the same prompts
are compared paired. The functions here are the one place these are computed, each by the
library that implements it (scipy), so that only the edge cases are cliff_lens's own:

- :func:`wilson_interval` for a proportion (refusal rate, ASR, over-refusal, precision):
  ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``;
- :func:`bootstrap_mean` for a mean over prompts or rollouts (plateau, final, cliff, KL):
  ``scipy.stats.bootstrap(method="BCa")`` with a fixed seed, no interval below
  :data:`MIN_BOOTSTRAP_N` values;
- :func:`auroc_interval` for an AUROC: the Hanley-McNeil (1982) standard error, inverted as a
  score interval so that it does not collapse to a point at AUROC 0 or 1;
- :func:`mcnemar_exact` for paired binary outcomes (baseline vs ablated on the same prompts);
- :func:`empirical_p_value` for placing one value in a null distribution (top-k% heads vs
  random head sets), with the +1 correction so that it is never 0;
- :func:`holm_adjust` for Holm-Bonferroni adjusted p-values of a family of tests.

The decision rule is stated once: a p-value is significant when ``p <= alpha``
(:func:`significant`, :data:`ALPHA` = 0.05).

Results are :class:`Rate` / :class:`MeanCI` dataclasses whose ``to_dict`` is what
``results.json`` stores (a missing bound is ``None`` there).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ALPHA",
    "MIN_BOOTSTRAP_N",
    "Rate",
    "MeanCI",
    "wilson_interval",
    "rate",
    "bootstrap_mean",
    "mcnemar_exact",
    "empirical_p_value",
    "significant",
    "holm_adjust",
    "hanley_mcneil_se",
    "auroc_interval",
]

#: the significance level of every test cliff_lens reports (see :func:`significant`)
ALPHA = 0.05

#: fewer finite values than this get no bootstrap interval (NaN bounds, ``None`` in JSON): with a
#: handful of units the bootstrap distribution is too coarse and its intervals too narrow
MIN_BOOTSTRAP_N = 10


def significant(p: float | None, alpha: float = ALPHA) -> bool:
    """The decision rule of every test cliff_lens reports: ``p <= alpha``.

    ``p <= alpha`` (not ``<``) so that an empirical p-value ``1 / (1 + n)`` of a value more
    extreme than all ``n = 19`` null draws is significant at 0.05. A missing or non-finite ``p``
    is not significant.
    """
    if p is None or not math.isfinite(p):
        return False
    return float(p) <= alpha


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n``.

    Computed by ``scipy.stats.binomtest(k, n).proportion_ci(confidence_level=confidence,
    method="wilson")``. Edges: ``n == 0`` gives ``(nan, nan)`` (no data, no interval; ``None``
    in JSON); ``k == 0`` has lower bound exactly 0 and ``k == n`` upper bound exactly 1, so the
    estimate always lies inside its interval. Raises ``ValueError`` unless ``0 <= k <= n``.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n; got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    lo, hi = max(0.0, float(ci.low)), min(1.0, float(ci.high))
    return (0.0 if k == 0 else lo, 1.0 if k == n else hi)


@dataclass(frozen=True)
class Rate:
    """A proportion ``k / n`` with its 95% Wilson interval."""

    k: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float | None:
        """``k / n``; ``None`` when ``n == 0``."""
        return self.k / self.n if self.n else None

    def to_dict(self) -> dict:
        """JSON-ready: ``{"value", "k", "n", "ci95": [low, high]}`` (``None`` for a missing bound)."""
        return {"value": self.value, "k": self.k, "n": self.n, "ci95": [_num(self.low), _num(self.high)]}

    def __str__(self) -> str:
        if not self.n:
            return "n/a (n=0)"
        return f"{self.value:.2f} ({self.k}/{self.n}, 95% CI {self.low:.2f}-{self.high:.2f})"


def rate(outcomes: Sequence[bool | int]) -> Rate:
    """The rate of true outcomes with its Wilson interval."""
    k, n = int(sum(bool(o) for o in outcomes)), len(outcomes)
    lo, hi = wilson_interval(k, n)
    return Rate(k, n, lo, hi)


@dataclass(frozen=True)
class MeanCI:
    """A mean over ``n`` units with a 95% bootstrap interval (:func:`bootstrap_mean`).

    ``method`` is how the interval was computed: ``"BCa"``, ``"percentile"`` (where BCa is
    degenerate) or ``None`` (no interval: fewer than :data:`MIN_BOOTSTRAP_N` units). ``to_dict``
    leaves it out.
    """

    mean: float | None
    n: int
    low: float
    high: float
    method: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready: ``{"value", "n", "ci95": [low, high]}`` (``None`` for a missing bound)."""
        return {"value": self.mean, "n": self.n, "ci95": [_num(self.low), _num(self.high)]}

    def __str__(self) -> str:
        if self.mean is None:
            return "n/a (n=0)"
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return f"{self.mean:.2f} (n={self.n}, no interval)"
        return f"{self.mean:.2f} (n={self.n}, 95% CI {self.low:.2f}-{self.high:.2f})"


def bootstrap_mean(
    values: Sequence[float | None], *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> MeanCI:
    """Mean of the finite ``values`` with a seeded BCa bootstrap interval over them.

    The interval is ``scipy.stats.bootstrap((x,), np.mean, method="BCa")`` with ``n_boot``
    resamples drawn from ``np.random.default_rng(seed)``, so the same values and seed give the
    same interval. ``None`` and non-finite values are dropped first.

    Edges:

    - no finite value: ``mean`` is ``None`` and both bounds NaN;
    - fewer than :data:`MIN_BOOTSTRAP_N` (10) finite values: the mean with NaN bounds (``None``
      in JSON), no interval at all: a bootstrap of a few units is too coarse and too narrow to
      report;
    - BCa degenerate: when all values are equal (the jackknife acceleration is 0 / 0) or the
      bias correction is infinite (every resampled mean on one side of the estimate), scipy's
      BCa bounds are NaN; the percentile interval of the same resamples is returned instead
      (``method="percentile"``; for equal values it is the zero-width ``[v, v]``).
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return MeanCI(None, 0, math.nan, math.nan)
    mean = float(x.mean())
    if x.size < MIN_BOOTSTRAP_N:
        return MeanCI(mean, int(x.size), math.nan, math.nan)
    if np.all(x == x[0]):
        return MeanCI(mean, int(x.size), *_bootstrap(x, "percentile", n_boot, confidence, seed), "percentile")
    lo, hi = _bootstrap(x, "BCa", n_boot, confidence, seed)
    if math.isfinite(lo) and math.isfinite(hi):
        return MeanCI(mean, int(x.size), lo, hi, "BCa")
    return MeanCI(mean, int(x.size), *_bootstrap(x, "percentile", n_boot, confidence, seed), "percentile")


def _bootstrap(x: np.ndarray, method: str, n_boot: int, confidence: float, seed: int) -> tuple[float, float]:
    """``scipy.stats.bootstrap`` of the mean of ``x``: ``(low, high)``, NaN where scipy gives NaN."""
    from scipy.stats import bootstrap

    gen = np.random.default_rng(seed)
    seeded = {"rng": gen} if "rng" in inspect.signature(bootstrap).parameters else {"random_state": gen}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DegenerateDataWarning: handled by the caller's fallback
        res = bootstrap(
            (x,),
            np.mean,
            n_resamples=n_boot,
            confidence_level=confidence,
            method=method,
            vectorized=True,
            **seeded,
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mcnemar_exact(a: Sequence[bool | int], b: Sequence[bool | int]) -> dict:
    """Exact (binomial) McNemar test of paired binary outcomes ``a`` vs ``b`` on the same units.

    Returns the discordant counts (``a_only``: true under ``a`` only, ``b_only``) and the
    two-sided p-value; ``p_value`` is 1.0 when there are no discordant pairs.
    """
    if len(a) != len(b):
        raise ValueError(f"mcnemar_exact needs paired outcomes; got {len(a)} and {len(b)}")
    a_only = sum(1 for x, y in zip(a, b) if bool(x) and not bool(y))
    b_only = sum(1 for x, y in zip(a, b) if bool(y) and not bool(x))
    n = a_only + b_only
    if n == 0:
        p = 1.0
    else:
        from scipy.stats import binomtest

        p = float(binomtest(min(a_only, b_only), n, 0.5).pvalue)
    return {"n": len(a), "a_only": a_only, "b_only": b_only, "p_value": min(1.0, p)}


def empirical_p_value(value: float, null: Sequence[float], *, alternative: str = "less") -> float:
    """The fraction of the null draws at least as extreme as ``value``, with the +1 correction.

    ``(1 + #extreme) / (1 + #null)`` over the finite null draws (ties count as extreme):
    ``alternative="less"``: extreme means ``<= value`` (an ablation that lowers ASR at least as
    much); ``"greater"``: ``>= value``. Never 0: with ``n`` null draws the smallest p is
    ``1 / (1 + n)``, so at least 19 draws are needed to reach :data:`ALPHA` = 0.05 under the rule
    ``p <= alpha`` (:func:`significant`).
    """
    if alternative not in ("less", "greater"):
        raise ValueError(f"alternative must be 'less' or 'greater', not {alternative!r}")
    xs = [x for x in null if x is not None and math.isfinite(x)]
    extreme = sum(1 for x in xs if (x <= value if alternative == "less" else x >= value))
    return (1 + extreme) / (1 + len(xs))


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given.

    With the ``m`` p-values sorted ascending, the ``i``-th (1-based) is adjusted to
    ``max_{j <= i} min(1, (m - j + 1) * p_(j))``: monotone in the raw p-values and capped at 1,
    the same as ``statsmodels.stats.multitest.multipletests(p, method="holm")[1]``. Reject the
    hypotheses whose adjusted p is :func:`significant`; this controls the family-wise error rate.
    Raises ``ValueError`` for a p-value outside ``[0, 1]`` or not finite.
    """
    p = np.asarray([float(v) for v in pvalues], dtype=np.float64)
    if p.size == 0:
        return []
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError(f"holm_adjust needs finite p-values in [0, 1]; got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return [float(v) for v in out]


def hanley_mcneil_se(auroc: float, n_pos: int, n_neg: int) -> float:
    """Hanley and McNeil's (1982) standard error of an AUROC ``A`` from ``n_pos`` positives and
    ``n_neg`` negatives: ``sqrt((A(1-A) + (n_pos-1)(Q1-A^2) + (n_neg-1)(Q2-A^2)) / (n_pos n_neg))``
    with ``Q1 = A / (2 - A)``, ``Q2 = 2A^2 / (1 + A)``. It is 0 at ``A`` = 0 or 1."""
    a = float(auroc)
    if not 0.0 <= a <= 1.0 or n_pos < 1 or n_neg < 1:
        raise ValueError(
            f"hanley_mcneil_se needs 0 <= auroc <= 1 and n_pos, n_neg >= 1; got {a}, {n_pos}, {n_neg}"
        )
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(0.0, var))


def auroc_interval(
    labels: Sequence[int], scores: Sequence[float], *, confidence: float = 0.95
) -> tuple[float, float, float]:
    """AUROC with a Hanley-McNeil score interval: ``(auroc, low, high)``.

    The interval holds every ``A0`` in ``[0, 1]`` with ``|auroc - A0| <= z * SE(A0)``, where
    ``SE`` is :func:`hanley_mcneil_se` at ``A0`` (not at the estimate) and ``z`` the normal
    quantile of ``confidence``: the Hanley-McNeil test inverted, as the Wilson interval inverts
    the binomial one. Unlike the Wald interval ``auroc +- z SE(auroc)`` or a bootstrap, it does not
    collapse to ``[1, 1]`` at perfect separation (SE(1) = 0): with 30 positives and 30
    negatives at AUROC 1.0 it is about ``[0.93, 1.00]``. All NaN when only one class is present.
    """
    from scipy.optimize import brentq
    from scipy.stats import norm
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=np.float64)
    if len(set(y.tolist())) < 2:
        return (math.nan, math.nan, math.nan)
    auc = float(roc_auc_score(y, s))
    n_pos, n_neg = int((y == 1).sum()), int((y != 1).sum())
    z = float(norm.ppf(0.5 + confidence / 2))

    def outside(a0: float) -> float:  # > 0: A0 is rejected, <= 0: inside the interval
        return (auc - a0) ** 2 - (z * hanley_mcneil_se(a0, n_pos, n_neg)) ** 2

    def edge(grid: np.ndarray) -> float:
        """The first grid point (from grid[0] towards the estimate) inside, refined by brentq."""
        inside = np.array([outside(float(g)) <= 0 for g in grid])
        i = int(np.argmax(inside))  # grid ends at the estimate, which is always inside
        if i == 0:
            return float(grid[0])
        return float(brentq(outside, float(grid[i - 1]), float(grid[i]), xtol=1e-12))

    lo = edge(np.linspace(0.0, auc, 2001))
    hi = edge(np.linspace(1.0, auc, 2001))
    return (auc, lo, hi)


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
