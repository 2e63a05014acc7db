"""Generalising searched scaling strategies to larger stages (paper §3.4 / Fig. 7).

The fits and the extrapolation along the fitted direction under the MACs budget: `docs/nas.md` §7.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import optimize

from scalenet_jax import paths
from scalenet_jax.nas.space import Alpha, Scaling, SearchSpace, base_macs, path_macs

DIMS = ("d", "w", "r")


def exp_curve(j, a0, a1):
  return a0 * (np.power(a1, j) - 1.0) + 1.0


# No dimension can grow faster than the budget, which doubles per stage (MACs are linear in d and
# quadratic in w and r), so the growth rate a1 is capped at 2. Without the cap a series such as
# r = (1, 1, 1.25) (flat, then a jump) is "fitted" by a1 -> inf, a0 -> 0, and the extrapolated stage
# scales resolution alone.
A1_MAX = 2.0


def fit_exponential(js: Sequence[float], xs: Sequence[float]) -> tuple[float, float]:
  """Least-squares (a0, a1) of x_j = a0·(a1^j − 1) + 1 with 0 < a1 <= A1_MAX.

  Started from a concave, a linear-ish and a convex a1 (the best is kept): a single start near a1 = 1
  can stall on the a1 -> 1, a0 -> inf ridge that imitates a straight line."""
  js, xs = np.asarray(js, np.float64), np.asarray(xs, np.float64)
  if len(js) < 2:
    raise ValueError("fit_exponential needs at least two points")
  best = None
  for a1 in (0.5, 1.5, 1.9):
    res = optimize.least_squares(
        lambda p: exp_curve(js, *p) - xs,
        x0=(0.5, a1),
        bounds=([-np.inf, 1e-6], [np.inf, A1_MAX]),
        xtol=1e-14,
        ftol=1e-14,
        gtol=1e-14,
        max_nfev=20000,
    )
    if best is None or res.cost < best.cost - 1e-15:
      best = res
  return float(best.x[0]), float(best.x[1])


def fit_linear(js, xs) -> tuple[float]:
  """b of x = 1 + b·j (least squares)."""
  js, xs = np.asarray(js, np.float64), np.asarray(xs, np.float64)
  return (float(np.dot(js, xs - 1) / np.dot(js, js)),)


def fit_quadratic(js, xs) -> tuple[float, float]:
  """(b, c) of x = 1 + b·j + c·j² (least squares)."""
  js, xs = np.asarray(js, np.float64), np.asarray(xs, np.float64)
  A = np.stack([js, js**2], 1)
  sol, *_ = np.linalg.lstsq(A, xs - 1, rcond=None)
  return float(sol[0]), float(sol[1])


CURVES = {
    "exp": (fit_exponential, exp_curve),
    "linear": (fit_linear, lambda j, b: 1.0 + b * np.asarray(j, np.float64)),
    "quadratic": (
        fit_quadratic,
        lambda j, b, c: 1.0 + b * np.asarray(j, np.float64) + c * np.asarray(j, np.float64) ** 2,
    ),
}


def _series(scalings: Sequence[Scaling], space: SearchSpace) -> dict[str, np.ndarray]:
  r0 = space.base_resolution
  return {
      "d": np.array([S.d for S in scalings]),
      "w": np.array([S.w for S in scalings]),
      "r": np.array([S.r / r0 for S in scalings]),
  }


def fit_all(scalings: Sequence[Scaling], space: SearchSpace, kind: str = "exp") -> dict[str, tuple]:
  """Per-dimension fit parameters of `kind` ('exp' | 'linear' | 'quadratic') to S_0..S_M."""
  if kind not in CURVES:
    raise ValueError(f"unknown fit kind {kind!r}; known: {sorted(CURVES)}")
  js = np.arange(len(scalings), dtype=np.float64)
  fit = CURVES[kind][0]
  return {k: fit(js, v) for k, v in _series(scalings, space).items()}


def predict(fits: dict, j: float, kind: str = "exp") -> dict[str, float]:
  curve = CURVES[kind][1]
  return {k: float(curve(j, *p)) for k, p in fits.items()}


def _point(x: dict, t: float, r0: int) -> Scaling:
  d, w, r = (1 + t * (x[k] - 1) for k in DIMS)
  return Scaling(round(max(d, 1.0), 3), round(max(w, 1.0), 3), int(round(max(r, 1.0) * r0)))


def extrapolate(
    alpha: Alpha,
    scalings: Sequence[Scaling],
    space: SearchSpace,
    stages: Sequence[int],
    kind: str = "exp",
    iters: int = 60,
) -> list[Scaling]:
  """S_j for each j in `stages`: the point on the fitted direction whose MACs are closest to 2^j·F(α)."""
  fits = fit_all(scalings, space, kind)
  f0, r0 = base_macs(alpha, space), space.base_resolution
  out = []
  for j in stages:
    x, target = predict(fits, j, kind), (2**j) * f0
    if all(abs(x[k] - 1) < 1e-9 for k in DIMS):
      raise ValueError(f"fitted point of stage {j} is S_0; cannot scale towards the budget")
    macs = lambda t: path_macs(alpha, _point(x, t, r0), space)
    lo, hi = 0.0, 1.0
    while macs(hi) < target:
      hi *= 2
      if hi > 1e4:
        raise RuntimeError(f"stage {j}: budget {target:.3g} MACs not reachable along the fitted direction")
    for _ in range(iters):
      mid = 0.5 * (lo + hi)
      lo, hi = (mid, hi) if macs(mid) < target else (lo, mid)
    out.append(min((_point(x, lo, r0), _point(x, hi, r0)), key=lambda S: abs(path_macs(alpha, S, space) - target)))
  return out


def plot_fits(
    scalings: Sequence[Scaling], space: SearchSpace, path: str, extra_stages: int = 2, released: Sequence[Scaling] = ()
) -> None:
  """PNG with one panel per dimension: searched points, exp/linear/quadratic fits, released points."""
  plt = paths.pyplot()

  data = _series(scalings, space)
  M = len(scalings) - 1
  jj = np.linspace(0, M + extra_stages, 100)
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
  for ax, k in zip(axes, DIMS):
    ax.plot(np.arange(M + 1), data[k], "ko", label="searched")
    for kind, (fit, curve) in CURVES.items():
      p = fit(np.arange(M + 1, dtype=np.float64), data[k])
      ax.plot(jj, curve(jj, *p), label=kind)
    if released:
      rel = _series(released, space)[k]
      ax.plot(np.arange(len(rel)), rel, "x", color="red", label="released")
    ax.set_title({"d": "depth", "w": "width", "r": "resolution / r0"}[k])
    ax.set_xlabel("scaling stage j")
  axes[0].legend()
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=110)
  plt.close(fig)
