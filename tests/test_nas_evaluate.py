"""vmap path evaluator == sequential evaluator; recalibration option."""

import jax.numpy as jnp
import numpy as np
import pytest

from scalenet_jax.nas.evaluate import PathEvaluator
from scalenet_jax.nas.sampling import sample_path
from scalenet_jax.nas.space import get_space
from scalenet_jax.nas.supernet import SuperNet, init_supernet

SPACE = get_space("tiny")


@pytest.fixture(scope="module")
def evaluator():
  model = SuperNet(SPACE)
  params = init_supernet(model, seed=0)
  rng = np.random.default_rng(0)
  batches = [(rng.normal(size=(8, 16, 16, 1)).astype(np.float32), rng.integers(0, 10, size=8)) for _ in range(2)]
  return PathEvaluator(model, params, SPACE, batches, vmap_size=4)


def test_vmap_equals_sequential(evaluator):
  pairs = [sample_path(SPACE, "hss_uniform", seed=1, step=i) for i in range(6)]
  assert len({S.r for _, S in pairs}) == 2  # both resolution groups, one padded chunk each
  a = evaluator(pairs)
  b = evaluator.evaluate_sequential(pairs)
  np.testing.assert_allclose(a, b, atol=1e-12)
  assert all(0.0 <= v <= 1.0 for v in a) and len(set(a)) > 1
  assert evaluator(pairs[2:3]) == [a[2]]  # chunking/padding does not change a path's accuracy


def test_recalibration_changes_statistics(evaluator):
  rng = np.random.default_rng(5)
  calib = [(rng.normal(size=(4, 16, 16, 1)).astype(np.float32) * 3 + 1, np.zeros(4, int))]
  ev = PathEvaluator(evaluator.model, evaluator.params, SPACE, evaluator._batches, vmap_size=4, calib_batches=calib)
  pairs = [p for p in (sample_path(SPACE, "hss_uniform", seed=1, step=i) for i in range(8)) if p[1].r == 16][
      :3
  ]  # one resolution: two compiles only
  a, b = ev(pairs), ev.evaluate_sequential(pairs)
  np.testing.assert_allclose(a, b, atol=1e-12)
  data = ev.batches_at(20)
  assert data[0][0].shape == (12, 20, 20, 1) and data[0][2] == 8  # calib ++ eval, resized


def test_bad_inputs():
  with pytest.raises(ValueError, match="vmap_size"):
    PathEvaluator(SuperNet(SPACE), {}, SPACE, [(np.zeros((1, 16, 16, 1)), np.zeros(1))], vmap_size=0)
  ev = PathEvaluator(SuperNet(SPACE), {}, SPACE, {16: [(np.zeros((1, 16, 16, 1)), np.zeros(1))]})
  with pytest.raises(KeyError, match="resolution 20"):
    ev.batches_at(20)
