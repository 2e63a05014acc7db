"""MCEA on a toy objective with a known optimum; kill-and-resume reproduces the uninterrupted run."""

import dataclasses
import json

import numpy as np
import pytest

from scalenet_jax.nas import mcea
from scalenet_jax.nas.space import Alpha, base_macs, get_space, stage_feasible

BASE = get_space("fmnist")
A_STAR = Alpha((1, 2, 3, 1), ((5,), (7, 3), (5, 5, 7), (3,)))
# Centre the base budget on α* so that it is feasible; the rest of the space is partly infeasible.
SPACE = dataclasses.replace(BASE, base_target=float(base_macs(A_STAR, BASE)))


def _s_star(j):
  """A stage-j grid point feasible for α* (the one closest to the middle of the budget)."""
  grid = [S for S in SPACE.scalings(j) if stage_feasible(A_STAR, S, j, SPACE)]
  f0 = base_macs(A_STAR, SPACE)
  from scalenet_jax.nas.space import path_macs

  return min(grid, key=lambda S: abs(path_macs(A_STAR, S, SPACE) - 2**j * f0))


S_STAR = {j: _s_star(j) for j in (1, 2)}


def toy_accuracy(alpha, S):
  """Separable, maximal exactly at α* and S_j*; every term is a different scale so ties are impossible."""
  acc = 0.9
  for n, n_star in zip(alpha.depths, A_STAR.depths):
    acc -= 0.05 * abs(n - n_star)
  for ks, ks_star in zip(alpha.kernels, A_STAR.kernels):
    acc -= 0.01 * sum(1 for a, b in zip(ks, ks_star) if a != b)
  j = next((j for j, s in S_STAR.items() if S.d in SPACE.mult_candidates[j] and S.r in SPACE.res_candidates[j]), 0)
  if j:
    t = S_STAR[j]
    acc -= 0.1 * abs(S.d - t.d) + 0.07 * abs(S.w - t.w) + 0.001 * abs(S.r - t.r)
  return acc


class CountingEval:

  def __init__(self, fail_after=None):
    self.calls, self.paths, self.fail_after = 0, 0, fail_after

  def __call__(self, pairs):
    self.calls += 1
    if self.fail_after is not None and self.calls > self.fail_after:
      raise KeyboardInterrupt("simulated kill")
    self.paths += len(pairs)
    return [toy_accuracy(a, S) for a, S in pairs]


CFG = mcea.MCEAConfig(iterations=2, n_base=6, population=24, generations=12, parents=8, mutation_prob=0.1, seed=0)


def test_genome_round_trip():
  g = mcea.encode(A_STAR, SPACE)
  assert mcea.decode(g, SPACE) == A_STAR


def test_mcea_finds_known_optimum(tmp_path):
  ev = CountingEval()
  res = mcea.run_mcea(SPACE, ev, CFG, state_path=str(tmp_path / "s.json"))
  assert res["alpha"] == A_STAR
  assert res["scalings"][1:] == [S_STAR[1], S_STAR[2]]
  assert res["objective"] == pytest.approx(0.9)
  assert len(res["history"]) == 4 and res["phases_done"][-1] == "b1"
  pops = [h for h in res["history"] if h["phase"] == "alpha"]
  assert all(np.isfinite(h["pop_std"]) for h in pops)
  # batched: one evaluate call per generation / grid, many paths per call
  assert ev.paths / ev.calls > 5


def test_kill_and_resume_gives_same_result(tmp_path):
  ref = mcea.run_mcea(SPACE, CountingEval(), CFG, state_path=str(tmp_path / "ref.json"))
  path = str(tmp_path / "run.json")
  with pytest.raises(KeyboardInterrupt):
    mcea.run_mcea(SPACE, CountingEval(fail_after=20), CFG, state_path=path)
  done = json.load(open(path))["phases_done"]
  assert 0 < len(done) < 5  # killed mid-run after some phases were saved
  res = mcea.run_mcea(SPACE, CountingEval(), CFG, state_path=path)
  assert res["alpha"] == ref["alpha"] and res["scalings"] == ref["scalings"]
  assert res["history"] == ref["history"]
  with pytest.raises(ValueError, match="another space/config"):
    mcea.run_mcea(SPACE, CountingEval(), dataclasses.replace(CFG, seed=1), state_path=path)
