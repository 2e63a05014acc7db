"""One writer per workdir (`scalenet_jax/train/workdir_lock.py`): a run on a workdir that a live run holds
stops at once with one line and exit code 2 and touches nothing; a run killed with SIGKILL does not block
its restart; on gs:// (the GCS emulator) a lease is renewed while its run lives and taken over once it
expires; `Loop.close()` (and the end of `Loop.train()`) lets the next run in.

No model is trained: the lock is held by a small subprocess (`HOLD`), and the runs that must be refused
stop before they build anything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from scalenet_jax.errors import WorkdirBusy
from scalenet_jax.train import loop as loop_lib
from scalenet_jax.train import workdir_lock

from helpers import gcs_emulator
import tiny_runs

REPO = Path(__file__).resolve().parents[1]

# Holds the lock of argv[1] until a line (or EOF) on stdin, then releases it; "held" once it has it,
# exit code 2 and the refusal on stdout if it is busy.
HOLD = """
import sys
from scalenet_jax.errors import WorkdirBusy
from scalenet_jax.train.workdir_lock import WorkdirLock
try:
  lock = WorkdirLock(sys.argv[1]).acquire()
except WorkdirBusy as e:
  print(e, flush=True)
  sys.exit(2)
print("held", flush=True)
sys.stdin.readline()
lock.release()
"""


def env(**extra) -> dict:
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", **extra)


def hold(workdir, **extra) -> subprocess.Popen:
  """A subprocess holding `workdir`'s lock (returns once it has it)."""
  proc = subprocess.Popen(
      [sys.executable, "-c", HOLD, str(workdir)],
      env=env(**extra),
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  line = proc.stdout.readline().strip()
  if line != "held":
    proc.kill()
    pytest.fail(f"the holder did not get the lock: {line} {proc.stderr.read()[-2000:]}")
  return proc


def try_lock(workdir, **extra) -> subprocess.CompletedProcess:
  """Another process taking and releasing `workdir`'s lock (exit code 2 if it is busy)."""
  return subprocess.run(
      [sys.executable, "-c", HOLD, str(workdir)],
      env=env(**extra),
      input="",
      capture_output=True,
      text=True,
      timeout=120,
  )


def listing(root: Path) -> list:
  """(path, size, mtime) of everything under `root`, the root included."""
  return [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted([root, *root.rglob("*")])]


def a_used_workdir(path: Path) -> Path:
  (path / "checkpoints" / "3").mkdir(parents=True)
  (path / "checkpoints" / "3" / "commit_success.txt").write_text("ok")
  (path / "metrics.jsonl").write_text('{"step": 3}\n')
  return path


def tiny_task(export=None) -> loop_lib.Task:
  """A one-leaf task: enough for a `Loop` to build, restore and close (nothing is trained)."""
  return loop_lib.Task(
      apply_fn=None,
      abstract_variables={"params": {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}},
      batches=None,
      init_fn=lambda rng: {"params": {"w": jnp.zeros((4,), jnp.float32)}},
      export=export,
  )


def tiny_config(**overrides):
  return tiny_runs.micro_config({**tiny_runs.TINY, "steps": 0, **overrides})


# ----------------------------------------------------------------------------------------------------------
# Local workdirs
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_cli_refuses_a_held_workdir_with_one_line_and_touches_nothing(tmp_path):
  workdir = a_used_workdir(tmp_path / "w")
  holder = hold(workdir)
  try:
    before = listing(workdir)
    cmd = [sys.executable, "-m", "scalenet_jax.main", "--config", str(REPO / "configs" / "vit_micro_fmnist.py")]
    cmd += ["--workdir", str(workdir), "--config.steps=1", "--config.data.name=synthetic"]
    run = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    lines = [l for l in run.stderr.splitlines() if l.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-3000:]
    assert lines[0].startswith(f"error: WorkdirBusy: workdir {workdir} is in use by another run"), lines[0]
    assert f"pid {holder.pid}" in lines[0], lines[0]
    # The library path refuses too, before it builds anything.
    with pytest.raises(WorkdirBusy, match=f"pid {holder.pid}"):
      loop_lib.Loop(tiny_config(), str(workdir), tiny_task())
    assert listing(workdir) == before
  finally:
    holder.communicate("\n", timeout=60)
  assert holder.returncode == 0
  assert not (workdir / workdir_lock.LOCK_FILE).exists()  # a released lock leaves no file


def test_a_holder_killed_with_sigkill_does_not_block_the_restart(tmp_path):
  holder = hold(tmp_path)
  assert try_lock(tmp_path).returncode == 2
  holder.send_signal(signal.SIGKILL)
  holder.wait(timeout=60)
  assert (tmp_path / workdir_lock.LOCK_FILE).exists()  # left behind, but nobody holds it
  again = try_lock(tmp_path)
  assert again.returncode == 0, again.stdout + again.stderr[-2000:]
  with workdir_lock.WorkdirLock(tmp_path):
    assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_loop_holds_the_workdir_until_it_is_closed(tmp_path):
  loop = loop_lib.Loop(tiny_config(), str(tmp_path), tiny_task())
  busy = try_lock(tmp_path)
  assert busy.returncode == 2 and f"pid {os.getpid()}" in busy.stdout, busy.stdout + busy.stderr[-2000:]
  with workdir_lock.WorkdirLock(tmp_path):  # the same process: nested, not refused
    pass
  assert (tmp_path / workdir_lock.LOCK_FILE).exists()
  loop.close()
  loop.close()  # idempotent
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()
  assert try_lock(tmp_path).returncode == 0


def test_train_exports_under_the_lock_then_releases_it(tmp_path):
  held_during_export = []
  export = lambda state: held_during_export.append((tmp_path / workdir_lock.LOCK_FILE).exists()) or {}
  loop = loop_lib.Loop(tiny_config(), str(tmp_path), tiny_task(export))
  loop.train()
  assert held_during_export == [True]
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


def test_a_loop_that_fails_to_start_releases_the_workdir(tmp_path):
  with pytest.raises(Exception, match="model axis size 3"):
    loop_lib.Loop(tiny_config(mesh_model=3), str(tmp_path), tiny_task())
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists() and not workdir_lock._HELD


# ----------------------------------------------------------------------------------------------------------
# Multi-process jobs: process 0 locks, every process learns its verdict
# ----------------------------------------------------------------------------------------------------------
PROCESS = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU cross-process collectives
from scalenet_jax.errors import WorkdirBusy
from scalenet_jax.train.workdir_lock import WorkdirLock
lock = WorkdirLock(sys.argv[1])
try:
  lock.acquire()
  print(json.dumps({"held": True, "counted": lock._counted}), flush=True)
  lock.release()
except WorkdirBusy as e:
  print(json.dumps({"held": False, "error": str(e)}), flush=True)
"""


def run_job(workdir, tmp_path, name: str) -> list[dict]:
  import portpicker  # pylint: disable=g-import-not-at-top

  port = portpicker.pick_unused_port()
  procs = []
  for i in (0, 1):
    log = open(tmp_path / f"{name}{i}.log", "w+")  # a file, not a pipe: see tests/mp_launch.py
    extra = dict(SCALENET_COORDINATOR=f"localhost:{port}", SCALENET_NUM_PROCESSES="2", SCALENET_PROCESS_ID=str(i))
    procs.append((subprocess.Popen([sys.executable, "-c", PROCESS, str(workdir)], env=env(**extra), stdout=log), log))
  out = []
  for proc, log in procs:
    try:
      proc.wait(timeout=180)
    finally:
      proc.kill()
    log.seek(0)
    text = log.read()
    assert proc.returncode == 0, text[-3000:]
    out.append(json.loads(text.strip().splitlines()[-1]))
  return out


@pytest.mark.e2e
def test_only_process_0_locks_and_every_process_learns_a_refusal(tmp_path):
  free = run_job(tmp_path, tmp_path, "free")
  assert free == [{"held": True, "counted": True}, {"held": True, "counted": False}]
  holder = hold(tmp_path)
  try:
    busy = run_job(tmp_path, tmp_path, "busy")
  finally:
    holder.communicate("\n", timeout=60)
  assert [r["held"] for r in busy] == [False, False]
  assert f"pid {holder.pid}" in busy[0]["error"] and "process 0" in busy[1]["error"]


# ----------------------------------------------------------------------------------------------------------
# gs:// workdirs: an expiring lease
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bucket():
  with gcs_emulator() as out:
    yield out


def lease_of(root, name):
  return json.loads((root / name / workdir_lock.LEASE_FILE).read_text())


def test_gcs_lease_is_renewed_while_held_and_released_on_close(bucket, monkeypatch):
  env_extra, root = bucket
  monkeypatch.setenv(workdir_lock.LEASE_ENV, "2")
  workdir = "gs://bucket/renewed"
  holder = hold(workdir, **env_extra, **{workdir_lock.LEASE_ENV: "2"})
  try:
    first = lease_of(root, "renewed")
    assert first["pid"] == holder.pid
    with pytest.raises(WorkdirBusy, match=f"pid {holder.pid}.* until "):
      workdir_lock.WorkdirLock(workdir).acquire()
    time.sleep(5)  # over two lease lengths: the holder's thread renewed it
    assert lease_of(root, "renewed")["expires_at"] > first["expires_at"]
    with pytest.raises(WorkdirBusy):
      workdir_lock.WorkdirLock(workdir).acquire()
  finally:
    holder.communicate("\n", timeout=60)
  assert holder.returncode == 0
  assert not (root / "renewed" / workdir_lock.LEASE_FILE).exists()  # released: the next run need not wait
  with workdir_lock.WorkdirLock(workdir):
    assert lease_of(root, "renewed")["pid"] == os.getpid()
  assert not (root / "renewed" / workdir_lock.LEASE_FILE).exists()
  # A run that ends without releasing (an exception, sys.exit) releases at exit.
  code = f"from scalenet_jax.train.workdir_lock import WorkdirLock; WorkdirLock({workdir!r}).acquire()"
  ended = subprocess.run(
      [sys.executable, "-c", code], env=env(**env_extra), capture_output=True, text=True, timeout=120
  )
  assert ended.returncode == 0, ended.stderr[-2000:]
  assert not (root / "renewed" / workdir_lock.LEASE_FILE).exists()


def test_gcs_lease_of_a_killed_run_is_taken_over_once_it_expires(bucket, monkeypatch):
  env_extra, root = bucket
  monkeypatch.setenv(workdir_lock.LEASE_ENV, "4")
  workdir = "gs://bucket/killed"
  holder = hold(workdir, **env_extra, **{workdir_lock.LEASE_ENV: "4"})
  holder.send_signal(signal.SIGKILL)
  holder.wait(timeout=60)
  expires = lease_of(root, "killed")["expires_at"]  # its last renewal
  if time.time() < expires - 0.5:
    with pytest.raises(WorkdirBusy, match="until"):
      workdir_lock.WorkdirLock(workdir).acquire()
  deadline = time.time() + 30
  while True:
    try:
      lock = workdir_lock.WorkdirLock(workdir).acquire()
      break
    except WorkdirBusy:
      assert time.time() < deadline, "the expired lease was never taken over"
      time.sleep(0.5)
  assert time.time() >= expires
  assert lease_of(root, "killed")["pid"] == os.getpid()
  lock.release()
  assert not (root / "killed" / workdir_lock.LEASE_FILE).exists()
