"""Markov-chain evolutionary algorithm (MCEA): joint search of the base model α and scalings S_1..S_M.

# Objective
max_{α, S_1..S_M} Σ_{j=0..M} π_j · ACC(S_j(α)) subject to the base budget on F(α) and the stage budgets
|F(S_j(α)) − 2^j F(α)| ≤ 2^j·stage_tol (S_0 = (1, 1, r_0)). ACC comes from a *batched* callable
`evaluate(list of (Alpha, Scaling)) -> list of float` (e.g. `evaluate.PathEvaluator`); every call
carries all the paths of one generation / grid, so a vmap evaluator sees large batches.

# Algorithm (a coupled Markov chain; `MCEAConfig` holds every knob)
1. *init*: K random base-feasible α; every S of each stage grid j ≥ 1 gets the mean ACC over the α
   for which it is stage-feasible; S_j ← best.
2. for t < T: *(a)* evolve α with the S_j fixed: population P, G generations, truncation selection of
   the top `parents`, uniform crossover, per-gene mutation, the best individual kept (elitism);
   infeasible α (base or any stage budget with the fixed S_j) get fitness −inf and are not evaluated.
   *(b)* with α fixed, re-search each S_j by enumerating its grid (feasible points only).
3. Output α, S_0..S_M, the objective, and per-iteration accuracy mean/std of the final population
   (`history`; it should shrink as the chain converges).

α genome: per stage one gene for the depth index and one kernel-index gene per base-depth slot (genes
beyond the depth are carried but not expressed).

# Resumability
The run is split into phases `init, a0, b0, a1, b1, ...`; phase p uses the RNG
`default_rng([seed, phase index])` and the JSON state file (`state_path`) is atomically rewritten after
each phase. A killed run restarted with the same config and state file skips the finished phases and
repeats the interrupted one from its start, so (with a deterministic `evaluate`) the result equals an
uninterrupted run. A state file written with another config is refused (ValueError).

```python
result = run_mcea(space, evaluate, MCEAConfig(iterations=4), state_path='workdir/mcea.json')
result['alpha'], result['scalings'], result['history']
```
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Callable, Sequence

import numpy as np

from scalenet_jax.nas.space import (Alpha, Scaling, SearchSpace, base_feasible, stage_feasible)

Evaluate = Callable[[Sequence[tuple[Alpha, Scaling]]], Sequence[float]]
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MCEAConfig:
  iterations: int = 4  # T (the official code runs 8)
  n_base: int = 20  # K random base models for the init scores
  population: int = 64
  generations: int = 40
  parents: int = 16  # truncation selection size
  mutation_prob: float = 0.1  # per gene
  pi: tuple[float, ...] | None = None  # weights over j = 0..M; None = uniform
  seed: int = 0
  max_tries: int = 100_000  # rejection-sampling limit for feasible random α

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["pi"] = None if self.pi is None else list(self.pi)
    return d


# ----------------------------------------------------------------------------------------------------
# Genome
# ----------------------------------------------------------------------------------------------------
def _slots(space: SearchSpace) -> list[int]:
  return [max(st.depth_choices) for st in space.stages]


def decode(genome: Sequence[int], space: SearchSpace) -> Alpha:
  depths, kernels, i = [], [], 0
  for st, n_slots in zip(space.stages, _slots(space)):
    n = st.depth_choices[genome[i]]
    ks = genome[i + 1 : i + 1 + n_slots]
    depths.append(n)
    kernels.append(tuple(space.kernels[k] for k in ks[:n]))
    i += 1 + n_slots
  return Alpha(tuple(depths), tuple(kernels))


def encode(alpha: Alpha, space: SearchSpace) -> list[int]:
  g = []
  for st, n_slots, n, ks in zip(space.stages, _slots(space), alpha.depths, alpha.kernels):
    kidx = [space.kernels.index(k) for k in ks]
    g += [st.depth_choices.index(n)] + kidx + [kidx[-1]] * (n_slots - n)
  return g


def _gene_sizes(space: SearchSpace) -> list[int]:
  out = []
  for st, n_slots in zip(space.stages, _slots(space)):
    out += [len(st.depth_choices)] + [len(space.kernels)] * n_slots
  return out


def _random_genome(sizes, rng) -> list[int]:
  return [int(rng.integers(n)) for n in sizes]


# ----------------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------------
class _Search:

  def __init__(self, space: SearchSpace, evaluate: Evaluate, cfg: MCEAConfig):
    self.space, self.evaluate, self.cfg = space, evaluate, cfg
    M1 = space.num_scaling_stages
    pi = np.ones(M1) if cfg.pi is None else np.asarray(cfg.pi, np.float64)
    if pi.shape != (M1,) or (pi < 0).any() or pi.sum() <= 0:
      raise ValueError(f"MCEAConfig.pi must be {M1} non-negative weights, got {cfg.pi}")
    self.pi = pi / pi.sum()
    self.sizes = _gene_sizes(space)
    self.cache: dict[tuple[Alpha, Scaling], float] = {}
    self.S0 = Scaling(1.0, 1.0, space.base_resolution)

  def acc(self, pairs: Sequence[tuple[Alpha, Scaling]]) -> list[float]:
    """Cached, batched accuracies (one `evaluate` call for all missing pairs)."""
    todo = list(dict.fromkeys(p for p in pairs if p not in self.cache))
    if todo:
      vals = list(self.evaluate(todo))
      if len(vals) != len(todo):
        raise ValueError(f"evaluate returned {len(vals)} accuracies for {len(todo)} paths")
      self.cache.update(zip(todo, (float(v) for v in vals)))
    return [self.cache[p] for p in pairs]

  def random_feasible_alpha(self, rng, scalings: Sequence[Scaling] | None = None) -> Alpha:
    """Random α meeting the base budget and, if `scalings` are given, preferably every stage budget
    with them (falls back to base-feasible after max_tries // 10 tries)."""
    strict = scalings is not None
    for i in range(self.cfg.max_tries):
      if strict and i == self.cfg.max_tries // 10:
        strict = False
      a = decode(_random_genome(self.sizes, rng), self.space)
      if self.feasible(a, scalings) if strict else base_feasible(a, self.space):
        return a
    raise RuntimeError(f"no base-feasible α found in {self.cfg.max_tries} tries; check the base budget")

  def feasible(self, alpha: Alpha, scalings: Sequence[Scaling]) -> bool:
    return base_feasible(alpha, self.space) and all(
        stage_feasible(alpha, S, j, self.space) for j, S in enumerate(scalings) if j > 0
    )

  def fitness(self, alphas: Sequence[Alpha], scalings: Sequence[Scaling]) -> np.ndarray:
    ok = [self.feasible(a, scalings) for a in alphas]
    pairs = [(a, S) for a, f in zip(alphas, ok) if f for S in scalings]
    accs = iter(self.acc(pairs))
    out = np.full(len(alphas), -np.inf)
    for i, f in enumerate(ok):
      if f:
        out[i] = sum(self.pi[j] * next(accs) for j in range(len(scalings)))
    return out

  # -- phases ------------------------------------------------------------------------------------------
  def init_scalings(self, rng) -> tuple[list[Scaling], dict]:
    alphas = [self.random_feasible_alpha(rng) for _ in range(self.cfg.n_base)]
    best, scores = [self.S0], {}
    for j in range(1, self.space.num_scaling_stages):
      grid = self.space.scalings(j)
      pairs = [(a, S) for S in grid for a in alphas if stage_feasible(a, S, j, self.space)]
      accs = dict(zip(pairs, self.acc(pairs)))
      sc = []
      for S in grid:
        v = [accs[(a, S)] for a in alphas if (a, S) in accs]
        sc.append(float(np.mean(v)) if v else -math.inf)
      if not np.isfinite(max(sc)):
        raise RuntimeError(f"no S of scaling stage {j} is feasible for any of {len(alphas)} random α")
      best.append(grid[int(np.argmax(sc))])
      scores[j] = [[S.to_dict(), s] for S, s in zip(grid, sc)]
    return best, scores

  def evolve_alpha(self, rng, scalings, start: Alpha | None):
    cfg = self.cfg
    pop = [] if start is None else [encode(start, self.space)]
    while len(pop) < cfg.population:
      pop.append(encode(self.random_feasible_alpha(rng, scalings), self.space))
    for g in range(cfg.generations):
      fit = self.fitness([decode(x, self.space) for x in pop], scalings)
      order = np.argsort(-fit, kind="stable")
      parents = [pop[i] for i in order[: cfg.parents] if np.isfinite(fit[i])] or [pop[order[0]]]
      if g == cfg.generations - 1:
        break
      children = [parents[0]]  # elitism
      while len(children) < cfg.population:
        a, b = (parents[int(i)] for i in rng.integers(len(parents), size=2))
        cross = rng.random(len(a)) < 0.5
        child = [x if c else y for x, y, c in zip(a, b, cross)]
        mut = rng.random(len(child)) < cfg.mutation_prob
        child = [int(rng.integers(n)) if m else x for x, n, m in zip(child, self.sizes, mut)]
        children.append(child)
      pop = children
    best = decode(pop[int(order[0])], self.space)
    finite = fit[np.isfinite(fit)]
    if not len(finite):
      raise RuntimeError("MCEA: no feasible α in the final population; widen the budgets or max_tries")
    return best, float(fit[order[0]]), float(finite.mean()), float(finite.std())

  def search_scalings(self, alpha: Alpha):
    best, stats = [self.S0], []
    for j in range(1, self.space.num_scaling_stages):
      grid = [S for S in self.space.scalings(j) if stage_feasible(alpha, S, j, self.space)]
      if not grid:
        raise RuntimeError(f"no S of scaling stage {j} is feasible for α={alpha}")
      accs = self.acc([(alpha, S) for S in grid])
      best.append(grid[int(np.argmax(accs))])
      stats.append((float(np.mean(accs)), float(np.std(accs))))
    return best, stats


# ----------------------------------------------------------------------------------------------------
# Driver with a resumable state file
# ----------------------------------------------------------------------------------------------------
PHASE_NAMES = {"i": "K random bases", "a": "evolve α, iteration", "b": "search S_j, iteration"}


def _save(path: str, state: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(state, f, indent=1)
  os.replace(tmp, path)  # atomic: a kill never leaves a half-written state


def run_mcea(
    space: SearchSpace,
    evaluate: Evaluate,
    config: MCEAConfig = MCEAConfig(),
    state_path: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
  """Runs (or resumes) MCEA; returns {'alpha', 'scalings' (S_0..S_M), 'objective', 'history',
  'init_scores', 'phases_done'} with Alpha/Scaling objects for alpha/scalings. `progress` receives a
  line at the start and end of every phase (default: this module's logger at INFO)."""
  say = progress or log.info
  s = _Search(space, evaluate, config)
  phases = ["init"] + [f"{p}{t}" for t in range(config.iterations) for p in ("a", "b")]
  state = {
      "space": space.name,
      "config": config.to_dict(),
      "phases_done": [],
      "alpha": None,
      "scalings": None,
      "objective": None,
      "history": [],
      "init_scores": None,
  }
  if state_path and os.path.exists(state_path):
    with open(state_path) as f:
      old = json.load(f)
    if old.get("config") != state["config"] or old.get("space") != space.name:
      raise ValueError(f"MCEA state {state_path} was written with another space/config; " f"use a new state path")
    state = old
  alpha = Alpha.from_dict(state["alpha"]) if state["alpha"] else None
  scalings = [Scaling.from_dict(d) for d in state["scalings"]] if state["scalings"] else None
  for k, phase in enumerate(phases):
    if phase in state["phases_done"]:
      continue
    rng = np.random.default_rng([config.seed, k])
    say(f"MCEA phase {k + 1}/{len(phases)} ({PHASE_NAMES[phase[0]]}{'' if phase == 'init' else ' ' + phase[1:]})")
    if phase == "init":
      scalings, state["init_scores"] = s.init_scalings(rng)
    elif phase[0] == "a":
      alpha, obj, mean, std = s.evolve_alpha(rng, scalings, alpha)
      state["objective"] = obj
      state["history"].append(
          {"iteration": int(phase[1:]), "phase": "alpha", "objective": obj, "pop_mean": mean, "pop_std": std}
      )
      say(f"MCEA {phase}: objective {obj:.4f}, population mean {mean:.4f} std {std:.4f}")
    else:
      scalings, stats = s.search_scalings(alpha)
      state["objective"] = float(s.fitness([alpha], scalings)[0])
      state["history"].append(
          {
              "iteration": int(phase[1:]),
              "phase": "scaling",
              "objective": state["objective"],
              "grid_mean_std": [list(x) for x in stats],
          }
      )
      say(f"MCEA {phase}: objective {state['objective']:.4f}, S={[S.to_dict() for S in scalings]}")
    state["alpha"] = alpha.to_dict() if alpha else None
    state["scalings"] = [S.to_dict() for S in scalings]
    state["phases_done"].append(phase)
    if state_path:
      _save(state_path, state)
  out = dict(state)
  out["alpha"], out["scalings"] = alpha, scalings
  return out
