"""HSS / uniform samplers: determinism per (seed, step), η, multi-modal FLOPs histogram, CLI."""

import json
import os

import numpy as np
import pytest

from scalenet_jax.nas import sampling
from scalenet_jax.nas.space import get_space, left_sides, scaling_stage_of, validate_alpha, validate_sides


def test_sample_is_function_of_seed_and_step():
  space = get_space("imagenet")
  a = [sampling.sample_path(space, "hss", seed=7, step=s) for s in range(20)]
  b = [sampling.sample_path(space, "hss", seed=7, step=s) for s in reversed(range(20))][::-1]
  assert a == b
  assert sampling.sample_path(space, "hss", 8, 3) != a[3] or sampling.sample_path(space, "hss", 8, 4) != a[4]
  for alpha, S in a:
    validate_alpha(alpha, space)
    scaling_stage_of(S, space)  # HSS keeps d, w, r inside one stage
  with pytest.raises(ValueError, match="unknown sampling method"):
    sampling.sample_path(space, "greedy")


def test_stage_probabilities():
  space = get_space("imagenet")
  np.testing.assert_allclose(sampling.stage_probs(space, "width"), np.array([1, 4, 5, 7]) / 17)
  np.testing.assert_allclose(sampling.stage_probs(space, "uniform"), [0.25] * 4)
  js = [sampling.sample_scaling_hss(space, sampling.step_rng(0, i))[0] for i in range(3400)]
  np.testing.assert_allclose(np.bincount(js) / len(js), np.array([1, 4, 5, 7]) / 17, atol=0.03)
  with pytest.raises(ValueError):
    sampling.stage_probs(space, [1, 2])


@pytest.mark.parametrize(
    "name,method,n", [("imagenet", "hss", 1500), ("imagenet", "hss_uniform", 1500), ("fmnist", "hss_uniform", 1500)]
)
def test_hss_is_multimodal_uniform_is_not(name, method, n):
  space = get_space(name)
  hss = sampling.sample_macs(space, method, n, seed=0)
  uni = sampling.sample_macs(space, "uniform", n, seed=0)
  assert sampling.count_modes(hss) >= 3
  assert sampling.count_modes(uni) == 1
  # HSS puts more mass at both ends (small and large stages) than uniform sampling.
  lo, hi = np.percentile(uni, [10, 90])
  assert np.mean(hss < lo) > 0.1 and np.mean(hss > hi) > 0.1
  assert np.mean(hss < lo) + np.mean(hss > hi) > 0.3


def test_count_modes_on_synthetic():
  rng = np.random.default_rng(0)
  one = np.exp(rng.normal(0, 0.3, 3000))
  three = np.exp(np.concatenate([rng.normal(m, 0.1, 1000) for m in (0, 1, 2)]))
  assert sampling.count_modes(one) == 1 and sampling.count_modes(three) == 3


def test_cli_writes_histogram(tmp_path):
  sampling.main(["--space", "fmnist", "--n", "300", "--out", str(tmp_path)])
  assert os.path.getsize(tmp_path / "flops_hist_fmnist.png") > 1000
  summary = json.loads((tmp_path / "flops_fmnist.json").read_text())
  assert set(summary) == set(sampling.METHODS)


def test_bcnet_sides_are_a_function_of_seed_and_step():
  space = get_space("tiny")
  ref = left_sides(space)
  a = [sampling.sample_sides(space, seed=3, step=s) for s in range(200)]
  # Pinned: the bits of default_rng([seed 3, step, stream 1]).integers(0, 2, 10) (stem, head, then the
  # stages' modules), recorded with numpy 2 (PCG64); a change of stream or bit order changes them.
  assert a[0] == {"stem": 0, "head": 1, "stages": ((1, 0), (1, 1, 0), (0, 1, 1))}
  assert a[199] == {"stem": 0, "head": 1, "stages": ((1, 0), (0, 0, 0), (1, 0, 1))}
  validate_sides(a[0], space)
  # asyn: modules draw independently; each is right-aligned about half of the time.
  bits = np.array([[x["stem"], x["head"], *(v for st in x["stages"] for v in st)] for x in a])
  assert 0.35 < bits.mean(0).min() and bits.mean(0).max() < 0.65
  assert len({tuple(b) for b in bits[:20]}) > 10
  # sync: every module on step % 2; 'left' coupling: always left. (α, S) do not depend on the sides.
  sync = sampling.sample_sides(space, seed=3, step=5, asyn=False)
  assert {sync["stem"], sync["head"], *(v for st in sync["stages"] for v in st)} == {1}
  assert sampling.sample_sides(get_space("tiny", coupling="left"), 3, 5) == ref
  assert sampling.sample_path(space, "hss", 3, 5) == sampling.sample_path(
      get_space("tiny", coupling="left"), "hss", 3, 5
  )
