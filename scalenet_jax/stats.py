"""Statistics of the small-scale studies: t-intervals over seeds, paired (same-seed) t-tests and the
Holm-Bonferroni correction over a family of claims (scalenet_jax.study: a claim holds only when its
adjusted p is below 0.05; with one seed there is no interval and nothing is decided)."""

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


def paired_test(a, b) -> tuple[float, float, float]:
  """(mean of a - b, 95% half-width, two-sided p of the paired t-test) over runs paired by seed; the p is
  nan below two pairs, 0 when every pair differs by the same nonzero amount."""
  d, h = paired(a, b)
  if len(a) < 2:
    return d, h, float("nan")
  if statistics.pstdev(x - y for x, y in zip(a, b)) == 0:  # scipy returns nan for identical differences
    return d, h, 1.0 if d == 0 else 0.0
  from scipy import stats  # pylint: disable=g-import-not-at-top

  return d, h, float(stats.ttest_rel(a, b).pvalue)


def holm(pvalues) -> list[float]:
  """Holm-Bonferroni adjusted p-values, in the order given (nan stays nan and is not counted).

  The k-th smallest of m p-values is multiplied by m - k + 1 (k from 1), made non-decreasing along that
  order and capped at 1; a claim holds at level alpha when its adjusted p is below alpha. This controls
  the family-wise error of a report's claims, whatever their dependence.
  """
  ps = list(pvalues)
  live = sorted((p, i) for i, p in enumerate(ps) if p == p)
  out = [float("nan")] * len(ps)
  running = 0.0
  for k, (p, i) in enumerate(live):
    running = max(running, min(1.0, (len(live) - k) * p))
    out[i] = running
  return out
