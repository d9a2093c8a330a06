"""The statistics a results page is built from, as pure functions of metrics.csv rows and per-seed values: the
best round by validation, how fast a curve still climbs, paired differences with their t-test and 95% interval,
and the corrections for testing many of them at once (Holm; Benjamini-Hochberg)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats as scipy_stats

# A curve still rises when its slope over its last WINDOW rounds exceeds RISING points per 10 rounds. Score (b),
# evaluated every 10 rounds and noisier (one local epoch can land well or badly), is fitted over more rounds.
RISING, WINDOW, WINDOW_ADAPTED = 0.5, 30, 50
# Each score's validation column and the window its slope is fitted over.
SCORE_CURVES = (("val/acc_mean", WINDOW), ("val/adapted_acc_mean", WINDOW_ADAPTED))


def curve(rows: list[dict], key: str) -> dict[int, float]:
    """round -> value of one metrics.csv column, over the rows that have it."""
    return {int(r["round"]): float(r[key]) for r in rows if r.get(key)}


def best_by_validation(rows: list[dict], prefix: str = "", upto: int | None = None) -> tuple[int, float] | None:
    """(round, test accuracy) at the round with the best validation accuracy of one score (``prefix`` "" for (a),
    "adapted_" for (b)) among rounds up to ``upto`` (the first on ties): summary.json's ``best`` of a run cut at
    ``upto``. The test split chooses nothing."""
    val = f"val/{prefix}acc_mean"
    scored = [r for r in rows if r.get(val) and (upto is None or int(r["round"]) <= upto)]
    if not scored:
        return None
    best = max(scored, key=lambda r: float(r[val]))
    return int(best["round"]), float(best[f"test/{prefix}acc_mean"])


def late_slope(val_by_round: dict[int, float], window: int = WINDOW) -> float | None:
    """How fast a run's validation accuracy still climbs: the least-squares slope of the curve over its last
    ``window`` rounds (every evaluated round in them), in points per 10 rounds (accuracies are fractions). A fit,
    not the difference of two short windows, which one noisy round can swing by a point. None under 3 rounds."""
    if not val_by_round:
        return None
    last = max(val_by_round)
    xs = [r for r in val_by_round if r > last - window]
    if len(xs) < 3:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(val_by_round[r] for r in xs)
    cov = sum((x - mx) * (val_by_round[x] - my) for x in xs)
    return 100 * 10 * cov / sum((x - mx) ** 2 for x in xs)


@dataclass(frozen=True)
class Paired:
    """a - b seed by seed (the seeds both have; a seed fixes the partition both methods ran on, so its spread
    cancels in the difference), in points: the differences, their mean and std, the paired t statistic, its
    two-sided p-value and the 95% confidence interval of the mean difference (Student t, n - 1 degrees)."""

    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    mean: float
    std: float
    t: float
    p: float
    low: float
    high: float

    @property
    def n(self) -> int:
        return len(self.diffs)


def paired(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> Paired | None:
    """The paired comparison of two methods' per-seed accuracies (fractions; None under two common seeds)."""
    seeds = tuple(sorted(set(a) & set(b)))
    if len(seeds) < 2:
        return None
    diffs = tuple(100 * (a[s] - b[s]) for s in seeds)
    if not all(math.isfinite(d) for d in diffs):
        return None  # a run without a score (NaN) is no evidence either way
    n, mean, std = len(diffs), statistics.fmean(diffs), statistics.stdev(diffs)
    if std > 0:
        t = mean / (std / math.sqrt(n))
        p = 2 * scipy_stats.t.sf(abs(t), n - 1)
    else:  # every seed the same difference: certain of it, unless it is none
        t, p = (math.copysign(math.inf, mean), 0.0) if mean else (0.0, 1.0)
    half = scipy_stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return Paired(seeds, diffs, mean, std, t, p, mean - half, mean + half)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (reject where adjusted <= alpha: family-wise error rate alpha): sorted
    ascending, the k-th (from 0) is multiplied by m - k, then made non-decreasing, capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def holm_first_step_t(tests: int, seeds: int, alpha: float = 0.05) -> float:
    """The |t| a paired t-test on ``seeds`` seeds needs for Holm's first step in a family of ``tests`` tests: its
    two-sided p at most alpha / tests (every later step needs less). In standard deviations of the per-seed
    differences, the mean difference must be at least this over sqrt(seeds)."""
    return float(scipy_stats.t.ppf(1 - alpha / (2 * tests), seeds - 1))


def benjamini_hochberg(pvalues: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate): sorted ascending, the k-th (from 1) is
    multiplied by m / k, then made non-increasing from the largest down, capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i], reverse=True)
    adjusted, running = [0.0] * m, 1.0
    for rank_from_top, i in enumerate(order):
        k = m - rank_from_top
        running = min(running, m / k * pvalues[i])
        adjusted[i] = min(1.0, running)
    return adjusted
