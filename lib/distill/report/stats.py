"""Small-sample statistics for seed sweeps: mean, sample sd, and Student-t confidence intervals.

A sweep has a handful of seeds, where a normal-approximation interval (± 1.96 se) is far too narrow
(with 3 seeds the right factor is 4.30). SciPy is not a dependency, so the t quantile is found by
bisection on the t distribution's CDF, integrated numerically (Simpson's rule).
"""
from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def _t_pdf(x: float, df: float) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf(x: float, df: float, intervals: int = 2000) -> float:
    """P(T <= x) for Student's t with `df` degrees of freedom."""
    if x < 0:
        return 1.0 - t_cdf(-x, df, intervals)
    h = x / intervals
    inner = sum((4 if i % 2 else 2) * _t_pdf(i * h, df) for i in range(1, intervals))
    return 0.5 + h / 3 * (_t_pdf(0.0, df) + inner + _t_pdf(x, df))


def t_quantile(p: float, df: float) -> float:
    """The x with P(T <= x) = p, for 0.5 <= p < 1."""
    if not 0.5 <= p < 1:
        raise ValueError(f"t_quantile: p must lie in [0.5, 1), got {p}")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def ci95(values: list[float]) -> tuple[float, float]:
    """Two-sided 95% confidence interval of the mean (Student t; nan for fewer than two values)."""
    if len(values) < 2:
        return float("nan"), float("nan")
    mean, sd = mean_sd(values)
    half = t_quantile(0.975, len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def paired_gain(a, b) -> dict[str, Any]:
    """a minus b for [seeds, questions] scores of the same seeds (rows) and questions (columns): the mean over
    questions of the seed-averaged difference with its 95% t interval over questions, and each seed's difference."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    dq, ds = d.mean(axis=0), d.mean(axis=1)
    low, high = ci95([float(x) for x in dq])
    return {"gain": float(dq.mean()), "low": low, "high": high, "per_seed": [float(x) for x in ds],
            "seeds_won": f"{int((ds > 0).sum())}/{len(ds)}", "resolved": bool(low > 0 or high < 0)}
