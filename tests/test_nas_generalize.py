"""Fits of the scaling curves and budget-meeting extrapolation."""

import numpy as np
import pytest

from scalenet_jax.nas import generalize as gen
from scalenet_jax.nas.export import RELEASED, S0_ALPHA
from scalenet_jax.nas.space import Scaling, base_macs, get_space, path_macs


def test_recovers_exponential_parameters_from_exact_data():
  js = np.arange(4.0)
  for a0, a1 in [(0.3, 1.6), (1.2, 1.1), (0.05, 1.95), (-0.267, 0.25)]:
    got = gen.fit_exponential(js, gen.exp_curve(js, a0, a1))
    np.testing.assert_allclose(got, (a0, a1), rtol=1e-6)


def test_exponential_fit_of_searched_fmnist_strategies_stays_bounded():
  """Series from a real Fashion-MNIST search (S_0..S_2): the fits and the extrapolated stage stay sane."""
  js = np.arange(3.0)
  a0, a1 = gen.fit_exponential(js, [1.0, 1.2, 1.25])  # concave: exactly a1 = 0.25 (x_j -> 1.267)
  np.testing.assert_allclose((a0, a1), (-0.8 / 3, 0.25), rtol=1e-6)
  a0, a1 = gen.fit_exponential(js, [1.0, 1.0, 1.25])  # no exact fit: the rate stops at the cap
  assert a1 == pytest.approx(gen.A1_MAX) and a0 == pytest.approx(0.075)
  space = get_space("fmnist")
  from scalenet_jax.nas.space import Alpha

  alpha = Alpha(depths=(1, 1, 2, 1), kernels=((5,), (7,), (3, 5), (7,)))
  searched = [Scaling(1.0, 1.0, 32), Scaling(1.05, 1.2, 32), Scaling(1.25, 1.25, 40)]
  (S3,) = gen.extrapolate(alpha, searched, space, stages=[3])
  assert S3.d > 1.25 and S3.w > 1.2 and S3.r > 40  # every dimension keeps growing


def test_linear_and_quadratic_fits_exact():
  js = np.arange(4.0)
  assert gen.fit_linear(js, 1 + 0.2 * js)[0] == pytest.approx(0.2)
  np.testing.assert_allclose(gen.fit_quadratic(js, 1 + 0.1 * js + 0.03 * js**2), (0.1, 0.03), atol=1e-12)


@pytest.mark.parametrize("kind", ["exp", "linear", "quadratic"])
def test_extrapolation_meets_budget_from_released_s0_s3(kind):
  space = get_space("imagenet")
  released = [RELEASED[k][1] for k in ("s0", "s1", "s2", "s3")]
  f0 = base_macs(S0_ALPHA, space)
  out = gen.extrapolate(S0_ALPHA, released, space, stages=[4, 5], kind=kind)
  for j, S in zip((4, 5), out):
    target, tol = space.stage_budget(j, f0)
    assert abs(path_macs(S0_ALPHA, S, space) - target) <= tol
    assert S.d >= 1 and S.w >= 1 and S.r > 354
  # The point lies on the fitted direction: its three relative offsets are proportional to the fit's.
  x = gen.predict(gen.fit_all(released, space, kind), 4, kind)
  t = (out[0].d - 1) / (x["d"] - 1)
  assert (out[0].w - 1) == pytest.approx(t * (x["w"] - 1), abs=2e-3)


def test_plot_writes_png(tmp_path):
  space = get_space("fmnist")
  ss = [Scaling(1, 1, 32), Scaling(1.1, 1.15, 36), Scaling(1.3, 1.35, 44)]
  gen.plot_fits(ss, space, str(tmp_path / "fit.png"), released=ss)
  assert (tmp_path / "fit.png").stat().st_size > 1000
  with pytest.raises(ValueError, match="unknown fit kind"):
    gen.fit_all(ss, space, "cubic")
