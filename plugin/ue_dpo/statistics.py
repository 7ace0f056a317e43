"""Confidence intervals for the difference between two runs, and for one share.

- Over items (one seed per run): the paired percentile bootstrap. Each resample draws the benchmark's n items
  with replacement, the same draw for both runs, and recomputes the statistic (e.g. metric(B) - metric(A)) on
  the drawn items; the interval runs from the (1 - level)/2 to the (1 + level)/2 quantile of the resampled
  statistics (numpy's default linear interpolation).
- Over seeds (several seeds per run, paired by seed): Student's t interval of the mean per-seed difference,
  mean +- t_{(1 + level)/2, k - 1} * s / sqrt(k), with s the sample standard deviation of the k differences.
  The seeds are the unit of replication, so this interval covers training noise, which the item bootstrap
  of a single pair of runs cannot.
- One share of n independent trials (a probe's accuracy): Wilson's score interval.
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

CONFIDENCE_LEVEL = 0.95


class Interval(NamedTuple):
    low: float
    high: float


class SeedLevelDifference(NamedTuple):
    mean: float
    low: float
    high: float
    seeds: int


def check_confidence_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"the confidence level must lie in (0, 1), got {level!r}")


def bootstrap_item_indices(n_items: int, resamples: int, seed: int) -> np.ndarray:
    """`resamples` x `n_items` item indices drawn with replacement by numpy's default generator seeded with `seed`."""
    if n_items < 1:
        raise ValueError(f"the bootstrap needs at least one item, got {n_items}")
    if resamples < 1:
        raise ValueError(f"the number of bootstrap resamples must be at least 1, got {resamples}")
    return np.random.default_rng(seed).integers(0, n_items, size=(resamples, n_items))


def percentile_interval(values: Sequence[float], level: float = CONFIDENCE_LEVEL) -> Interval:
    """The central `level` interval of `values` by their (1 - level)/2 and (1 + level)/2 quantiles."""
    check_confidence_level(level)
    if len(values) == 0:
        raise ValueError("a percentile interval needs at least one value")
    low, high = np.quantile(np.asarray(values, dtype=float), [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(low), float(high))


def seed_level_interval(differences: Sequence[float], level: float = CONFIDENCE_LEVEL) -> SeedLevelDifference:
    """Mean of the per-seed differences metric(B, seed) - metric(A, seed) with its Student t interval (given one
    run's per-seed metrics instead, the mean of that metric over the seeds with its interval)."""
    from scipy.stats import t as student_t

    check_confidence_level(level)
    values = np.asarray(differences, dtype=float)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"a seed-level interval needs the differences of at least two seeds, got {list(differences)}")
    mean = float(values.mean())
    half_width = float(student_t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return SeedLevelDifference(mean, mean - half_width, mean + half_width, len(values))


def wilson_interval(successes: int, n: int, level: float = CONFIDENCE_LEVEL) -> Interval:
    """Wilson's score interval of a binomial share `successes` / `n`: (p + z²/2n ± z √(p(1 − p)/n + z²/4n²)) /
    (1 + z²/n), z the normal (1 + level)/2 quantile. It stays inside [0, 1], and unlike p ± z √(p(1 − p)/n) does
    not shrink to a point at 0 or n successes."""
    from scipy.stats import norm

    check_confidence_level(level)
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"a binomial interval needs 0 <= successes <= n and n >= 1, got {successes} of {n}")
    z = float(norm.ppf((1 + level) / 2))
    share = successes / n
    centre = share + z * z / (2 * n)
    half_width = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return Interval(float((centre - half_width) / scale), float((centre + half_width) / scale))
