"""Batched evaluation of supernet paths: width/depth buckets × `jax.vmap` over paths, and a sequential
reference.

Usage, the evaluation batches, bucketing, the `'vmap'` / `'loop'` batching modes, BN statistics and
recalibration, and the sequential reference are described in `docs/nas.md` §5.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scalenet_jax.nas.space import Alpha, Scaling, SearchSpace, apply_scaling
from scalenet_jax.nas.supernet import SuperNet, bucket_of, path_arrays, stack_paths

Batch = tuple[np.ndarray, np.ndarray]
BATCHING = ("loop", "vmap")


def resize_images(images, r: int):
  """Bilinear resize of an NHWC batch to r×r (no-op when already r×r)."""
  images = jnp.asarray(images, jnp.float32)
  if images.shape[1] == r and images.shape[2] == r:
    return images
  return jax.image.resize(images, (images.shape[0], r, r, images.shape[3]), "bilinear")


def chunk_sizes(n: int, vmap_size: int) -> list[int]:
  """Chunks of a group of n paths: full `vmap_size` chunks, then the binary digits of the rest."""
  out = [vmap_size] * (n // vmap_size)
  rest, bit = n % vmap_size, 1 << max(vmap_size.bit_length() - 1, 0)
  while rest:
    if rest >= bit:
      out.append(bit)
      rest -= bit
    bit >>= 1
  return out


def _correct(model):
  """correct(params, images, labels, path, stat_weights, n_eval): hits among the last n_eval images."""

  def correct(params, images, labels, path, stat_weights, n_eval):
    y = model.apply({"params": params}, images, path=path, train=False, stat_weights=stat_weights)
    return jnp.sum(jnp.argmax(y[-n_eval:], -1) == labels)

  return correct


class PathEvaluator:
  """Accuracy of (α, S) paths of a supernet on fixed mini-val batches (see `docs/nas.md` §5)."""

  def __init__(
      self,
      model: SuperNet,
      params,
      space: SearchSpace,
      batches: Sequence[Batch] | Mapping[int, Sequence[Batch]],
      vmap_size: int = 16,
      calib_batches: Sequence[Batch] | None = None,
      buckets: bool = True,
      depthwise: str = "unrolled",
      batching: str = "auto",
  ):
    if vmap_size < 1:
      raise ValueError(f"vmap_size must be >= 1, got {vmap_size}")
    if not batches:
      raise ValueError("PathEvaluator: no evaluation batches")
    self.model, self.params, self.space, self.vmap_size = model, params, space, vmap_size
    if batching == "auto":
      batching = "loop" if jax.default_backend() == "cpu" else "vmap"
    if batching not in BATCHING:
      raise ValueError(f"batching must be 'auto' or one of {BATCHING}, got {batching!r}")
    self.buckets, self.depthwise, self.batching = buckets, depthwise, batching
    self._batches, self._calib = batches, calib_batches
    self._cache: dict[int, list] = {}
    # n_eval is static: the evaluation images are the last n_eval of the (calibration ++ eval) batch.
    self._single = jax.jit(_correct(model), static_argnums=5)
    self._vmapped: dict[int | None, Callable] = {}

  def _batched(self, bucket: int | None) -> Callable:
    """fn(params, images, labels, stacked paths, n_real, stat_weights, n_eval) -> hits per path, jitted,
    for one bucket's model (built on first use); entries past n_real are padding ('loop')."""
    if bucket not in self._vmapped:
      # vmap turns the per-path conds of a conditional supernet into selects of every branch.
      model = self.model.clone(bucket=bucket, depthwise=self.depthwise, conditional=self.batching != "vmap")
      correct = _correct(model)
      if self.batching == "vmap":
        vm = jax.vmap(correct, in_axes=(None, None, None, 0, None, None))
        fn = lambda params, x, y, paths, n_real, w, n: vm(params, x, y, paths, w, n)
      else:

        def fn(params, x, y, paths, n_real, w, n):
          # A loop with a traced trip count: the padding paths are never computed, and one program
          # serves every chunk of the (resolution, bucket).
          def body(i, hits):
            path = jax.tree.map(lambda a: a[i], paths)
            return hits.at[i].set(correct(params, x, y, path, w, n))

          size = jax.tree.leaves(paths)[0].shape[0]
          return jax.lax.fori_loop(0, n_real, body, jnp.zeros((size,), jnp.int32))

      self._vmapped[bucket] = jax.jit(fn, static_argnums=6)
    return self._vmapped[bucket]

  def _chunks(self, n: int) -> list[tuple[int, int]]:
    """(real paths, stacked size) per call: 'vmap' computes every stacked path, so its chunks are
    `vmap_size` and the binary digits of the rest; 'loop' pads to `vmap_size` (padding costs nothing)."""
    if self.batching == "vmap":
      return [(k, k) for k in chunk_sizes(n, self.vmap_size)]
    return [(min(self.vmap_size, n - i), self.vmap_size) for i in range(0, n, self.vmap_size)]

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
  def groups(self, pairs: Sequence[tuple[Alpha, Scaling]]) -> dict[tuple[int, int | None], list[int]]:
    """{(resolution, bucket): indices into pairs}; bucket None when `buckets` is off."""
    groups = defaultdict(list)
    for i, (_, S) in enumerate(pairs):
      groups[(int(S.r), bucket_of(S, self.space) if self.buckets else None)].append(i)
    return groups

  def __call__(self, pairs: Sequence[tuple[Alpha, Scaling]]) -> list[float]:
    """Accuracies of the (α, S) pairs, batched by resolution and bucket (the MCEA objective)."""
    pairs = list(pairs)
    acc = np.zeros(len(pairs))
    for (r, bucket), idx in self.groups(pairs).items():
      data, fn = self.batches_at(r), self._batched(bucket)
      total = sum(n for _, _, n, _ in data)
      start = 0
      for n_real, size in self._chunks(len(idx)):
        chunk = idx[start : start + n_real]
        paths = [path_arrays(apply_scaling(*pairs[i], self.space), self.space, bucket=bucket) for i in chunk]
        stacked = stack_paths(paths + [paths[-1]] * (size - n_real))
        hits = sum(fn(self.params, x, y, stacked, n_real, w, n) for x, y, n, w in data)
        acc[chunk] = np.asarray(hits)[:n_real] / total
        start += n_real
    return acc.tolist()

  def evaluate_sequential(self, pairs: Sequence[tuple[Alpha, Scaling]]) -> list[float]:
    """Same as `__call__` with a Python loop over paths (the full model's single-path function)."""
    out = []
    for alpha, S in pairs:
      data = self.batches_at(int(S.r))
      path = path_arrays(apply_scaling(alpha, S, self.space), self.space)
      total = sum(n for _, _, n, _ in data)
      hits = sum(self._single(self.params, x, y, path, w, n) for x, y, n, w in data)
      out.append(float(hits) / total)
    return out
