"""One writer per workdir: a run takes its workdir's lock before it writes anything, and a second run on a
workdir that a live run holds stops at once with `WorkdirBusy` (one line, exit code 2 from the CLI).

Two runs that both trained into one workdir would resume from each other's steps and delete each other's
checkpoints (Orbax "Unable to find the step ... for deletion"). The lock is taken by `main.run` (before any
pipeline writes into the workdir) and by `Loop` (library callers); in one process, taking a lock the
process already holds nests (released when the last holder releases it).

* Local workdirs: `fcntl.flock` on `<workdir>/.lock`. The kernel drops it when the process ends, SIGKILL
  included, so a killed run never blocks its restart; the file holds host / pid / start time for the error
  message and is removed on release (a killed run leaves it behind, unlocked and harmless).
* Object stores (gs://, and local file systems without flock): a lease, `<workdir>/.lease`, JSON with
  owner id, host, pid and `expires_at`. A daemon thread renews it every third of its length (default
  60 s, `$SCALENET_WORKDIR_LEASE_SEC`); release deletes it. A lease that is not renewed (the run was
  killed) expires, so a restart waits at most one lease length; the refusal names the expiry time. On
  gs:// the lease is created with `ifGenerationMatch=0` and an expired one is deleted only if it is still
  the generation that was read, so of two runs starting at once exactly one gets it. Other stores have
  no atomic create: there two runs starting within the same second can both pass (a written lease is
  read back to catch most of these). A renewal that finds another owner (this run stalled past its
  lease and was taken over) marks the lock lost, and `check()` (before every checkpoint save) raises.

Multi-process jobs: only process 0 takes the lock (it is the one that writes); its verdict is broadcast,
so every process of a refused job stops.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from typing import Optional

from scalenet_jax import paths
from scalenet_jax.errors import WorkdirBusy

LOCK_FILE = ".lock"
LEASE_FILE = ".lease"
LEASE_ENV = "SCALENET_WORKDIR_LEASE_SEC"
DEFAULT_LEASE_SEC = 60.0
_ADVICE = "one run per workdir: wait for it to end, stop it, or use another --workdir"


def lease_seconds() -> float:
  """Length of a lease in seconds: `$SCALENET_WORKDIR_LEASE_SEC`, default 60."""
  return float(os.environ.get(LEASE_ENV, DEFAULT_LEASE_SEC))


def _stamp(t: float) -> str:
  return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _me(owner: str) -> dict:
  return {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "started": _stamp(time.time())}


def _who(info: dict) -> str:
  return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}" if info else "another process"


# ----------------------------------------------------------------------------------------------------------
# Local: flock
# ----------------------------------------------------------------------------------------------------------
class _Flock:
  """`flock` on `<dir>/.lock` (see the module docstring); raises OSError if the file system has none."""

  def __init__(self, directory: str, owner: str):
    self.file = os.path.join(directory, LOCK_FILE)
    self.owner = owner
    self.fd: Optional[int] = None

  def acquire(self, workdir) -> None:
    while True:
      fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read_fd(fd)
        os.close(fd)
        since = f", since {holder['started']}" if holder.get("started") else ""
        raise WorkdirBusy(f"workdir {workdir} is in use by another run ({_who(holder)}{since}); {_ADVICE}") from None
      except BaseException:
        os.close(fd)
        raise
      try:  # the holder we raced with may have released (and removed) the file before we locked it
        same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_me(self.owner)).encode(), 0)
    self.fd = fd

  def release(self) -> None:
    if self.fd is None:
      return
    try:
      os.unlink(self.file)  # while still locked: a run waiting on this inode re-opens the path
    except FileNotFoundError:
      pass
    os.close(self.fd)
    self.fd = None

  def lost(self) -> Optional[str]:
    return None


def _read_fd(fd: int) -> dict:
  try:
    return json.loads(os.pread(fd, 4096, 0) or b"{}")
  except ValueError:
    return {}


# ----------------------------------------------------------------------------------------------------------
# Object stores: a renewed lease
# ----------------------------------------------------------------------------------------------------------
class _Lease:
  """`<dir>/.lease` with an expiry, renewed by a daemon thread (see the module docstring)."""

  def __init__(self, directory, owner: str, seconds: float):
    self.file = paths.path(directory) / LEASE_FILE
    self.owner, self.seconds = owner, seconds
    self.info = _me(owner)
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self._lost: Optional[str] = None
    self._gcs = None
    if str(self.file).startswith("gs://"):
      import fsspec  # pylint: disable=g-import-not-at-top  # etils' own gs:// backend

      self._gcs = fsspec.filesystem("gcs")

  # ---- store operations
  def _data(self) -> bytes:
    return json.dumps({**self.info, "expires_at": time.time() + self.seconds}).encode()

  def _read(self):
    """(version, lease) or None; version: the object's generation on gs:// (for a conditional delete)."""
    try:
      version = None
      if self._gcs is not None:
        bucket, key, _ = self._gcs.split_path(str(self.file))
        version = self._gcs.call("GET", "b/{}/o/{}", bucket, key, json_out=True)["generation"]
      text = self.file.read_text()
    except FileNotFoundError:
      return None
    try:
      return version, json.loads(text)
    except ValueError:
      return version, {}  # unreadable: treated as expired

  def _create(self, data: bytes) -> bool:
    """Writes the lease unless one exists: atomic on gs:// (ifGenerationMatch=0), check-then-write elsewhere."""
    if self._gcs is not None:
      try:
        self._gcs.pipe_file(str(self.file), data, mode="create")
        return True
      except FileExistsError:
        return False
    if self.file.exists():
      return False
    self.file.write_bytes(data)
    return True

  def _delete(self, version) -> bool:
    """Deletes the lease if it is still `version` (gs://; any version elsewhere); False if it changed."""
    try:
      if self._gcs is not None:
        bucket, key, _ = self._gcs.split_path(str(self.file))
        self._gcs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=version)
        self._gcs.invalidate_cache(str(self.file))
      else:
        self.file.unlink()
      return True
    except (FileNotFoundError, FileExistsError):  # 404 / 412: gone or replaced meanwhile
      return False

  # ---- lock
  def acquire(self, workdir) -> None:
    for _ in range(5):
      got = self._read()
      if got is not None:
        version, lease = got
        expires = float(lease.get("expires_at", 0))
        if lease.get("owner") != self.owner and expires > time.time():
          raise WorkdirBusy(
              f"workdir {workdir} is held by another run ({_who(lease)}) until {_stamp(expires)} (its lease; "
              f"a run that was killed frees it then); {_ADVICE}"
          )
        if not self._delete(version):  # expired (a killed run's): taken over, unless it changed meanwhile
          continue
      if not self._create(self._data()):
        continue
      if self._gcs is None:  # no atomic create: a racing run may have written after our check
        got = self._read()
        if got is None or got[1].get("owner") != self.owner:
          raise WorkdirBusy(f"workdir {workdir} was taken by another run starting at the same time; {_ADVICE}")
      self._thread = threading.Thread(target=self._renew, name=f"lease {self.file}", daemon=True)
      self._thread.start()
      _release_before_executors_stop()
      return
    raise WorkdirBusy(f"workdir {workdir}: other runs keep taking its lease ({self.file}); {_ADVICE}")

  def _renew(self) -> None:
    while not self._stop.wait(self.seconds / 3):
      try:
        got = self._read()
        if got is None or got[1].get("owner") != self.owner:
          self._lost = f"{_who(got[1]) if got else 'nobody'} holds it now"
          return
        self.file.write_bytes(self._data())
      except Exception:  # noqa: BLE001 - a transient store error: retried at the next period
        continue

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
      got = self._read()
      if got is not None and got[1].get("owner") == self.owner:
        self._delete(got[0])

  def lost(self) -> Optional[str]:
    return self._lost


# ----------------------------------------------------------------------------------------------------------
# The lock of a workdir
# ----------------------------------------------------------------------------------------------------------
_HELD: dict = {}  # key -> [backend, count]: the locks this process holds
_TABLE_LOCK = threading.Lock()
_OPEN: set = set()  # the `WorkdirLock`s holding a count (released at exit)


def _key(workdir) -> str:
  return os.path.realpath(str(workdir)) if paths.is_local(workdir) else str(workdir).rstrip("/")


def _process() -> tuple[int, int]:
  """(process index, count), without starting a JAX backend in a single-process run."""
  from scalenet_jax.train import distributed  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  if distributed.maybe_initialize() is None and not jax.distributed.is_initialized():
    return 0, 1
  return jax.process_index(), jax.process_count()


def _take(workdir, key: str):
  """A new backend holding `workdir` (flock where the file system has it, else a lease)."""
  owner = uuid.uuid4().hex
  if paths.is_local(workdir):
    os.makedirs(key, exist_ok=True)
    lock = _Flock(key, owner)
    try:
      lock.acquire(workdir)
      return lock
    except OSError as e:  # a file system without flock (some FUSE mounts): a lease instead
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise
  lease = _Lease(workdir, owner, lease_seconds())
  lease.acquire(workdir)
  return lease


class WorkdirLock:
  """The lock of one workdir: `acquire()` (raises `WorkdirBusy`) / `release()`, or `with WorkdirLock(w):`.

  Idempotent: a second `acquire` or `release` of the same object does nothing. Held locks are released at
  interpreter exit.

  Args:
    workdir: the run's directory (local or gs://).
  """

  def __init__(self, workdir):
    self.workdir = paths.path(workdir)
    self.key = _key(self.workdir)
    self.held = False
    self._counted = False  # this object holds one count of `_HELD[key]` (process 0 only)

  def acquire(self) -> "WorkdirLock":
    """Takes the lock (process 0; every process of a job learns the verdict).

    Returns:
      self.

    Raises:
      WorkdirBusy: a live run holds the workdir (on every process of a refused job).
    """
    if self.held:
      return self
    index, count = _process()
    error = None
    if index == 0:
      try:
        with _TABLE_LOCK:
          if self.key not in _HELD:
            _HELD[self.key] = [_take(self.workdir, self.key), 0]
          _HELD[self.key][1] += 1
          self._counted = True
      except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other processes
        error = e
    if count > 1:
      import numpy as np  # pylint: disable=g-import-not-at-top
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      refused = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
      if refused and error is None:
        error = WorkdirBusy(f"workdir {self.workdir}: process 0 could not take its lock (see its error); {_ADVICE}")
    if error is not None:
      raise error
    self.held = True
    _OPEN.add(self)
    return self

  def release(self) -> None:
    """Releases this object's hold; the workdir is freed when the process's last holder releases it."""
    if not self.held:
      return
    self.held = False
    _OPEN.discard(self)
    if not self._counted:
      return
    self._counted = False
    with _TABLE_LOCK:
      entry = _HELD[self.key]
      entry[1] -= 1
      if entry[1] == 0:
        del _HELD[self.key]
        entry[0].release()

  def check(self) -> None:
    """Raises `WorkdirBusy` if the lease was lost (taken over by another run while this one stalled)."""
    entry = _HELD.get(self.key) if self._counted else None
    lost = entry[0].lost() if entry else None
    if lost:
      raise WorkdirBusy(f"workdir {self.workdir}: this run lost its lease ({lost}); stopped before writing")

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


@atexit.register
def _release_all() -> None:
  for lock in list(_OPEN):
    try:
      lock.release()
    except Exception:  # noqa: BLE001 - best effort at exit (a lease then expires by itself)
      pass


_HOOKED = []


def _release_before_executors_stop() -> None:
  """Releases held locks at exit before `concurrent.futures` stops its threads: gcsfs needs them (asyncio
  resolves hosts in an executor), and `threading` stops them before `atexit` handlers run. Its exit hooks
  run last-registered first, so this one is registered after the executors' own."""
  register = getattr(threading, "_register_atexit", None)
  if _HOOKED or register is None:
    return
  import concurrent.futures.thread  # pylint: disable=g-import-not-at-top,unused-import  # registers its hook

  register(_release_all)
  _HOOKED.append(True)
