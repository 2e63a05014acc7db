"""Markov-chain evolutionary algorithm (MCEA): joint search of the base model α and scalings S_1..S_M.

The objective and its infeasibility scores, the algorithm (init, α evolution by the GA, S_j grid
search) and the resumable phases are described in `docs/nas.md` §6.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable, Sequence

import ml_collections
import numpy as np

from scalenet_jax import paths
from scalenet_jax.errors import ConfigError
from scalenet_jax.nas.space import Alpha, Scaling, SearchSpace, base_feasible, base_macs, path_macs

Evaluate = Callable[[Sequence[tuple[Alpha, Scaling]]], Sequence[float]]
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MCEAConfig:
  """Every knob of `run_mcea`; the defaults are the official ImageNet search (`mcea_searching.yaml`)."""

  iterations: int = 8  # T (the paper finds 4 enough)
  n_base: int = 20  # K random base models for the init scores
  population: int = 64
  generations: int = 40  # including the initial population (pymoo's n_gen)
  include_s0: bool = False  # objective over S_0..S_M instead of S_1..S_M
  eta_mutation: float = 3.0  # polynomial mutation index
  pi: tuple[float, ...] | None = None  # weights of the objective's stages; None = uniform
  seed: int = 0
  max_tries: int = 100_000  # rejection-sampling limit for feasible random α

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["pi"] = None if self.pi is None else list(self.pi)
    return d

  @classmethod
  def from_config(cls, cfg) -> "MCEAConfig":
    """The MCEAConfig fields present in a mapping (e.g. a search ConfigDict with evaluator fields too)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in dict(cfg).items() if k in names}
    if kw.get("pi") is not None:
      kw["pi"] = tuple(kw["pi"])
    return cls(**kw)


def search_config(**overrides) -> ml_collections.ConfigDict:
  """The `search` section of a search config (`configs/nas_*_search.py`): every `MCEAConfig` field
  with its default (the official ImageNet search; `pi` only when given) plus the evaluator's
  `vmap_size` and `eval_batch_size`. Unknown keys are refused."""
  c = ml_collections.ConfigDict({k: v for k, v in MCEAConfig().to_dict().items() if k != "pi"})
  c.vmap_size = 16
  c.eval_batch_size = 100
  for k, v in overrides.items():
    if k not in c and k != "pi":
      raise KeyError(f"unknown search config field {k!r}")
    c[k] = v
  return c


# ----------------------------------------------------------------------------------------------------
# Genomes
# ----------------------------------------------------------------------------------------------------
def _slots(space: SearchSpace) -> list[int]:
  return [max(st.depth_choices) for st in space.stages]


def decode(genome: Sequence[int], space: SearchSpace) -> Alpha:
  """Random-α genome → α: per stage a depth-index gene, then one kernel-index gene per slot."""
  depths, kernels, i = [], [], 0
  for st, n_slots in zip(space.stages, _slots(space)):
    n = st.depth_choices[genome[i]]
    ks = genome[i + 1 : i + 1 + n_slots]
    depths.append(n)
    kernels.append(tuple(space.kernels[k] for k in ks[:n]))
    i += 1 + n_slots
  return Alpha(tuple(depths), tuple(kernels))


def _gene_sizes(space: SearchSpace) -> list[int]:
  out = []
  for st, n_slots in zip(space.stages, _slots(space)):
    out += [len(st.depth_choices)] + [len(space.kernels)] * n_slots
  return out


def _random_genome(sizes, rng) -> list[int]:
  return [int(rng.integers(n)) for n in sizes]


def _check_official_genome(space: SearchSpace) -> None:
  for s, st in enumerate(space.stages):
    if tuple(st.depth_choices) != tuple(range(1, max(st.depth_choices) + 1)):
      raise ValueError(f"MCEA needs depth choices 1..n (identity genes); stage {s} has {st.depth_choices}")


def official_bounds(space: SearchSpace) -> tuple[np.ndarray, np.ndarray]:
  """(lower, upper) of the GA's genes: 0 (identity) or 1..3 per slot, the first slot ≥ 1."""
  lo, hi = [], []
  for n_slots in _slots(space):
    lo += [1] + [0] * (n_slots - 1)
    hi += [len(space.kernels)] * n_slots
  return np.asarray(lo), np.asarray(hi)


def decode_official(genome: Sequence[int], space: SearchSpace) -> Alpha:
  """GA genome → α: the non-identity genes of a stage, in order, are its layers."""
  depths, kernels, i = [], [], 0
  for n_slots in _slots(space):
    ops = [int(g) for g in genome[i : i + n_slots] if g > 0]
    depths.append(len(ops))
    kernels.append(tuple(space.kernels[g - 1] for g in ops))
    i += n_slots
  return Alpha(tuple(depths), tuple(kernels))


def encode_official(alpha: Alpha, space: SearchSpace) -> list[int]:
  g = []
  for n_slots, ks in zip(_slots(space), alpha.kernels):
    g += [space.kernels.index(k) + 1 for k in ks] + [0] * (n_slots - len(ks))
  return g


# ----------------------------------------------------------------------------------------------------
# Official GA operators (pymoo 0.3 NSGA-Net with one objective, restated)
# ----------------------------------------------------------------------------------------------------
def tournament(fit: np.ndarray, n: int, rng) -> np.ndarray:
  """n winners of binary tournaments over random permutations of the population (higher fitness wins,
  ties at random)."""
  pool = np.concatenate([rng.permutation(len(fit)) for _ in range(-(-2 * n // len(fit)))])[: 2 * n]
  a, b = pool[0::2], pool[1::2]
  tie = fit[a] == fit[b]
  return np.where(tie, np.where(rng.random(n) < 0.5, a, b), np.where(fit[a] > fit[b], a, b))


def two_point_crossover(p1: np.ndarray, p2: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
  """Both children of swapping the genes between two distinct random cut points."""
  n = len(p1)
  a, b = sorted(rng.permutation(np.arange(1, n))[:2]) if n > 2 else (1, n)
  c1, c2 = p1.copy(), p2.copy()
  c1[a:b], c2[a:b] = p2[a:b], p1[a:b]
  return c1, c2


def polynomial_mutation(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, eta: float, rng) -> np.ndarray:
  """Deb's polynomial mutation of integer genes: each gene with probability 1 / len(x) moves by a
  polynomially distributed step inside [lo − 0.5, hi + 0.5) and is rounded back into [lo, hi]."""
  y = x.astype(np.float64)
  do = rng.random(len(x)) < 1.0 / len(x)
  xl, xu = lo[do] - 0.5, hi[do] + 0.5 - 1e-16
  v, u = y[do], rng.random(int(do.sum()))
  d1, d2 = (v - xl) / (xu - xl), (xu - v) / (xu - xl)
  p = 1.0 / (eta + 1.0)
  down = np.power(2 * u + (1 - 2 * u) * np.power(1 - d1, eta + 1), p) - 1
  up = 1 - np.power(2 * (1 - u) + 2 * (u - 0.5) * np.power(1 - d2, eta + 1), p)
  y[do] = np.clip(v + np.where(u <= 0.5, down, up) * (xu - xl), xl, xu)
  return np.clip(np.rint(y), lo, hi).astype(np.int64)


def official_offspring(pop: list[np.ndarray], fit: np.ndarray, lo, hi, eta: float, rng) -> list[np.ndarray]:
  """len(pop) new genomes: tournament → two-point crossover → polynomial mutation, dropping any genome
  already in the population or already made (up to 100 mating rounds, as pymoo)."""
  seen = {tuple(g) for g in pop}
  off = []
  for _ in range(100):
    need = len(pop) - len(off)
    if need <= 0:
      break
    parents = tournament(fit, 2 * -(-need // 2), rng)
    for a, b in zip(parents[0::2], parents[1::2]):
      for child in two_point_crossover(pop[a], pop[b], rng):
        child = polynomial_mutation(child, lo, hi, eta, rng)
        if tuple(child) not in seen and len(off) < len(pop):
          seen.add(tuple(child))
          off.append(child)
  return off


# ----------------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------------
def infeasible_score(macs: float, target: float) -> float:
  """The official score of a point off its budget, 3 + relative FLOPs shortfall, in accuracy percent
  (so / 100 here): ≈ 0.03, a little higher for smaller networks."""
  return (3.0 + (target - macs) / target) / 100.0


class _Search:

  def __init__(self, space: SearchSpace, evaluate: Evaluate, cfg: MCEAConfig):
    self.space, self.evaluate, self.cfg = space, evaluate, cfg
    self.js = list(range(0 if cfg.include_s0 else 1, space.num_scaling_stages))
    pi = np.ones(len(self.js)) if cfg.pi is None else np.asarray(cfg.pi, np.float64)
    if pi.shape != (len(self.js),) or (pi < 0).any() or pi.sum() <= 0:
      raise ValueError(f"MCEAConfig.pi must be {len(self.js)} non-negative weights (stages {self.js}), got {cfg.pi}")
    self.pi = pi / pi.sum()
    self.sizes = _gene_sizes(space)
    _check_official_genome(space)
    self.cache: dict[tuple[Alpha, Scaling], float] = {}
    self.S0 = Scaling(1.0, 1.0, space.base_resolution)
    # The official code checks the stages against the base tolerance while α evolves.
    self.alpha_stage_tol = space.base_tol

  def acc(self, pairs: Sequence[tuple[Alpha, Scaling]]) -> list[float]:
    """Cached, batched accuracies (one `evaluate` call for all missing pairs)."""
    todo = list(dict.fromkeys(p for p in pairs if p not in self.cache))
    if todo:
      vals = list(self.evaluate(todo))
      if len(vals) != len(todo):
        raise ValueError(f"evaluate returned {len(vals)} accuracies for {len(todo)} paths")
      self.cache.update(zip(todo, (float(v) for v in vals)))
    return [self.cache[p] for p in pairs]

  def stage_ok(self, alpha: Alpha, S: Scaling, j: int, tol: float) -> bool:
    return abs(path_macs(alpha, S, self.space) - 2**j * base_macs(alpha, self.space)) <= 2**j * tol

  def random_feasible_alpha(self, rng) -> Alpha:
    """Random α meeting the base budget (rejection sampling, at most `max_tries` draws)."""
    for _ in range(self.cfg.max_tries):
      a = decode(_random_genome(self.sizes, rng), self.space)
      if base_feasible(a, self.space):
        return a
    raise RuntimeError(f"no base-feasible α found in {self.cfg.max_tries} tries; check the base budget")

  def feasible(self, alpha: Alpha, scalings: Sequence[Scaling]) -> bool:
    return base_feasible(alpha, self.space) and all(
        self.stage_ok(alpha, S, j, self.alpha_stage_tol) for j, S in enumerate(scalings) if j > 0
    )

  def fitness(self, alphas: Sequence[Alpha], scalings: Sequence[Scaling]) -> np.ndarray:
    """π-weighted objective of every α with the S_j fixed (`docs/nas.md` §6: infeasible points)."""
    sp = self.space
    scores = []  # per α: its penalty, or a list with a penalty or a pair to evaluate per stage
    for a in alphas:
      if not base_feasible(a, sp):
        scores.append(infeasible_score(base_macs(a, sp), sp.base_target))
        continue
      row = []
      for j in self.js:
        if self.stage_ok(a, scalings[j], j, self.alpha_stage_tol):
          row.append((a, scalings[j]))
        else:
          row.append(infeasible_score(path_macs(a, scalings[j], sp), 2**j * sp.base_target))
      scores.append(row)
    pairs = [x for row in scores if isinstance(row, list) for x in row if isinstance(x, tuple)]
    accs = dict(zip(pairs, self.acc(pairs)))
    out = np.empty(len(alphas))
    for i, row in enumerate(scores):
      if isinstance(row, float):
        out[i] = row
      else:
        out[i] = sum(w * (accs[x] if isinstance(x, tuple) else x) for w, x in zip(self.pi, row))
    return out

  # -- phases ------------------------------------------------------------------------------------------
  def init_scalings(self, rng) -> tuple[list[Scaling], dict]:
    alphas = [self.random_feasible_alpha(rng) for _ in range(self.cfg.n_base)]
    best, scores = [self.S0], {}
    for j in range(1, self.space.num_scaling_stages):
      grid = self.space.scalings(j)
      pairs = [(a, S) for S in grid for a in alphas if self.stage_ok(a, S, j, self.space.stage_tol)]
      accs = dict(zip(pairs, self.acc(pairs)))
      sc = [self._init_score(alphas, S, j, accs) for S in grid]
      if not np.isfinite(max(sc)):
        raise RuntimeError(f"no S of scaling stage {j} is feasible for any of {len(alphas)} random α")
      best.append(grid[int(np.argmax(sc))])
      scores[j] = [[S.to_dict(), s] for S, s in zip(grid, sc)]
    return best, scores

  def _init_score(self, alphas, S: Scaling, j: int, accs: dict) -> float:
    """Score of S over the K bases: S is kept if the bases' mean FLOPs error is in budget, and scores
    the mean of their accuracies and penalties."""
    sp = self.space
    err = np.mean([abs(path_macs(a, S, sp) - 2**j * base_macs(a, sp)) for a in alphas])
    if err > 2**j * sp.stage_tol:
      return -math.inf
    v = [accs.get((a, S), infeasible_score(path_macs(a, S, sp), 2**j * sp.base_target)) for a in alphas]
    return float(np.mean(v))

  def evolve_alpha(self, rng, scalings):
    """(best α, its objective, mean and std of the final population's accuracy objective)."""
    pop, fit = self._evolve(rng, scalings)
    alphas = [decode_official(g, self.space) for g in pop]
    i = int(np.argmax(fit))
    # Spread of the accuracy objective over the individuals feasible at every stage (penalties would
    # dominate the std otherwise), or over all of them if none is.
    ok = np.array([self.feasible(a, scalings) for a in alphas])
    ok = ok if ok.any() else np.ones(len(fit), bool)
    return alphas[i], float(fit[i]), float(fit[ok].mean()), float(fit[ok].std())

  def _evolve(self, rng, scalings):
    cfg = self.cfg
    lo, hi = official_bounds(self.space)
    pop = [np.asarray(encode_official(self.random_feasible_alpha(rng), self.space)) for _ in range(cfg.population)]
    fit = self.fitness([decode_official(g, self.space) for g in pop], scalings)
    for _ in range(cfg.generations - 1):
      off = official_offspring(pop, fit, lo, hi, cfg.eta_mutation, rng)
      if not off:
        break
      pop = pop + off
      fit = np.concatenate([fit, self.fitness([decode_official(g, self.space) for g in off], scalings)])
      keep = np.lexsort((rng.random(len(pop)), -fit))[: cfg.population]  # best first, ties at random
      pop, fit = [pop[k] for k in keep], fit[keep]
    return pop, fit

  def search_scalings(self, alpha: Alpha):
    best, stats = [self.S0], []
    for j in range(1, self.space.num_scaling_stages):
      grid = [S for S in self.space.scalings(j) if self.stage_ok(alpha, S, j, self.space.stage_tol)]
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
  paths.write_json(path, state)  # atomic: a kill never leaves a half-written state


def run_mcea(
    space: SearchSpace,
    evaluate: Evaluate,
    config: MCEAConfig = MCEAConfig(),
    state_path: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
  """Runs (or resumes) MCEA; returns {'alpha', 'scalings' (S_0..S_M), 'objective', 'history',
  'init_scores', 'phases_done', 'paths_evaluated'} with Alpha/Scaling objects for alpha/scalings. `progress` receives a
  line at the start and end of every phase, ending in the paths evaluated so far (default: this module's
  logger at INFO)."""
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
      "paths_evaluated": 0,  # by the finished phases, over every invocation (a resumed run adds to it)
  }
  if state_path and paths.path(state_path).exists():
    old = paths.read_json(state_path)
    if old.get("config") != state["config"] or old.get("space") != space.name:
      raise ConfigError(f"MCEA state {state_path} was written with another space/config; " f"use a new state path")
    state = {"paths_evaluated": None, **old}  # None: written before the count was kept
  n_evals = [state["paths_evaluated"] or 0]

  def counted(pairs):
    n_evals[0] += len(pairs)
    return evaluate(pairs)

  s = _Search(space, counted, config)
  say = lambda line: (progress or log.info)(f"{line} [{n_evals[0]} paths evaluated]")
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
      alpha, obj, mean, std = s.evolve_alpha(rng, scalings)
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
    if state["paths_evaluated"] is not None:
      state["paths_evaluated"] = n_evals[0]
    if state_path:
      _save(state_path, state)
  out = dict(state)
  out["alpha"], out["scalings"] = alpha, scalings
  return out
