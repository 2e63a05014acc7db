"""Multiple-comparison statistics of the studies, against hand-worked values and scipy's paired t-test."""

import math

import pytest
from scipy import stats as scipy_stats

from scalenet_jax import stats


def test_holm_hand_worked():
  # m = 4: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06.
  assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  # nan (a pending claim) is neither adjusted nor counted: m = 2.
  out = stats.holm([float("nan"), 0.2, 0.01])
  assert math.isnan(out[0]) and out[1:] == pytest.approx([0.2, 0.02])
  assert stats.holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
  assert stats.holm([]) == []


def test_paired_test_matches_scipy():
  a, b = [90.1, 89.7, 90.4, 90.0], [89.8, 89.9, 89.9, 89.6]
  d, h, p = stats.paired_test(a, b)
  ref = scipy_stats.ttest_rel(a, b)
  assert d == pytest.approx(sum(a) / 4 - sum(b) / 4)
  assert p == pytest.approx(ref.pvalue)
  # The 95% interval excludes 0 exactly when p < 0.05.
  assert (abs(d) > h) == (p < 0.05)
  assert math.isnan(stats.paired_test([1.0], [0.0])[2])
  assert stats.paired_test([2.0, 3.0], [1.0, 2.0])[2] == 0.0  # identical nonzero differences


def test_t_interval_and_paired():
  m, h = stats.t_interval([1.0, 2.0, 3.0])
  assert m == 2.0 and h == pytest.approx(scipy_stats.t.ppf(0.975, 2) * 1.0 / 3**0.5)
  assert math.isnan(stats.t_interval([4.0])[1])
  # paired: a is exactly 1 below b on every seed -> difference -1 with zero width
  assert stats.paired([10.0, 11.0, 12.0], [11.0, 12.0, 13.0]) == pytest.approx((-1.0, 0.0))
