"""Statistics of the small-scale studies: t-intervals over seeds and paired (same-seed) differences.

A comparison "holds" only when the 95% interval of the paired difference excludes 0; with one seed
there is no interval and nothing is decided.
"""

from __future__ import annotations

import math
import statistics


def t_interval(xs) -> tuple[float, float]:
  """(mean, half-width of the two-sided 95% t-interval); half-width nan for one value."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  xs = list(xs)
  m = statistics.fmean(xs)
  if len(xs) < 2:
    return m, float("nan")
  return m, float(stats.t.ppf(0.975, len(xs) - 1)) * statistics.stdev(xs) / math.sqrt(len(xs))


def paired(a, b) -> tuple[float, float]:
  """Mean and 95% half-width of a - b over runs paired by seed (a[i] and b[i] share seed i)."""
  a, b = list(a), list(b)
  if len(a) != len(b):
    raise ValueError(f"paired samples of different sizes: {len(a)} vs {len(b)}")
  return t_interval(x - y for x, y in zip(a, b))


def decide(diff: float, half: float) -> str:
  """'higher' / 'lower' when the interval excludes 0, 'undecided' when it covers 0, 'one seed' when none."""
  if math.isnan(half):
    return "one seed"
  return "higher" if diff - half > 0 else "lower" if diff + half < 0 else "undecided"
