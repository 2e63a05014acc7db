"""The trainer under failure: SIGKILL mid-run, kill during a checkpoint write, damaged checkpoints, and
data-parallel / FSDP runs on 8 fake devices matching the 1-device run.

The reference is an uninterrupted in-process run. Killed runs go through the real CLI in a subprocess
with the same XLA flags (none), so their numerics are the same programs; restarts run in-process. All
share one persistent compilation cache, which keeps the subprocesses from recompiling.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from scalenet_jax.train import checkpoint as ckpt_lib
from scalenet_jax import trainer

import helpers
import tiny_runs

pytestmark = pytest.mark.e2e  # training runs through the entry points (tests/conftest.py)
REPO = Path(__file__).resolve().parents[1]
MICRO = str(REPO / "configs" / "vit_micro_fmnist.py")
STEPS, CKPT_EVERY = 16, 4
TINY = {**tiny_runs.TINY, "steps": STEPS, "ckpt_every": CKPT_EVERY, "keep_checkpoints": 10, "optim.warmup_steps": 2}


def tiny_config(**overrides):
  return tiny_runs.micro_config({**TINY, **overrides})


def cli(workdir, devices=1, **overrides):
  """Popen of the CLI training run of tiny_config(**overrides)."""
  args = [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      PYTHONPATH=str(REPO),
      JAX_COMPILATION_CACHE_DIR=helpers.suite_cache(),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  env.pop("XLA_FLAGS", None)
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.Popen(
      [sys.executable, "-m", "scalenet_jax.main", "--config", MICRO, "--workdir", str(workdir), *args],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )


@pytest.fixture(scope="module", autouse=True)
def compilation_cache():
  """Every program of this module's in-process runs goes to the suite's cache, which its subprocesses
  (`cli`) read too."""
  with tiny_runs.persistent_compile_cache(helpers.suite_cache()):
    yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run: (workdir, final params as a flat dict, train losses by step)."""
  workdir = tmp_path_factory.mktemp("reference")
  trainer.run(tiny_config(), str(workdir))
  return workdir, final_params(workdir), losses(workdir)


def final_params(workdir) -> dict:
  tree = ckpt_lib.load_params(Path(workdir) / "export" / "params")
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def losses(workdir) -> dict:
  out = {}
  for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
    m = json.loads(line)
    if "loss" in m:
      out[m["step"]] = m["loss"]  # a resumed run rewrites the steps after its checkpoint: keep the last
  return out


def assert_bit_identical(a: dict, b: dict):
  assert a.keys() == b.keys()
  different = [k for k in a if not np.array_equal(a[k], b[k])]
  assert not different, f"params differ from the uninterrupted run: {different[:5]}"


def finalized_steps(workdir) -> list[int]:
  d = Path(workdir) / "checkpoints"
  if not d.is_dir():
    return []
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / ckpt_lib.COMMIT_MARKER).exists())


def kill_when(proc, condition, timeout=300.0, poll=0.005):
  """SIGKILLs `proc` as soon as `condition()` holds; fails if the run ended first or never got there."""
  deadline = time.time() + timeout
  while not condition():
    if proc.poll() is not None:
      pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point:\n{proc.stderr.read()[-3000:]}")
    if time.time() > deadline:
      proc.kill()
      pytest.fail("the run never reached the kill point")
    time.sleep(poll)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL


# ----------------------------------------------------------------------------------------------
# Exact resume
# ----------------------------------------------------------------------------------------------
def test_sigkill_then_restart_is_bit_identical(reference, tmp_path):
  ref_dir, ref_params, ref_losses = reference
  proc = cli(tmp_path)
  kill_when(proc, lambda: CKPT_EVERY in finalized_steps(tmp_path))
  assert not (tmp_path / "export").exists(), "the run finished before it was killed"
  killed_at = max(finalized_steps(tmp_path))
  assert killed_at < STEPS
  result = trainer.run(tiny_config(), str(tmp_path))
  assert_bit_identical(final_params(tmp_path), ref_params)
  assert losses(tmp_path) == ref_losses  # every step's loss, before and after the kill
  assert result["top1"] == json.loads((ref_dir / "metrics.jsonl").read_text().splitlines()[-1])["top1"]


def test_kill_during_checkpoint_write_then_restart_is_bit_identical(reference, tmp_path):
  """Killed while an (async) checkpoint is being written: the partial save is dropped on restart."""
  _, ref_params, _ = reference
  proc = cli(tmp_path)
  ckpts = tmp_path / "checkpoints"

  def writing():
    return ckpts.is_dir() and any(ckpt_lib.TMP_MARKER in p.name for p in ckpts.iterdir())

  kill_when(proc, writing, poll=0.0005)
  partial = [p.name for p in ckpts.iterdir() if ckpt_lib.TMP_MARKER in p.name]
  trainer.run(tiny_config(), str(tmp_path))
  assert_bit_identical(final_params(tmp_path), ref_params)
  # An interrupted save is deleted on restart (a finished one may have landed between the poll and the kill).
  assert not [p for p in ckpts.iterdir() if ckpt_lib.TMP_MARKER in p.name]
  if partial:
    assert not (tmp_path / ckpt_lib.CORRUPT_DIR).exists()


def test_damaged_checkpoint_is_reported_and_skipped(reference, tmp_path, capfd):
  """Truncated data files in the newest step: warning, resume from the previous step, same final params."""
  ref_dir, ref_params, _ = reference
  workdir = tmp_path / "run"
  shutil.copytree(ref_dir / "checkpoints", workdir / "checkpoints")
  shutil.rmtree(workdir / "checkpoints" / str(STEPS))
  damaged = workdir / "checkpoints" / str(STEPS - CKPT_EVERY)
  data_files = [p for p in (damaged / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert data_files
  for p in data_files:
    with open(p, "r+b") as f:
      f.truncate(p.stat().st_size // 2)
  capfd.readouterr()
  trainer.run(tiny_config(), str(workdir))
  err = capfd.readouterr().err
  warnings = [l for l in err.splitlines() if l.startswith("WARNING:") and f"step {STEPS - CKPT_EVERY}" in l]
  assert warnings and "skipping checkpoint" in warnings[0], err[-3000:]
  assert (workdir / ckpt_lib.CORRUPT_DIR / str(STEPS - CKPT_EVERY)).is_dir()  # kept aside, not deleted
  assert_bit_identical(final_params(workdir), ref_params)


def test_missing_commit_marker_is_skipped(reference, tmp_path, capfd):
  """A step directory without orbax's commit marker (copied or synced partially) is not trusted."""
  ref_dir, ref_params, _ = reference
  workdir = tmp_path / "run"
  shutil.copytree(ref_dir / "checkpoints", workdir / "checkpoints")
  (workdir / "checkpoints" / str(STEPS) / ckpt_lib.COMMIT_MARKER).unlink()
  capfd.readouterr()
  trainer.run(tiny_config(), str(workdir))
  assert f"skipping checkpoint step {STEPS}" in capfd.readouterr().err
  assert_bit_identical(final_params(workdir), ref_params)


# ----------------------------------------------------------------------------------------------
# Data parallel and FSDP on 8 fake devices == 1 device
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eight_device_runs(tmp_path_factory):
  """Replicated and FSDP runs on 8 CPU devices, concurrently: {mode: workdir}."""
  root = tmp_path_factory.mktemp("dp")
  procs = {mode: cli(root / mode, devices=8, sharding=mode) for mode in ("replicate", "fsdp")}
  for mode, proc in procs.items():
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{mode}: {err[-3000:]}"
  return {mode: root / mode for mode in procs}


@pytest.mark.parametrize("mode", ["replicate", "fsdp"])
def test_eight_devices_match_one_device(reference, eight_device_runs, mode):
  _, ref_params, ref_losses = reference
  got = losses(eight_device_runs[mode])
  assert got.keys() == ref_losses.keys()
  rel = max(abs(got[s] - ref_losses[s]) / abs(ref_losses[s]) for s in got)
  assert rel <= 1e-5, (rel, got, ref_losses)
  # Final params: close per tensor (Adam amplifies rounding on near-zero gradient entries, so no
  # elementwise bound; a sharding bug moves whole tensors by O(1) relative error).
  params = final_params(eight_device_runs[mode])
  for k, v in ref_params.items():
    err = np.linalg.norm(params[k] - v) / max(np.linalg.norm(v), 1e-12)
    assert err <= 1e-3, (k, err)
