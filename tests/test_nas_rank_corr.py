"""Rank correlations between supernet and stand-alone accuracies."""

import numpy as np
import pytest
from scipy import stats

from scalenet_jax.nas.rank_corr import path_rank_correlation, rank_correlations


def test_known_values():
  r = rank_correlations([1, 2, 3, 4], [1, 2, 3, 4])
  assert r["pearson"] == pytest.approx(1) and r["spearman"] == pytest.approx(1) and r["kendall"] == pytest.approx(1)
  r = rank_correlations([1, 2, 3, 4], [10, 1000, 20, 30])
  # ranks (1,4,2,3): Spearman 1 - 6*(0+4+1+1)/(4*15) = 0.4; Kendall (4 concordant - 2 discordant)/6
  assert r["spearman"] == pytest.approx(0.4) and r["kendall"] == pytest.approx(1 / 3)
  assert r["n"] == 4


def test_path_rank_correlation_and_errors():
  pairs = ["a", "b", "c", "d", "e"]
  sup = {"a": 0.1, "b": 0.3, "c": 0.2, "d": 0.5, "e": 0.4}
  out = path_rank_correlation(pairs, lambda ps: [sup[p] for p in ps], [0.2, 0.6, 0.4, 1.0, 0.8])
  assert out["spearman"] == pytest.approx(1.0) and out["supernet_accs"] == [sup[p] for p in pairs]
  with pytest.raises(ValueError):
    rank_correlations([1, 2], [1, 2])
  with pytest.raises(ValueError):
    path_rank_correlation(pairs, lambda ps: [0] * len(ps), [1, 2])


def test_bootstrap_intervals_cover_the_estimate_and_shrink_with_more_paths():
  rng = np.random.default_rng(0)
  widths = []
  for n in (30, 120):
    a = rng.normal(size=n)
    r = rank_correlations(a, a + rng.normal(size=n))
    for k in ("spearman", "kendall"):
      lo, hi = r[f"{k}_ci"]
      assert lo < r[k] < hi and -1 <= lo and hi <= 1
    widths.append(r["kendall_ci"][1] - r["kendall_ci"][0])
  assert widths[1] < widths[0]


def test_estimates_and_intervals_are_scipys():
  """The point estimates are scipy's, and each interval is scipy's paired 95 % percentile bootstrap with
  2000 resamples drawn from default_rng(seed) (the documented recipe, recomputed here)."""
  rng = np.random.default_rng(1)
  a = rng.normal(size=30)
  b = a + rng.normal(size=30)
  r = rank_correlations(a, b, seed=3)
  assert r["pearson"] == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-12)
  assert r["spearman"] == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
  assert r["kendall"] == pytest.approx(stats.kendalltau(a, b)[0], abs=1e-12)
  for key, fn in (("spearman_ci", stats.spearmanr), ("kendall_ci", stats.kendalltau)):
    ref = stats.bootstrap(
        (a, b),
        lambda x, y: fn(x, y)[0],
        paired=True,
        vectorized=False,
        n_resamples=2000,
        method="percentile",
        rng=np.random.default_rng(3),
    ).confidence_interval
    assert r[key] == pytest.approx([ref.low, ref.high], abs=1e-12), key
