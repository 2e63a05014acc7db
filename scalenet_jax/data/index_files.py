"""Index files: per-dataset arrays computed once (labels, the mini-val split), stored, shared by hosts.

An index file is an `.npz` holding the arrays and a `fingerprint` (a JSON object naming what it was
computed from: dataset, split sizes, parameters). A file whose fingerprint differs, or that a caller's
`check` rejects, is stale: it is never used, only replaced.

Locations are tried in order (e.g. the dataset's own directory, then a cache dir given by the caller):
the first holding a valid file is read; otherwise process 0 computes the arrays and writes them to the
first location that accepts the write (temp file + rename, so a reader never sees half a file), and the
other processes wait for that file. All I/O goes through `etils.epath`, so a location may be `gs://...`.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
import zipfile
from typing import Callable, Mapping, Sequence

import numpy as np
from absl import logging
from etils import epath

FORMAT = 1  # Bump when the layout of index files changes: older files then read as stale.


@dataclasses.dataclass(frozen=True)
class IndexStore:
  """Where index files live and who writes them.

  `process_index` / `process_count` default to jax's (read only when a file has to be computed, so
  opening a source never initialises a jax backend by itself). Processes other than 0 poll every
  `poll_s` seconds for up to `timeout_s` for process 0's file.
  """

  dirs: Sequence[epath.PathLike] = ()
  process_index: int | None = None
  process_count: int | None = None
  timeout_s: float = 4 * 3600.0  # A label pass over ImageNet on a slow bucket can take an hour.
  poll_s: float = 5.0

  def paths(self, filename: str) -> list[epath.Path]:
    return [epath.Path(d) / filename for d in self.dirs]

  def processes(self) -> tuple[int, int]:
    if self.process_index is not None and self.process_count is not None:
      return self.process_index, self.process_count
    import jax  # Only here: the data layer does not otherwise need jax.

    index = jax.process_index() if self.process_index is None else self.process_index
    count = jax.process_count() if self.process_count is None else self.process_count
    return index, count


Arrays = Mapping[str, np.ndarray]


def read(path: epath.Path, fingerprint: dict) -> dict[str, np.ndarray] | None:
  """The arrays of `path`, or None when it is missing, unreadable or has another fingerprint."""
  try:
    with path.open("rb") as f, np.load(f, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # Missing, or torn (not written by `write`).
    return None
  stored = arrays.pop("fingerprint", None)
  if stored is None or json.loads(str(stored)) != fingerprint:
    return None
  return arrays


def write(path: epath.Path, arrays: Arrays, fingerprint: dict) -> None:
  """Writes atomically: a temp file next to `path`, then a rename over it."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
  try:
    with tmp.open("wb") as f:
      np.savez(f, fingerprint=np.asarray(json.dumps(fingerprint, sort_keys=True)), **arrays)
    tmp.replace(path)
  finally:
    if tmp.exists():
      tmp.unlink()


def _find(paths, fingerprint, check) -> dict[str, np.ndarray] | None:
  for path in paths:
    arrays = read(path, fingerprint)
    if arrays is not None and (check is None or check(arrays)):
      return arrays
    if arrays is not None:
      logging.warning("index file %s fails its consistency check; ignoring it", path)
  return None


def _write_first(paths, arrays, fingerprint) -> epath.Path | None:
  for path in paths:
    try:
      write(path, arrays, fingerprint)
      return path
    except OSError as e:  # Read-only dataset dir (or bucket): fall through to the next location.
      logging.info("cannot write index file %s (%s); trying the next location", path, e)
  return None


def load_or_build(
    store: IndexStore,
    filename: str,
    fingerprint: dict,
    build: Callable[[], Arrays],
    check: Callable[[Arrays], bool] | None = None,
) -> dict[str, np.ndarray]:
  """The arrays stored under `filename` with `fingerprint`, computing (`build`) and storing them once.

  `check(arrays) -> bool` can reject a file whose fingerprint matches but whose content does not fit
  the data (e.g. spot-checked labels). With several processes, only process 0 builds; the others wait.
  """
  fingerprint = json.loads(json.dumps({"format": FORMAT, **fingerprint}))  # As read back (tuples: lists).
  paths = store.paths(filename)
  found = _find(paths, fingerprint, check)
  if found is not None:
    return found
  index, count = store.processes() if paths else (0, 1)
  if index == 0:
    arrays = {k: np.asarray(v) for k, v in build().items()}
    if paths and _write_first(paths, arrays, fingerprint) is None:
      where = ", ".join(map(str, paths))
      if count > 1:  # The other processes would wait for a file that never comes.
        raise OSError(f"cannot write index file {filename} to any of: {where}; pass a writable cache_dir")
      logging.warning("index file %s not stored (none writable of: %s); it is recomputed next time", filename, where)
    return arrays
  return _wait(store, paths, fingerprint, check)


def _wait(store, paths, fingerprint, check) -> dict[str, np.ndarray]:
  deadline = time.monotonic() + store.timeout_s
  while time.monotonic() < deadline:
    time.sleep(store.poll_s)
    found = _find(paths, fingerprint, check)
    if found is not None:
      return found
  raise TimeoutError(
      f"waited {store.timeout_s:.0f} s for process 0 to write {paths[0].name} to one of "
      f"{', '.join(map(str, paths))} (all processes must see the same locations)"
  )
