"""Launching tests/mp_worker.py subprocesses and reading their JSON result (no jax import here)."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
MARK = "RESULT_JSON:"


def worker_env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # only faster compiles; the worker adds devices
  env["JAX_PLATFORMS"] = "cpu"
  return env


def start_worker(*args) -> subprocess.Popen:
  # Output goes to a file, not a pipe: a worker blocked on a full pipe while its peer waits for it in a
  # collective (or in jax.distributed.shutdown) would deadlock the pair.
  log = tempfile.TemporaryFile(mode="w+")
  proc = subprocess.Popen(
      [sys.executable, str(TESTS / "mp_worker.py"), *map(str, args)],
      env=worker_env(),
      stdout=log,
      stderr=subprocess.STDOUT,
      text=True,
  )
  proc.log = log
  return proc


def worker_result(proc: subprocess.Popen, timeout: float = 300):
  try:
    proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
  proc.log.seek(0)
  out = proc.log.read()
  proc.log.close()
  if proc.returncode == -9:
    raise AssertionError(f"worker {proc.args} timed out after {timeout} s:\n{out[-3000:]}")
  assert proc.returncode == 0, f"worker {proc.args} failed:\n{out[-3000:]}"
  lines = [l for l in out.splitlines() if l.startswith(MARK)]
  assert lines, f"worker {proc.args} printed no result:\n{out[-2000:]}"
  return json.loads(lines[-1][len(MARK) :])
