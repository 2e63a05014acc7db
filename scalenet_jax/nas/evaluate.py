"""Batched evaluation of supernet paths: `jax.vmap` over path masks, and a sequential reference.

# Usage

```python
ev = PathEvaluator(SuperNet(space), params, space, batches=minival)   # minival: list of (images, labels)
accs = ev([(alpha, S), ...])            # vmap evaluator; also the MCEA objective
accs_ref = ev.evaluate_sequential([(alpha, S), ...])
```

* `batches`: list of `(images NHWC float32, labels int)` at any resolution, or a dict
  `{resolution: list of (images, labels)}` (e.g. center crops made by the input pipeline at each
  resolution). A list is resized to each path's resolution with `jax.image.resize` (bilinear).
* Paths are grouped by resolution; each group is run in chunks of `vmap_size` paths with one compiled
  function `vmap(apply, in_axes=path)` per resolution (the last chunk is padded by repeating its last
  path so the shape, hence the compiled program, never changes). Accuracy = correct / total over all
  batches.
* BN uses the statistics of each evaluated batch (per path), as the official one-shot evaluation does.
  `calib_batches` (list of (images, labels) from the training set) switches to *BN recalibration*: each
  evaluation batch is concatenated with the calibration images and BN statistics are taken from the
  calibration images only (`stat_weights`), in the same single pass.
* `evaluate_sequential` runs a Python loop over paths with the single-path compiled function; it gives
  the same accuracies (tested) and is the baseline of `benchmarks/nas_vmap.py`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scalenet_jax.nas.space import Alpha, Scaling, SearchSpace, apply_scaling
from scalenet_jax.nas.supernet import SuperNet, path_arrays, stack_paths

Batch = tuple[np.ndarray, np.ndarray]


def resize_images(images, r: int):
  """Bilinear resize of an NHWC batch to r×r (no-op when already r×r)."""
  images = jnp.asarray(images, jnp.float32)
  if images.shape[1] == r and images.shape[2] == r:
    return images
  return jax.image.resize(images, (images.shape[0], r, r, images.shape[3]), "bilinear")


class PathEvaluator:
  """Accuracy of (α, S) paths of a supernet on fixed mini-val batches (see module docstring)."""

  def __init__(
      self,
      model: SuperNet,
      params,
      space: SearchSpace,
      batches: Sequence[Batch] | Mapping[int, Sequence[Batch]],
      vmap_size: int = 16,
      calib_batches: Sequence[Batch] | None = None,
  ):
    if vmap_size < 1:
      raise ValueError(f"vmap_size must be >= 1, got {vmap_size}")
    if not batches:
      raise ValueError("PathEvaluator: no evaluation batches")
    self.model, self.params, self.space, self.vmap_size = model, params, space, vmap_size
    self._batches, self._calib = batches, calib_batches
    self._cache: dict[int, list] = {}

    def logits(params, images, path, stat_weights):
      return model.apply({"params": params}, images, path=path, train=False, stat_weights=stat_weights)

    def correct(params, images, labels, path, stat_weights, n_eval):
      y = logits(params, images, path, stat_weights)[-n_eval:]
      return jnp.sum(jnp.argmax(y, -1) == labels)

    # n_eval is static: the evaluation images are the last n_eval of the (calibration ++ eval) batch.
    self._single = jax.jit(correct, static_argnums=5)
    self._vmapped = jax.jit(jax.vmap(correct, in_axes=(None, None, None, 0, None, None)), static_argnums=5)

  # -- data --------------------------------------------------------------------------------------------
  def batches_at(self, r: int) -> list:
    """[(images, labels, n_eval, stat_weights)] at resolution r; images are calibration ++ eval images
    when recalibrating (stat_weights 1 on the calibration part), else the eval images (weights None)."""
    if r in self._cache:
      return self._cache[r]
    if isinstance(self._batches, Mapping):
      if r not in self._batches:
        raise KeyError(f"PathEvaluator: no evaluation batches for resolution {r}")
      src = [(jnp.asarray(x, jnp.float32), jnp.asarray(y)) for x, y in self._batches[r]]
    else:
      src = [(resize_images(x, r), jnp.asarray(y)) for x, y in self._batches]
    if self._calib:
      calib = jnp.concatenate([resize_images(x, r) for x, _ in self._calib])
      n_cal = calib.shape[0]
      data = [
          (jnp.concatenate([calib, x]), y, x.shape[0], jnp.concatenate([jnp.ones(n_cal), jnp.zeros(x.shape[0])]))
          for x, y in src
      ]
    else:
      data = [(x, y, x.shape[0], None) for x, y in src]
    self._cache[r] = data
    return data

  # -- evaluation --------------------------------------------------------------------------------------
  def _group(self, pairs: Sequence[tuple[Alpha, Scaling]]) -> dict[int, list[int]]:
    groups = defaultdict(list)
    for i, (_, S) in enumerate(pairs):
      groups[int(S.r)].append(i)
    return groups

  def __call__(self, pairs: Sequence[tuple[Alpha, Scaling]]) -> list[float]:
    """Accuracies of the (α, S) pairs, vmapped over paths (the MCEA objective)."""
    pairs = list(pairs)
    acc = np.zeros(len(pairs))
    for r, idx in self._group(pairs).items():
      data = self.batches_at(r)
      paths = [path_arrays(apply_scaling(*pairs[i], self.space), self.space) for i in idx]
      total = sum(n for _, _, n, _ in data)
      for c in range(0, len(idx), self.vmap_size):
        chunk = paths[c : c + self.vmap_size]
        n_real = len(chunk)
        chunk = chunk + [chunk[-1]] * (self.vmap_size - n_real)
        stacked = stack_paths(chunk)
        hits = sum(self._vmapped(self.params, x, y, stacked, w, n) for x, y, n, w in data)
        acc[idx[c : c + n_real]] = np.asarray(hits)[:n_real] / total
    return acc.tolist()

  def evaluate_sequential(self, pairs: Sequence[tuple[Alpha, Scaling]]) -> list[float]:
    """Same as `__call__` with a Python loop over paths (single-path compiled function)."""
    out = []
    for alpha, S in pairs:
      data = self.batches_at(int(S.r))
      path = path_arrays(apply_scaling(alpha, S, self.space), self.space)
      total = sum(n for _, _, n, _ in data)
      hits = sum(self._single(self.params, x, y, path, w, n) for x, y, n, w in data)
      out.append(float(hits) / total)
    return out


def make_objective(evaluator: PathEvaluator) -> Callable[[Sequence[tuple[Alpha, Scaling]]], list[float]]:
  """The batched `evaluate(list of (α, S)) -> list of accuracy` callable MCEA expects."""
  return evaluator.__call__
