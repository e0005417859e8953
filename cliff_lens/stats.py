"""Intervals and tests for the rates and means cliff_lens reports.

Every rate comes with its ``n`` and a 95% interval; two settings measured on the same prompts
are compared paired. The functions here are the one place these are computed:

- :func:`wilson_interval` for a proportion (refusal rate, ASR, over-refusal, precision);
- :func:`bootstrap_mean` for a mean over prompts or rollouts (plateau, final, cliff), a
  percentile bootstrap with a fixed seed so that results are reproducible;
- :func:`mcnemar_exact` for paired binary outcomes (baseline vs ablated on the same prompts);
- :func:`empirical_p_value` for placing one value in a null distribution (top-k% heads vs
  random head sets), with the +1 correction so that it is never 0.

Results are :class:`Rate` / :class:`MeanCI` dataclasses whose ``to_dict`` is what
``results.json`` stores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Rate",
    "MeanCI",
    "wilson_interval",
    "rate",
    "bootstrap_mean",
    "mcnemar_exact",
    "empirical_p_value",
    "auroc_interval",
]


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n``; ``(nan, nan)`` when ``n == 0``."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n; got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # exact ends at k = 0 and k = n (rounding would leave 1 - 1e-16 and exclude the estimate)
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
        return self.k / self.n if self.n else None

    def to_dict(self) -> dict:
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
    """A mean over ``n`` units with a 95% percentile-bootstrap interval."""

    mean: float | None
    n: int
    low: float
    high: float

    def to_dict(self) -> dict:
        return {"value": self.mean, "n": self.n, "ci95": [_num(self.low), _num(self.high)]}

    def __str__(self) -> str:
        if self.mean is None:
            return "n/a (n=0)"
        return f"{self.mean:.2f} (n={self.n}, 95% CI {self.low:.2f}-{self.high:.2f})"


def bootstrap_mean(
    values: Sequence[float | None], *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> MeanCI:
    """Mean of the finite ``values`` with a percentile-bootstrap interval over them (seeded)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return MeanCI(None, 0, math.nan, math.nan)
    if x.size == 1:
        return MeanCI(float(x[0]), 1, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return MeanCI(float(x.mean()), int(x.size), float(lo), float(hi))


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

    ``alternative="less"``: extreme means ``<= value`` (an ablation that lowers ASR at least as
    much); ``"greater"``: ``>= value``. ``(1 + #extreme) / (1 + #null)``.
    """
    if alternative not in ("less", "greater"):
        raise ValueError(f"alternative must be 'less' or 'greater', not {alternative!r}")
    xs = [x for x in null if x is not None and math.isfinite(x)]
    extreme = sum(1 for x in xs if (x <= value if alternative == "less" else x >= value))
    return (1 + extreme) / (1 + len(xs))


def auroc_interval(
    labels: Sequence[int], scores: Sequence[float], *, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """AUROC with a stratified percentile-bootstrap 95% interval: ``(auroc, low, high)``."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=np.float64)
    if len(set(y.tolist())) < 2:
        return (math.nan, math.nan, math.nan)
    auc = float(roc_auc_score(y, s))
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        boots.append(roc_auc_score(y[idx], s[idx]))
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return (auc, float(lo), float(hi))


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
