"""MCEA on a toy objective whose optimum is found here by brute force, the official operators and
penalty, kill-and-resume reproduces the uninterrupted run."""

import dataclasses
import functools
import itertools
import json

import numpy as np
import pytest

from helpers import ToyProblem
from scalenet_jax.nas import mcea
from scalenet_jax.nas.space import Alpha, Scaling, base_feasible, base_macs, path_macs

TOY = ToyProblem.make()
SPACE = TOY.space


def all_alphas(space):
  """Every base model of the space: per stage each depth choice and each kernel per layer."""
  per_stage = [
      [(n, ks) for n in st.depth_choices for ks in itertools.product(space.kernels, repeat=n)] for st in space.stages
  ]
  return [Alpha(tuple(n for n, _ in c), tuple(ks for _, ks in c)) for c in itertools.product(*per_stage)]


@functools.cache
def brute_force_optimum():
  """(α, (S_1..S_M), objective) maximising the mean over stages j >= 1 of the toy accuracy, α within the
  base budget and each S_j within 2^j·stage_tol of 2^j F(α). The toy is separable (α part + S part), so
  the best α is the best α part among the base-feasible ones, then the best feasible S_j for it."""
  feasible = [a for a in all_alphas(SPACE) if base_feasible(a, SPACE)]
  scores = np.array([TOY.alpha_part(a) for a in feasible])
  assert np.sum(scores == scores.max()) == 1  # a unique best α
  alpha = feasible[int(np.argmax(scores))]
  best = []
  for j in range(1, SPACE.num_scaling_stages):
    budget = 2**j * base_macs(alpha, SPACE)
    grid = [S for S in SPACE.scalings(j) if abs(path_macs(alpha, S, SPACE) - budget) <= 2**j * SPACE.stage_tol]
    best.append(max(grid, key=TOY.scaling_part))
  return alpha, tuple(best), float(np.mean([TOY.accuracy(alpha, S) for S in best]))


class CountingEval:

  def __init__(self, fail_after=None):
    self.calls, self.paths, self.fail_after = 0, 0, fail_after

  def __call__(self, pairs):
    self.calls += 1
    if self.fail_after is not None and self.calls > self.fail_after:
      raise KeyboardInterrupt("simulated kill")
    self.paths += len(pairs)
    return TOY(pairs)


CONFIG = mcea.MCEAConfig(iterations=2, n_base=6, population=24, generations=12, seed=0)


def test_defaults_are_the_official_search():
  c = mcea.MCEAConfig()
  assert (c.population, c.generations, c.iterations, c.n_base) == (64, 40, 8, 20)
  assert (c.include_s0, c.eta_mutation) == (False, 3.0)
  cfg = {"population": 8, "vmap_size": 16, "pi": [1, 2]}  # evaluator fields are ignored
  assert mcea.MCEAConfig.from_config(cfg) == mcea.MCEAConfig(population=8, pi=(1, 2))


def test_genome_round_trips():
  # random α: a depth-index gene per stage, then a kernel-index gene per slot (slots 1, 3, 3, 1)
  assert mcea.decode([0, 1, 1, 2, 0, 0, 2, 1, 1, 2, 0, 0], SPACE) == TOY.alpha
  g = mcea.encode_official(TOY.alpha, SPACE)
  assert g == [2, 3, 1, 0, 2, 2, 3, 1] and mcea.decode_official(g, SPACE) == TOY.alpha
  # Identity genes anywhere after the first slot: the stage's other genes, in order, are its layers.
  assert mcea.decode_official([1, 3, 0, 2, 0, 1, 2, 3], SPACE) == Alpha((1, 2, 2, 1), ((3,), (7, 5), (3, 5), (7,)))
  lo, hi = mcea.official_bounds(SPACE)  # slots 1, 3, 3, 1; a stage's first slot is never identity
  assert lo.tolist() == [1, 1, 0, 0, 1, 0, 0, 1] and hi.tolist() == [3] * 8


def test_official_operators():
  rng = np.random.default_rng(0)
  fit = np.arange(10.0)
  wins = np.concatenate([mcea.tournament(fit, 50, rng) for _ in range(20)])
  assert np.mean(fit[wins]) > 5.5  # the better of two random individuals: E = 6 for 0..9
  p1, p2 = np.zeros(8, int), np.ones(8, int)
  c1, c2 = mcea.two_point_crossover(p1, p2, rng)
  assert np.all(c1 + c2 == 1) and 0 < c1.sum() < 8  # a swapped segment, complementary children
  seg = np.flatnonzero(c1)
  assert np.all(np.diff(seg) == 1)  # one contiguous segment
  lo, hi = mcea.official_bounds(SPACE)
  x = np.asarray(mcea.encode_official(TOY.alpha, SPACE))
  ys = np.stack([mcea.polynomial_mutation(x, lo, hi, 3.0, rng) for _ in range(4000)])
  assert np.all((ys >= lo) & (ys <= hi)) and ys.dtype.kind == "i"
  # A gene is picked with probability 1 / 8; with eta = 3 the step is often < 0.5 and rounds back, so
  # fewer genes change (the official behaviour), and those that do mostly move by one.
  changed = ys != x
  assert 0.2 / len(x) < changed.mean() < 1 / len(x)
  assert np.mean(np.abs(ys - x)[changed] == 1) > 0.6
  pop = [x.copy() for _ in range(6)] + [np.asarray(mcea.encode_official(Alpha((1, 1, 1, 1), ((3,),) * 4), SPACE))]
  off = mcea.official_offspring(pop, np.arange(7.0), lo, hi, 3.0, rng)
  keys = [tuple(g) for g in off]
  assert len(set(keys)) == len(keys) and not set(keys) & {tuple(g) for g in pop}


def test_official_penalty_per_stage():
  s = mcea._Search(SPACE, TOY, CONFIG)
  ok = list((Scaling(1.0, 1.0, 32),) + TOY.targets)
  big = [ok[0], ok[1], Scaling(1.45, 1.45, 48)]  # stage 2 far over its budget
  f_ok, f_big = s.fitness([TOY.alpha, TOY.alpha], ok)[0], s.fitness([TOY.alpha], big)[0]
  assert f_ok == pytest.approx(0.9)  # mean over S_1, S_2 of the toy accuracies
  f2 = path_macs(TOY.alpha, big[2], SPACE)
  penalty = mcea.infeasible_score(f2, 4 * SPACE.base_target)
  assert penalty < 0.03 and f_big == pytest.approx((TOY.accuracy(TOY.alpha, ok[1]) + penalty) / 2)
  tiny = Alpha((1, 1, 1, 1), ((3,),) * 4)  # far below the base budget: a graded penalty above 3 %
  assert s.fitness([tiny], ok)[0] == pytest.approx(mcea.infeasible_score(base_macs(tiny, SPACE), SPACE.base_target))
  assert s.fitness([tiny], ok)[0] > 0.03
  with pytest.raises(ValueError, match="stages"):
    mcea._Search(SPACE, TOY, dataclasses.replace(CONFIG, pi=(1.0, 1.0, 1.0)))


def test_mcea_finds_the_brute_force_optimum(tmp_path):
  alpha, scalings, objective = brute_force_optimum()
  ev = CountingEval()
  res = mcea.run_mcea(SPACE, ev, CONFIG, state_path=str(tmp_path / "s.json"))
  assert res["alpha"] == alpha
  assert tuple(res["scalings"][1:]) == scalings
  assert res["objective"] == pytest.approx(objective, abs=1e-12)
  assert len(res["history"]) == 4 and res["phases_done"][-1] == "b1"
  pops = [h for h in res["history"] if h["phase"] == "alpha"]
  assert all(np.isfinite(h["pop_std"]) for h in pops)
  # batched: one evaluate call per generation / grid, many paths per call
  assert ev.paths / ev.calls > 5


def test_kill_and_resume_gives_same_result(tmp_path):
  cfg = CONFIG
  ev = CountingEval()
  ref = mcea.run_mcea(SPACE, ev, cfg, state_path=str(tmp_path / "ref.json"))
  assert ref["paths_evaluated"] == ev.paths > 0
  path = str(tmp_path / "run.json")
  with pytest.raises(KeyboardInterrupt):
    mcea.run_mcea(SPACE, CountingEval(fail_after=20), cfg, state_path=path)
  saved = json.load(open(path))
  assert 0 < len(saved["phases_done"]) < 5  # killed mid-run after some phases were saved
  ev, lines = CountingEval(), []
  res = mcea.run_mcea(SPACE, ev, cfg, state_path=path, progress=lines.append)
  assert res["alpha"] == ref["alpha"] and res["scalings"] == ref["scalings"]
  assert res["history"] == ref["history"]
  # the count spans both invocations: the saved phases' evaluations plus this one's (the killed phase is
  # redone; its score cache starts empty, so a resumed search evaluates at least as many paths)
  assert res["paths_evaluated"] == saved["paths_evaluated"] + ev.paths >= ref["paths_evaluated"]
  assert lines[0].endswith(f"[{saved['paths_evaluated']} paths evaluated]")  # progress counts on from the state
  assert lines[-1].endswith(f"[{res['paths_evaluated']} paths evaluated]")
  again = CountingEval()
  assert mcea.run_mcea(SPACE, again, cfg, state_path=path)["paths_evaluated"] == res["paths_evaluated"]
  assert again.paths == 0  # a finished state re-renders without evaluating (the report's count stays)
  with pytest.raises(ValueError, match="another space/config"):
    mcea.run_mcea(SPACE, CountingEval(), dataclasses.replace(cfg, seed=1), state_path=path)
