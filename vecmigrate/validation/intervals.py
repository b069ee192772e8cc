"""Confidence intervals of the gate's sampled figures, and the rule that decides on them.

Every retrieval figure is measured on a sample of queries, so it carries sampling error; a gate
that compared the point estimate alone would pass or fail on noise near its threshold. Each
figure here comes with a two-sided interval at :data:`CONFIDENCE`, and
:func:`~vecmigrate.model.gates.decide` judges the interval against the threshold:

- wholly on the right side: the gate passes;
- wholly on the wrong side: it fails;
- across the threshold: the point estimate decides, and the verdict says the sample cannot
  tell, with about how many queries would (:func:`queries_needed`).

Pure numpy and scipy over the per-query figures, so the arithmetic is tested on its own.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from vecmigrate.model.gates import CONFIDENCE

# Resamples of the bootstrap of a latency ratio (about 20 ms for 1,000 latency queries).
BOOTSTRAP = 2000

Scores = npt.NDArray[np.float64]


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


# scipy.stats is imported by the two functions that need it, not with the module: the gateway
# imports this module (for its tuning log) and serves without computing an interval, and
# scipy.stats was a third of its start-up and a sixth of the objects every full garbage
# collection walks.


def _t_ppf(p: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(p, df))


def _binom_ppf(p: float, n: int, q: float) -> int:
    from scipy import stats

    return int(stats.binom.ppf(p, n, q))


def wilson(p: float, n: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` observed over ``n`` trials."""
    if n <= 0:
        return (0.0, 1.0)
    z = _z(confidence)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_score_interval(
    scores: Scores, k: int, confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """The interval of the mean of per-query scores in [0, 1] (recall@k, overlap@k).

    Each score is the share of up to ``k`` neighbours found, so the mean is a proportion over
    clustered trials: the Wilson interval over the effective number of trials (Kish's design
    effect, ``p(1 - p) / var(mean)``), at most ``n * k`` (neighbours found independently). With
    one neighbour a query this is the plain Wilson interval of a binomial proportion; when every
    query scores alike it still leaves room for what the sample did not see.
    """
    s = scores[~np.isnan(scores)]
    n = len(s)
    if n == 0:
        return None
    p = float(s.mean())
    var_mean = float(s.var(ddof=1)) / n if n > 1 else 0.0
    trials = float(n * k)
    if var_mean > 0 and 0.0 < p < 1.0:
        trials = min(trials, p * (1 - p) / var_mean)
    return wilson(p, max(trials, 1.0), confidence)


def paired_difference_interval(
    new: Scores, old: Scores, confidence: float = CONFIDENCE
) -> tuple[float, tuple[float, float]] | None:
    """Mean of ``new - old`` over the queries both scored and its t interval, as
    ``(mean, (lo, hi))``: the sampling error of a difference measured on the
    same queries, far smaller than the two figures' own."""
    both = ~(np.isnan(new) | np.isnan(old))
    d = new[both] - old[both]
    n = len(d)
    if n == 0:
        return None
    mean = float(d.mean())
    if n < 2:
        return (mean, (-1.0, 1.0))
    half = _t_ppf(0.5 + confidence / 2, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return (mean, (max(-1.0, mean - half), min(1.0, mean + half)))


def quantile_interval(
    samples: Scores, q: float, confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """A distribution-free interval of the ``q`` quantile from order statistics: the ranks the
    binomial(n, q) count of samples below the quantile puts around it. With too few samples
    for the upper rank (a p99 of under about 300), the upper end is the largest sample, and
    the interval's coverage is below ``confidence`` on that side."""
    x = np.sort(samples[~np.isnan(samples)])
    n = len(x)
    if n == 0:
        return None
    alpha = 1 - confidence
    lo_rank = _binom_ppf(alpha / 2, n, q)  # samples below the lower end, at most
    hi_rank = _binom_ppf(1 - alpha / 2, n, q) + 1
    return (float(x[max(0, min(n - 1, lo_rank - 1))]), float(x[min(n - 1, hi_rank - 1)]))


def ratio_interval(
    new: Scores,
    old: Scores,
    q: float,
    floor: float,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, tuple[float, float]] | None:
    """The ratio of the ``q`` quantiles of paired samples (the same queries on both sides),
    each side's quantile read as at least ``floor`` (below it a ratio measures the scheduler,
    not the index), and its percentile-bootstrap interval over resampled queries."""
    both = ~(np.isnan(new) | np.isnan(old))
    a, b = new[both], old[both]
    n = len(a)
    if n == 0:
        return None

    def ratio(x: Scores, y: Scores) -> npt.NDArray[np.float64]:
        qx = np.maximum(np.percentile(x, q * 100, axis=-1), floor)
        qy = np.maximum(np.percentile(y, q * 100, axis=-1), floor)
        return np.asarray(qx / qy, dtype=np.float64)

    point = float(ratio(a, b))
    if max(a.max(), b.max()) <= floor:
        # No resample's quantile exceeds its sample's largest value: every one reads as the
        # floor on both sides, and the bootstrap would only draw ratios of 1.
        return (point, (point, point))
    rows = np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP, n))
    boot = ratio(a[rows], b[rows])
    alpha = 1 - confidence
    lo, hi = np.percentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (point, (float(min(lo, point)), float(max(hi, point))))


def queries_needed(
    queries: int, value: float, interval: tuple[float, float], threshold: float
) -> int | None:
    """About how many queries would put the interval wholly on one side of the threshold
    (its half-width shrinks as one over the square root of the queries); None when the
    estimate sits on the threshold."""
    margin = abs(value - threshold)
    half = max(value - interval[0], interval[1] - value)
    if margin <= 0 or half <= 0 or queries <= 0:
        return None
    return math.ceil(queries * (half / margin) ** 2)


def queries_for_half_width(half_width: float, confidence: float = CONFIDENCE) -> int:
    """Queries that bound the interval of a mean score in [0, 1] to ``half_width`` whatever
    the figure (the worst case, a proportion of one half with one trial a query)."""
    z = _z(confidence)
    return math.ceil(z * z * 0.25 / (half_width * half_width))


def rounded(bounds: tuple[float, float] | None, digits: int = 4) -> tuple[float, float] | None:
    """An interval's bounds rounded for a report (None stays None)."""
    return None if bounds is None else (round(bounds[0], digits), round(bounds[1], digits))
