"""Rank correlations between supernet and stand-alone accuracies."""

import pytest

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
