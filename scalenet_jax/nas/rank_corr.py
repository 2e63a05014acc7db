"""Rank correlation between supernet (one-shot) and stand-alone accuracies (paper Table 4).

The measures and their bootstrap intervals: `docs/nas.md` §8.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 2000


def _bootstrap_ci(a, b, statistic, seed: int) -> list[float]:
  """[low, high] 95% percentile-bootstrap interval of statistic(a, b), resampling (a_i, b_i) pairs;
  [nan, nan] when some resample has no correlation (all values tied: likely with a handful of paths)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # scipy warns about the tied resamples; the nan interval says it
    res = stats.bootstrap(
        (a, b),
        lambda x, y: statistic(x, y).statistic,
        paired=True,
        vectorized=False,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
  return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def rank_correlations(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict:
  """Pearson, Spearman and Kendall-τ between two equally long accuracy lists, with bootstrap 95%
  intervals of the two rank correlations (`spearman_ci`, `kendall_ci`)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"accuracy lists must be 1-D and equally long, got {a.shape} and {b.shape}")
  if len(a) < 3:
    raise ValueError(f"need at least 3 paths for a correlation, got {len(a)}")
  return {
      "pearson": float(stats.pearsonr(a, b)[0]),
      "spearman": float(stats.spearmanr(a, b)[0]),
      "kendall": float(stats.kendalltau(a, b)[0]),
      "spearman_ci": _bootstrap_ci(a, b, stats.spearmanr, seed),
      "kendall_ci": _bootstrap_ci(a, b, stats.kendalltau, seed),
      "n": int(len(a)),
  }


def path_rank_correlation(
    pairs: Sequence, supernet_evaluate: Callable[[Sequence], Sequence[float]], standalone_accs: Sequence[float]
) -> dict:
  """Correlations between `supernet_evaluate(pairs)` (e.g. a PathEvaluator) and the stand-alone
  accuracies of the same (α, S) pairs; the supernet accuracies are returned too."""
  if len(pairs) != len(standalone_accs):
    raise ValueError(f"{len(pairs)} paths but {len(standalone_accs)} stand-alone accuracies")
  sup = list(supernet_evaluate(pairs))
  out = rank_correlations(sup, standalone_accs)
  out["supernet_accs"] = sup
  return out
