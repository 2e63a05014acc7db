"""Orbax checkpoints: async keep-N training checkpoints that resume exactly, and final param export.

Layout of a workdir:

    <workdir>/checkpoints/<step>/state/      the train-state pytree (StandardSave: params, opt state, rng, ...)
    <workdir>/checkpoints/<step>/meta/       JSON: model fingerprint, config, step
    <workdir>/checkpoints.corrupt/<step>/    finalized steps that failed to restore, moved aside

What an interrupted save leaves behind with orbax-checkpoint 0.12.8 (checked by the tests):
  * local / POSIX paths: the step is written into `<step>.orbax-checkpoint-tmp` and renamed to `<step>` only
    after every item is written and `commit_success.txt` is in it; a kill mid-write leaves the tmp dir.
  * gs:// paths: no rename; the step is written in place and is final once `<step>/commit_success.txt` exists.
Orbax itself only checks the *name* on local paths, so a `<step>` dir without the marker (copied by hand,
partially synced, half deleted) would be listed as a valid step. `restore_latest` therefore requires the
marker on every path, then walks steps newest to oldest and skips (with one warning line each) any step that
is unfinished, lacks the marker, or fails to read, e.g. a truncated or deleted data file.

Once the walk ends, a skipped step is moved to `checkpoints.corrupt/` (an unfinished tmp dir is deleted):
left in place it would count towards `max_to_keep` (evicting good steps) and block re-saving its step
number after the resume.
A checkpoint of a different model or with different shapes/dtypes is an error (the workdir is left
untouched): resuming someone else's run, or silently casting it, is never what the caller meant.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from scalenet_jax import paths
from scalenet_jax.errors import CheckpointError, MissingInputError

STATE, META = "state", "meta"
COMMIT_MARKER = "commit_success.txt"  # written by orbax into every finalized step (local and GCS)
TMP_MARKER = ".orbax-checkpoint-tmp"  # suffix of the directory of a save in progress on local paths
CORRUPT_DIR = "checkpoints.corrupt"


# ----------------------------------------------------------------------------------------------------------
# Fingerprint
# ----------------------------------------------------------------------------------------------------------
def fingerprint(abstract_params) -> str:
  """Short hash of the sorted (param path, shape, dtype) triples of a pytree.

  Values and shardings are ignored, so the same model config always gives the same fingerprint on any
  mesh.

  Args:
    abstract_params: a pytree of concrete arrays or `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape`).

  Returns:
    16 hex digits (a truncated sha256).
  """
  leaves = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  triples = sorted(
      (jax.tree_util.keystr(path), [int(d) for d in leaf.shape], np.dtype(leaf.dtype).name) for path, leaf in leaves
  )
  return hashlib.sha256(json.dumps(triples).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# Training checkpoints
# ----------------------------------------------------------------------------------------------------------
class Checkpointer:
  """Keep-N async checkpoints of a train-state pytree under `<workdir>/checkpoints`.

  Usage:
      ckpt = Checkpointer(workdir, max_to_keep=3, save_interval_steps=1000)
      restored = ckpt.restore_latest(abstract_state, fingerprint(abstract_params))
      step, state = restored if restored else (0, init_state())
      ...
      ckpt.save(step, state, {"fingerprint": fp, "config": config.to_dict()})
      ...
      ckpt.close()  # waits for the last async save

  `state` is any pytree of jax arrays (sharded or not). For exact resumption it should hold everything the
  loop needs (params, optimizer state, step, rng key data as uint32); restored leaves are bit-identical.

  Args:
    workdir: the run's directory (local, relative to the cwd, or gs://); checkpoints go to
      `<workdir>/checkpoints`.
    max_to_keep: newest finalized steps kept (None = all).
    save_interval_steps: `save` skips steps that are not a multiple of it (unless forced).
    async_save: write in a background thread (`wait` / `close` block on it).
  """

  def __init__(self, workdir, *, max_to_keep: int | None = 3, save_interval_steps: int = 1, async_save: bool = True):
    # Orbax wants absolute paths; a relative --workdir (the README demo's) is relative to the cwd.
    self.directory = paths.path(workdir) / "checkpoints"
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save,
        create=True,
    )
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=options,
        item_handlers={STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler()},
    )

  # -- saving ------------------------------------------------------------------------------------------
  def save(self, step: int, state, meta: Mapping[str, Any], *, force: bool = False) -> bool:
    """Starts an async save of `state` and `meta` at `step`.

    Orbax copies the arrays to host memory before this returns, so the caller may donate `state`'s buffers
    to the next step.

    Args:
      step: the step number (the directory name).
      state: pytree of jax arrays.
      meta: JSON-serializable mapping holding the model `"fingerprint"`; `"step"` is added.
      force: save regardless of `save_interval_steps` (use it for the final step).

    Returns:
      False if the interval skips the step, else True.

    Raises:
      ValueError: `meta` has no fingerprint or is not JSON-serializable.
    """
    if "fingerprint" not in meta:
      raise ValueError(f"checkpoint meta for step {step} has no 'fingerprint' key (got {sorted(meta)})")
    meta = {**meta, "step": int(step)}
    try:
      json.dumps(meta)  # fail here, not later in the background save thread
    except TypeError as e:
      raise ValueError(f"checkpoint meta for step {step} is not JSON-serializable: {e}") from None
    return self._manager.save(
        int(step),
        force=force,
        args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}),
    )

  def wait(self) -> None:
    """Blocks until the pending async save (if any) is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def all_steps(self) -> list[int]:
    """Steps orbax considers saved (after `restore_latest`, only the good ones)."""
    return list(self._manager.all_steps())

  # -- restoring ---------------------------------------------------------------------------------------
  def restore_latest(self, abstract_state, expected_fingerprint: str, *, discard_bad: bool = True):
    """Restores the newest good checkpoint into `abstract_state`.

    Arrays are read straight into the shardings of `abstract_state`, each host reading only its shards.
    Unfinished or unreadable steps newer than the restored one are skipped with a warning and, with
    `discard_bad`, moved aside / deleted.

    Args:
      abstract_state: pytree of `jax.ShapeDtypeStruct`s carrying `.sharding` (`jax.eval_shape` plus
        shardings), the structure of the saved state.
      expected_fingerprint: `fingerprint` of the model's params; a checkpoint of another model is refused.
      discard_bad: move skipped steps aside. Pass False when another job may be writing to this workdir
        (an evaluator following a live run): its save in progress looks unfinished.

    Returns:
      `(step, state)`, or None when no good step exists.

    Raises:
      CheckpointError: (a ValueError) a fingerprint, structure, shape or dtype mismatch; the workdir is left
        untouched.
    """
    self.wait()  # never read a step this process is still writing
    skipped = []  # (step, path) moved aside once a good step is found
    for step, path, problem in self._candidates():
      if problem is None:
        problem, restored = self._try_restore(step, abstract_state, expected_fingerprint)
        if problem is None:
          break
      _warn(f"skipping checkpoint step {step} in {self.directory}: {problem}; trying the previous step")
      skipped.append((step, path))
    else:
      step = restored = None
    if discard_bad:
      self._discard(skipped)
    return None if step is None else (step, restored)

  def restore_into(self, state, shardings, expected_fingerprint: str):
    """`restore_latest` for a concrete `state` laid out by `shardings`.

    Args:
      state: a pytree of arrays (only shapes and dtypes are used), as `create_train_state` returns it.
      shardings: the matching pytree of shardings; the checkpoint's arrays are read straight into them.
      expected_fingerprint: as in `restore_latest`.

    Returns:
      `(step, state)` or None, as `restore_latest`.
    """
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)
    return self.restore_latest(abstract, expected_fingerprint)

  def read_meta(self, step: int) -> dict:
    """The JSON meta saved with `step`."""
    return dict(self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META])

  def _candidates(self):
    """(step, path, problem-or-None) for every step-like directory, newest first.

    Listed from the directory rather than `all_steps()`, which hides unfinished saves (we want to report
    them) and on local paths lists steps lacking the commit marker as good.
    """
    found = []
    if not self.directory.exists():
      return found
    for path in self.directory.iterdir():
      name = path.name
      if name.isdigit() and path.is_dir():
        if not (path / COMMIT_MARKER).exists():
          problem = f"no {COMMIT_MARKER} (the save never finalized)"
        else:
          missing = [item for item in (STATE, META) if not (path / item).is_dir()]
          problem = f"item directory {missing[0]!r} is missing" if missing else None
        found.append((int(name), 1, path, problem))
      elif TMP_MARKER in name and name.split(".")[0].isdigit():
        # Sorted below a finished dir of the same step (a later re-save that was interrupted).
        found.append((int(name.split(".")[0]), 0, path, f"unfinished save left {name} (writer stopped)"))
    found.sort(key=lambda f: f[:2], reverse=True)
    return [(step, path, problem) for step, _, path, problem in found]

  def _try_restore(self, step: int, abstract_state, expected_fingerprint: str):
    """(None, state) on success, (reason, None) if the step is unreadable; raises on a mismatch."""
    step_dir = self.directory / str(step)
    try:
      meta = self.read_meta(step)
      saved_tree = self._manager.item_metadata(step)[STATE].tree
    except Exception as e:  # noqa: BLE001 - any read failure means "this step is damaged", try older
      return f"unreadable metadata ({_short(e)})", None
    if meta.get("fingerprint") != expected_fingerprint:
      raise CheckpointError(
          f"checkpoint {step_dir} is of model fingerprint {meta.get('fingerprint')!r}, expected "
          f"{expected_fingerprint!r}: the workdir holds another model/config; use a new --workdir"
      )
    _check_same_arrays(saved_tree, abstract_state, step_dir)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state)})
      )[STATE]
      jax.block_until_ready(restored)
    except Exception as e:  # noqa: BLE001 - truncated/deleted data files surface as generic errors
      return f"failed to read arrays ({_short(e)})", None
    return None, restored

  def _discard(self, skipped) -> None:
    """Moves skipped step dirs to `<workdir>/checkpoints.corrupt/` (process 0), then re-lists steps.

    Unfinished saves (tmp dirs) are deleted instead, as orbax's own `cleanup_tmp_directories` would.
    """
    if not skipped:
      return
    _sync("scalenet_checkpoint_discard_start")
    if jax.process_index() == 0:
      corrupt = self.directory.parent / CORRUPT_DIR
      for step, path in skipped:
        if not path.exists():
          continue
        if TMP_MARKER in path.name:  # known-partial write: nothing in it is worth keeping
          path.rmtree()
          _warn(f"removed unfinished save {path}")
          continue
        corrupt.mkdir(parents=True, exist_ok=True)
        target = corrupt / path.name
        suffix = 1
        while target.exists():  # the same step may have failed before
          target, suffix = corrupt / f"{path.name}.{suffix}", suffix + 1
        path.rename(target)
        _warn(f"moved unusable checkpoint step {step} to {target}")
    _sync("scalenet_checkpoint_discard_end")
    self._manager.reload()


def _check_same_arrays(saved_tree, abstract_state, step_dir) -> None:
  """Raises ValueError naming the first leaf whose presence, shape or dtype differs from the checkpoint."""
  saved = ocp.tree.to_flat_dict(saved_tree)
  wanted = ocp.tree.to_flat_dict(abstract_state)
  missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
  if missing or extra:
    raise CheckpointError(
        f"checkpoint {step_dir} has a different state structure: missing {['/'.join(k) for k in missing][:5]}"
        f", unexpected {['/'.join(k) for k in extra][:5]}"
    )
  for key in sorted(wanted):
    want, have = wanted[key], saved[key]
    if tuple(want.shape) != tuple(have.shape) or np.dtype(want.dtype) != np.dtype(have.dtype):
      raise CheckpointError(
          f"checkpoint {step_dir} leaf {'/'.join(key)} is {np.dtype(have.dtype).name}{tuple(have.shape)}, "
          f"expected {np.dtype(want.dtype).name}{tuple(want.shape)}"
      )


def _short(e: Exception) -> str:
  """First line of an exception, capped: tensorstore errors embed kilobytes of JSON spec."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  return f"{type(e).__name__}: {text[:160]}"


def _warn(message: str) -> None:
  if jax.process_index() == 0:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------------------------------------
# Final params export
# ----------------------------------------------------------------------------------------------------------
def export_params(path, params, *, overwrite: bool = False) -> None:
  """Writes `params` as a standalone Orbax checkpoint at `path`.

  Args:
    path: destination directory (local or gs://).
    params: a pytree of arrays, possibly sharded.
    overwrite: replace an existing export.

  Raises:
    FileExistsError: `path` exists and `overwrite` is False.
  """
  path = paths.path(path)
  if path.exists() and not overwrite:
    raise FileExistsError(f"params export {path} already exists (pass overwrite=True to replace it)")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, params, force=overwrite)
    checkpointer.wait_until_finished()


def is_params_export(path) -> bool:
  """Whether `path` is a directory written by `export_params` (Orbax metadata), not a foreign checkpoint."""
  path = paths.path(path)
  return path.is_dir() and (path / "_METADATA").exists()


def load_params_like(path, like):
  """Exported params at `path`, checked against `like`, as host arrays.

  Args:
    path: a directory written by `export_params`.
    like: pytree of arrays or ShapeDtypeStructs; the export must have exactly its arrays (paths, shapes,
      dtypes).

  Returns:
    The params pytree (numpy arrays, read on the default device).

  Raises:
    MissingInputError: `path` does not exist.
    CheckpointError: the arrays differ from `like`'s.
  """
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), like)
  return jax.device_get(load_params(path, abstract))


def load_params(path, abstract_params=None):
  """Reads params written by `export_params`.

  Args:
    path: a directory written by `export_params`.
    abstract_params: ShapeDtypeStructs with shardings: the arrays land directly in those shardings and
      structure, shapes and dtypes are checked; None = restored as saved, on the default device.

  Returns:
    The params pytree (jax arrays).

  Raises:
    MissingInputError: `path` does not exist.
    CheckpointError: the arrays differ from `abstract_params`.
  """
  path = paths.path(path)
  if not path.exists():
    raise MissingInputError(f"params export {path} does not exist")
  with ocp.StandardCheckpointer() as checkpointer:
    if abstract_params is not None:
      _check_same_arrays(checkpointer.metadata(path).item_metadata.tree, abstract_params, path)
    return checkpointer.restore(path, abstract_params)
