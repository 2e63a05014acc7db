"""Path samplers for super-supernet training: hierarchical (HSS) and uniform.

The samplers, their (seed, step) determinism, the BCNet slice sides and the CLI are described in
`docs/nas.md` §3.
"""

from __future__ import annotations

import argparse
import json
from typing import Sequence

import numpy as np

from scalenet_jax import paths
from scalenet_jax.nas.space import Alpha, Scaling, SearchSpace, get_space, left_sides, path_macs

METHODS = ("hss", "hss_uniform", "uniform")
SIDE_STREAM = 1  # third seed word of the sides' generator (the path's generator has two)


def step_rng(seed: int, step: int) -> np.random.Generator:
  """The generator for one training step: a pure function of (seed, step)."""
  return np.random.default_rng([int(seed), int(step)])


def sample_alpha(space: SearchSpace, rng: np.random.Generator) -> Alpha:
  """Uniform base model: depth uniform over each stage's choices, each kernel uniform."""
  depths = tuple(int(rng.choice(st.depth_choices)) for st in space.stages)
  kernels = tuple(tuple(int(rng.choice(space.kernels)) for _ in range(n)) for n in depths)
  return Alpha(depths, kernels)


def stage_probs(space: SearchSpace, eta: str | Sequence[float] = "width") -> np.ndarray:
  """η over scaling stages: 'width' (∝ number of width candidates), 'uniform', or explicit weights."""
  if isinstance(eta, str):
    if eta == "width":
      p = np.asarray(space.width_counts(), np.float64)
    elif eta == "uniform":
      p = np.ones(space.num_scaling_stages)
    else:
      raise ValueError(f"unknown eta {eta!r}; use 'width', 'uniform' or a list of weights")
  else:
    p = np.asarray(eta, np.float64)
    if p.shape != (space.num_scaling_stages,) or (p < 0).any() or p.sum() <= 0:
      raise ValueError(f"eta must be {space.num_scaling_stages} non-negative weights, got {eta}")
  return p / p.sum()


def sample_scaling_hss(space: SearchSpace, rng: np.random.Generator, eta="width") -> tuple[int, Scaling]:
  """(j, S): stage j ~ η, then d, w, r uniform inside stage j."""
  j = int(rng.choice(space.num_scaling_stages, p=stage_probs(space, eta)))
  m = space.mult_candidates[j]
  S = Scaling(float(rng.choice(m)), float(rng.choice(m)), int(rng.choice(space.res_candidates[j])))
  return j, S


def sample_scaling_uniform(space: SearchSpace, rng: np.random.Generator) -> Scaling:
  """Each of d, w, r uniform over the union of all stages' candidates."""
  mults = sorted({m for ms in space.mult_candidates for m in ms})
  res = sorted({r for rs in space.res_candidates for r in rs})
  return Scaling(float(rng.choice(mults)), float(rng.choice(mults)), int(rng.choice(res)))


def sample_path(
    space: SearchSpace, method: str = "hss", seed: int = 0, step: int = 0, eta="width"
) -> tuple[Alpha, Scaling]:
  """(α, S) for training step `step`. method: 'hss' (η given by `eta`, default ∝ width counts),
  'hss_uniform' (η uniform), 'uniform' (baseline)."""
  rng = step_rng(seed, step)
  alpha = sample_alpha(space, rng)
  if method == "hss":
    _, S = sample_scaling_hss(space, rng, eta)
  elif method == "hss_uniform":
    _, S = sample_scaling_hss(space, rng, "uniform")
  elif method == "uniform":
    S = sample_scaling_uniform(space, rng)
  else:
    raise ValueError(f"unknown sampling method {method!r}; known: {METHODS}")
  return alpha, S


def sample_sides(space: SearchSpace, seed: int = 0, step: int = 0, asyn: bool = True) -> dict:
  """BCNet slice sides of step `step` (`space.left_sides` format; see `docs/nas.md` §3). All left for
  a `'left'`-coupling space."""
  ref = left_sides(space)
  if space.coupling == "left":
    return ref
  n = [len(x) for x in ref["stages"]]
  if asyn:
    bits = [int(b) for b in np.random.default_rng([int(seed), int(step), SIDE_STREAM]).integers(0, 2, 2 + sum(n))]
  else:
    bits = [int(step) % 2] * (2 + sum(n))
  ends = np.cumsum([2] + n)
  return {"stem": bits[0], "head": bits[1], "stages": tuple(tuple(bits[a:b]) for a, b in zip(ends[:-1], ends[1:]))}


def sample_macs(space: SearchSpace, method: str, n: int, seed: int = 0) -> np.ndarray:
  """MACs of n sampled paths (steps 0..n-1)."""
  return np.asarray([path_macs(*sample_path(space, method, seed, i), space) for i in range(n)], np.float64)


def count_modes(values: np.ndarray, bins: int = 60, smooth: float = 2.0, min_prominence: float = 0.05) -> int:
  """Number of local maxima of a Gaussian-smoothed histogram of log(values) whose height exceeds
  `min_prominence` × the global max and that are separated from the next maximum by a dip."""
  x = np.log(np.asarray(values, np.float64))
  h, _ = np.histogram(x, bins=bins)
  k = np.arange(-4 * smooth, 4 * smooth + 1)
  g = np.exp(-0.5 * (k / smooth) ** 2)
  hs = np.convolve(h, g / g.sum(), mode="same")
  peaks = [
      i for i in range(1, bins - 1) if hs[i] > hs[i - 1] and hs[i] >= hs[i + 1] and hs[i] >= min_prominence * hs.max()
  ]
  return len(peaks)


def plot_histograms(space: SearchSpace, macs: dict, path: str) -> None:
  plt = paths.pyplot()

  fig, ax = plt.subplots(figsize=(7, 4))
  allv = np.concatenate(list(macs.values())) / 1e6
  bins = np.geomspace(allv.min(), allv.max(), 70)
  for name, v in macs.items():
    ax.hist(v / 1e6, bins=bins, histtype="step", lw=1.8, label=f"{name} ({count_modes(v)} modes)")
  ax.set_xscale("log")
  ax.set_xlabel("MMACs")
  ax.set_ylabel("paths")
  ax.set_title(f"Sampled path MACs, space '{space.name}' (n={len(allv) // len(macs)})")
  ax.legend()
  fig.tight_layout()
  paths.save_figure(fig, path)
  plt.close(fig)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description="Plot FLOPs histograms of HSS vs uniform path sampling.")
  ap.add_argument("--space", default="fmnist", choices=["fmnist", "imagenet", "tiny"])
  ap.add_argument("--n", type=int, default=5000)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  space = get_space(args.space)
  out = paths.path(args.out)
  macs = {m: sample_macs(space, m, args.n, args.seed) for m in METHODS}
  png = out / f"flops_hist_{space.name}.png"
  plot_histograms(space, macs, png)
  summary = {
      m: {
          "modes": count_modes(v),
          "median_macs": float(np.median(v)),
          "p5": float(np.percentile(v, 5)),
          "p95": float(np.percentile(v, 95)),
      }
      for m, v in macs.items()
  }
  paths.write_json(out / f"flops_{space.name}.json", summary)
  print(json.dumps(summary, indent=1))
  print(f"wrote {png}")


if __name__ == "__main__":
  main()
