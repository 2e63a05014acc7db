"""Training and evaluation batch streams (grain `MapDataset` over step numbers).

Training data is random access by step: the global batch of step `s` is the `s % steps_per_epoch`-th
slice of the permutation of epoch `s // steps_per_epoch` (seeded by `(seed, epoch)`; the remainder
of each epoch is dropped), and its augmentation depends only on (seed, epoch, example index). A run
resumed at step `s` therefore reads exactly the batches an uninterrupted run would, with no iterator
state in the checkpoint. Host `p` of `P` receives rows `[p*B/P, (p+1)*B/P)` of every global batch.

grain runs the per-step loads on a thread pool and keeps a prefetch buffer, in order.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, Iterator, Protocol

import grain
import numpy as np

from scalenet_jax.data.preprocess import Preprocess, Preprocessor
from scalenet_jax.data.sources import Source


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  """Full global batches per epoch (the last partial batch of every epoch is dropped)."""
  if global_batch > num_examples:
    raise ValueError(f"global batch {global_batch} is larger than the dataset ({num_examples} examples)")
  return num_examples // global_batch


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng((seed, epoch)).permutation(num_examples)


def global_batch_indices(num_examples: int, global_batch: int, seed: int, step: int) -> tuple[np.ndarray, int]:
  """(example indices of the global batch at `step`, its epoch): a pure function of the arguments."""
  spe = steps_per_epoch(num_examples, global_batch)
  epoch, k = divmod(int(step), spe)
  return _epoch_permutation(num_examples, seed, epoch)[k * global_batch : (k + 1) * global_batch], epoch


def host_slice(global_batch: int, process_index: int, process_count: int) -> slice:
  """Rows of each global batch that belong to `process_index`."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by process count {process_count}")
  per_host = global_batch // process_count
  return slice(process_index * per_host, (process_index + 1) * per_host)


class Loader(Protocol):
  """Loads and preprocesses examples of a source in place of `Preprocessor` and `source.labels`."""

  def __call__(self, indices: np.ndarray, seed: int = 0, epoch: int = 0) -> dict:
    """`{'image', 'label', ...}` arrays of the examples at `indices` (training randomness from
    (seed, epoch, index); none for evaluation)."""

  def blank(self, n: int) -> dict:
    """`n` padding rows shaped like `__call__`'s (their content is masked out)."""


def _iterate(dataset: grain.MapDataset, num_threads: int, prefetch: int) -> Iterator[dict]:
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(dataset.to_iter_dataset(read))


def train_batches(
    source: Source,
    global_batch: int,
    seed: int,
    start_step: int = 0,
    *,
    process_index: int = 0,
    process_count: int = 1,
    preprocess: Preprocess | None = None,
    num_steps: int | None = None,
    num_threads: int = 2,
    prefetch: int = 4,
    plan: Callable[[int], tuple[Preprocess, dict | None]] | None = None,
    loader: Loader | None = None,
) -> Iterator[dict]:
  """Infinite (or `num_steps`) iterator of this host's share of the global training batches.

  Yields `{'image': float32 [B/P, S, S, C] normalised, 'label': int32 [B/P]}` for steps
  `start_step, start_step + 1, ...`. `num_threads` batches are prepared concurrently and up to
  `prefetch` wait ready (the per-step work is batched numpy or PIL, which mostly releases the GIL).
  `plan(step) -> (preprocess, extra)`, when given, chooses each step's preprocessing (NAS: the sampled
  path's resolution) in place of `preprocess` and adds the `extra` entries (or none) to its batch; the
  example order stays a pure function of (seed, step) either way. `loader`, when given, loads and
  preprocesses examples in place of `preprocess` and the source's labels (`Loader`: e.g. a segmentation
  map per image).
  """
  rows = host_slice(global_batch, process_index, process_count)
  n = len(source)
  steps_per_epoch(n, global_batch)  # Fail now, not in a worker thread.
  labels = source.labels if loader is None else None
  preps = {}  # Preprocess -> Preprocessor (a benign race between loader threads may build one twice)

  def load(step: int) -> dict:
    if loader is not None:
      idx, epoch = global_batch_indices(n, global_batch, seed, step)
      return loader(idx[rows], seed, epoch)
    p, extra = plan(step) if plan is not None else (preprocess, None)
    if p not in preps:
      preps[p] = Preprocessor(source, p, train=True)
    idx, epoch = global_batch_indices(n, global_batch, seed, step)
    idx = idx[rows]
    return {"image": preps[p](idx, seed, epoch), "label": labels[idx].astype(np.int32), **(extra or {})}

  stop = sys.maxsize if num_steps is None else start_step + num_steps
  return _iterate(grain.MapDataset.range(start_step, stop).map(load), num_threads, prefetch)


def num_eval_batches(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)


def eval_batches(
    source: Source,
    batch_size: int,
    *,
    preprocess: Preprocess | None = None,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
    prefetch: int = 4,
    loader: Loader | None = None,
) -> Iterator[dict]:
  """Every example exactly once, in order, in global batches of `batch_size` (this host's rows).

  The last batch is padded with zero images; `mask` (bool) is False on padding so metrics can
  ignore it: `{'image': float32, 'label': int32, 'mask': bool}`. With a `loader` (`Loader`) its
  examples, padded with its `blank` rows."""
  rows = host_slice(batch_size, process_index, process_count)
  n = len(source)
  prep = Preprocessor(source, preprocess, train=False) if loader is None else None
  labels = source.labels if loader is None else None

  def load(k: int) -> dict:
    idx = np.arange(k * batch_size, (k + 1) * batch_size)[rows]
    mask = idx < n
    real = idx[mask]
    if loader is not None:
      out = loader.blank(len(idx))
      if len(real):
        for key, value in loader(real).items():
          out[key][: len(real)] = value
      return {**out, "mask": mask}
    # Padding rows are zeros; their shape is known without reading any example (not even one of
    # another host's rows, when this host's share of the last batch is all padding).
    if len(real) == len(idx):
      images = prep(real)
    else:
      images = np.zeros((len(idx), *prep.output_shape), np.float32)
      if len(real):
        images[: len(real)] = prep(real)
    out_labels = np.zeros(len(idx), np.int32)
    out_labels[mask] = labels[real]
    return {"image": images, "label": out_labels, "mask": mask}

  return _iterate(grain.MapDataset.range(num_eval_batches(n, batch_size)).map(load), num_threads, prefetch)
