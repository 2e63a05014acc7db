"""Batched path evaluator (buckets × vmap, fused depthwise) == sequential reference; chunking;
recalibration option."""

import numpy as np
import pytest

from scalenet_jax.nas.evaluate import PathEvaluator, chunk_sizes
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


def test_chunk_sizes_cover_every_path_once():
  assert chunk_sizes(21, 16) == [16, 4, 1] and chunk_sizes(16, 16) == [16] and chunk_sizes(0, 4) == []
  assert chunk_sizes(13, 6) == [6, 6, 1] and chunk_sizes(3, 1) == [1, 1, 1]
  assert all(sum(chunk_sizes(n, v)) == n for n in range(40) for v in (1, 3, 4, 8))


def test_batched_equals_sequential(evaluator):
  pairs = [sample_path(SPACE, "hss_uniform", seed=1, step=i) for i in range(6)]
  groups = evaluator.groups(pairs)
  # both resolutions and both buckets, a group of 3 (chunks 2 + 1) and a single path
  assert set(groups) == {(20, 1), (16, 0), (16, 1)} and sorted(map(len, groups.values())) == [1, 2, 3]
  a = evaluator(pairs)
  b = evaluator.evaluate_sequential(pairs)
  np.testing.assert_allclose(a, b, atol=1e-12)
  assert all(0.0 <= v <= 1.0 for v in a) and len(set(a)) > 1
  assert evaluator(pairs[2:3]) == [a[2]]  # chunking does not change a path's accuracy
  assert evaluator.batching == "loop"  # the CPU default: one program per (resolution, bucket)
  assert sorted(evaluator._vmapped) == [0, 1]


def test_vmap_batching_equals_sequential(evaluator):
  """`batching='vmap'` (the accelerator default): binary-digit chunks 2 + 1 of one group."""
  pairs = [p for p in (sample_path(SPACE, "hss_uniform", seed=1, step=i) for i in range(8)) if p[1].r == 16][:3]
  ev = PathEvaluator(evaluator.model, evaluator.params, SPACE, evaluator._batches, vmap_size=4, batching="vmap")
  assert set(ev.groups(pairs)) == {(16, 0), (16, 1)}
  np.testing.assert_allclose(ev(pairs), evaluator.evaluate_sequential(pairs), atol=1e-12)


def test_recalibration_changes_statistics(evaluator):
  rng = np.random.default_rng(5)
  calib = [(rng.normal(size=(4, 16, 16, 1)).astype(np.float32) * 3 + 1, np.zeros(4, int))]
  ev = PathEvaluator(
      evaluator.model, evaluator.params, SPACE, evaluator._batches, vmap_size=4, calib_batches=calib, buckets=False
  )
  pairs = [p for p in (sample_path(SPACE, "hss_uniform", seed=1, step=i) for i in range(8)) if p[1].r == 16][
      :3
  ]  # one resolution: two compiles only
  a, b = ev(pairs), ev.evaluate_sequential(pairs)
  np.testing.assert_allclose(a, b, atol=1e-12)
  # Statistics from the (shifted, scaled) calibration images instead of each evaluation batch's own.
  plain = PathEvaluator(evaluator.model, evaluator.params, SPACE, evaluator._batches, vmap_size=4, buckets=False)
  assert plain(pairs) != a
  # With recalibration an image's prediction no longer depends on the other images of its batch: the
  # same 16 images one per batch give the same accuracies (per-batch statistics would change them).
  split = [(x[i : i + 1], y[i : i + 1]) for x, y in evaluator._batches for i in range(len(y))]
  ev4 = PathEvaluator(evaluator.model, evaluator.params, SPACE, split, vmap_size=4, calib_batches=calib, buckets=False)
  np.testing.assert_allclose(ev4(pairs), a, atol=1e-12)
  data = ev.batches_at(20)
  assert data[0][0].shape == (12, 20, 20, 1) and data[0][2] == 8  # calib ++ eval, resized


def test_bad_inputs():
  with pytest.raises(ValueError, match="vmap_size"):
    PathEvaluator(SuperNet(SPACE), {}, SPACE, [(np.zeros((1, 16, 16, 1)), np.zeros(1))], vmap_size=0)
  with pytest.raises(ValueError, match="batching"):
    PathEvaluator(SuperNet(SPACE), {}, SPACE, [(np.zeros((1, 16, 16, 1)), np.zeros(1))], batching="pmap")
  ev = PathEvaluator(SuperNet(SPACE), {}, SPACE, {16: [(np.zeros((1, 16, 16, 1)), np.zeros(1))]})
  with pytest.raises(KeyError, match="resolution 20"):
    ev.batches_at(20)
