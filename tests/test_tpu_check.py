"""`--mode compile` (scalenet_jax.tpu_check): the config's real sharded step compiled for a TPU slice
(v5e:2x2) on this CPU host, memory against hand counts, and the launcher's refusal of a run that cannot fit.

The model is the micro ViT at 8x8 px (4 patches + cls), so a compile takes seconds. Hand count of its
parameters: patch 4*4*1*64 + 64 = 1,088; cls 64; pos 5*64 = 320; per block norms 2*128, qkv 64*192 + 192,
proj 64*64 + 64, fc1 64*256 + 256, fc2 256*64 + 64 = 49,984, six blocks 299,904; final norm 128; head
64*10 + 10 = 650: 302,154 in all. Forward MACs per image: patch 4*16*64 = 4,096; per block qkv 5*64*192,
q.k and a.v 2*4*5*5*16, proj 5*64*64, fc1 and fc2 2*5*64*256 = 248,960, six blocks 1,493,760; head
(cls token) 640: 1,498,496.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.compilation_cache import compilation_cache
from helpers import REPO

from scalenet_jax import config_lib, tpu_check
from scalenet_jax.errors import ConfigError

PARAMS = 302_154
FWD_MACS, PATCH_MACS = 1_498_496, 4_096
TINY = {"model.img_size": 8, "batch_size": 8, "eval_batch_size": 8}


def tiny_config(**overrides):
  c = config_lib.train_config("vit_micro_patch4_28")
  for key, value in {**TINY, **overrides}.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.fixture(autouse=True)
def _suite_cache_back():
  """A compile check turns the persistent cache off for its process; the tests after it in this worker
  get the suite's cache (tests/conftest.py) back."""
  yield
  jax.config.update("jax_enable_compilation_cache", True)
  compilation_cache.reset_cache()


def main_compile(*args, timeout=600) -> subprocess.CompletedProcess:
  cmd = [sys.executable, "-m", "scalenet_jax.main", "--config", "configs/vit_micro_fmnist.py", "--mode", "compile"]
  return subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "name,chip,topology",
    [
        ("v5e:2x2", "v5e", "v5e:2x2"),
        ("v5e-8", "v5e", "v5e:2x4"),
        ("v5litepod-16", "v5e", "v5e:4x4"),
        ("v4-8", "v4", "v4:2x2x1"),  # 8 TensorCores = 4 chips
        ("v4-32", "v4", "v4:2x2x4"),
        ("v5p-8", "v5p", "v5p:2x2x1"),
        ("v6e-4", "v6e", "v6e:2x2"),
    ],
)
def test_topology_names(name, chip, topology):
  c, t = tpu_check.parse_topology(name)
  assert (c.generation, t) == (chip, topology)


@pytest.mark.parametrize("name", ["v9:2x2", "v4:2x2", "v5e:2x2x2", "v4-6", "tpu", "v5e-8x"])
def test_bad_topology_is_a_config_error(name):
  with pytest.raises(ConfigError):
    tpu_check.parse_topology(name)


@pytest.mark.parametrize("args,says", [((), "needs --topology"), (("--topology", "v9-8"), "unknown TPU topology")])
def test_a_missing_or_unknown_topology_is_one_line(args, says):
  r = main_compile(*args, timeout=120)
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and says in r.stderr


@pytest.mark.e2e
def test_a_step_that_fits_through_main():
  """The CLI compiles train and eval for 4 v5e chips, prints per-device memory and the roofline, and
  ends with the JSON line; the numbers are checked against the hand counts above."""
  r = main_compile("--topology", "v5e:2x2", *(f"--config.{k}={v}" for k, v in TINY.items()))
  assert r.returncode == 0, r.stderr[-3000:]
  assert "TPU_WORKER_HOSTNAMES" not in r.stdout + r.stderr  # libtpu's probing for a TPU VM is quieted
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["topology"] == "v5e:2x2" and out["devices"] == 4 and out["fits"] is True
  assert out["config"] == "configs/vit_micro_fmnist.py" and out["libtpu"] != "?"
  assert out["hbm_bytes_per_device"] == 16 * 2**30
  # Replicated float32 params on every device; AdamW keeps two moments (+ a few scalars).
  assert out["params_bytes_per_device"] == 4 * PARAMS
  assert 2 * 4 * PARAMS <= out["optimizer_bytes_per_device"] <= 2 * 4 * PARAMS + 64
  assert out["state_bytes_per_device"] < out["bytes_per_device"] < 64 * 2**20
  # Matmul FLOPs per device (2 images): forward + input gradients + weight gradients (3x the forward),
  # less the patch embedding's input gradient (the images are not differentiated).
  assert out["flops_per_step"] == 2 * 2 * (3 * FWD_MACS - PATCH_MACS)
  bound = max(out["flops_per_step"] / 197e12, 0.0)
  assert out["step_seconds_bound"] >= bound
  assert out["items_per_second_bound"] == pytest.approx(8 / out["step_seconds_bound"])
  assert "train" in r.stdout and "eval" in r.stdout and "fits: yes" in r.stdout


def test_fsdp_in_bf16_splits_the_state_over_the_devices():
  """fsdp puts a quarter of every large leaf (>= 2**14 elements: the six blocks' qkv, proj, fc1, fc2
  stacks, 294,912 params) on each of the 4 devices, and the compiled program's arguments shrink with it
  (they are larger than our count of the shards: TPU layouts pad small minor dimensions to tiles)."""
  checks = {
      m: tpu_check.check(tiny_config(sharding=m, **{"model.dtype": "bfloat16"}), "v5e:2x2")
      for m in ("replicate", "fsdp")
  }
  rep, fsdp = checks["replicate"], checks["fsdp"]
  large = 6 * (64 * 192 + 64 * 64 + 2 * 64 * 256)
  assert rep["params_bytes_per_device"] == 4 * PARAMS
  assert fsdp["params_bytes_per_device"] == 4 * (large // 4 + PARAMS - large)
  assert fsdp["compute_dtype"] == "bfloat16" and fsdp["sharding"] == "fsdp" and fsdp["fits"]
  for r in (rep, fsdp):
    train = r["programs"]["train"]
    assert train["argument_bytes"] >= r["state_bytes_per_device"] + train["batch_bytes"]
  assert fsdp["programs"]["train"]["argument_bytes"] < 0.6 * rep["programs"]["train"]["argument_bytes"]


def test_a_check_after_cached_compiles_keeps_tpu_programs_out_of_the_cache(monkeypatch):
  """A process that has compiled with a persistent cache (the suite's) already decided to use it: a check
  must still keep its TPU programs out of it, since they cannot be loaded back (jax warned at every later
  check). Every compile is eligible here (no minimum compile time)."""
  cache = jax.config.jax_compilation_cache_dir
  assert cache, "tests/conftest.py sets the suite's cache"
  jax.jit(lambda x: jnp.sin(x) * 3)(jnp.ones(7))
  min_secs = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  try:
    before = set(os.listdir(cache))
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      tpu_check.check(tiny_config(), "v5e:2x2")
    assert not [e for e in set(os.listdir(cache)) - before if "_step" in e]
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_secs)


def test_a_state_larger_than_the_chip_is_refused_with_what_would_fit():
  """A 30M-class head (1.9 G params: 7.7 GB of float32 params, 3x that with AdamW) cannot fit a 16 GiB
  v5e chip replicated: one error line naming fsdp, exit 2, and nothing compiled."""
  r = main_compile("--topology", "v5e-4", "--config.model.num_classes=30000000", timeout=300)
  assert r.returncode == 2, r.stderr[-3000:]
  err = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(err) == 1 and err[0].startswith("error: DoesNotFit:") and "--config.sharding=fsdp" in err[0]
  assert "not compiled" in r.stdout and json.loads(r.stdout.splitlines()[-1])["fits"] is False


def test_the_launcher_checks_before_any_cloud_command():
  """launch/tpu_pod.py runs the compile check for its slice (with the run's overrides) and stops before
  creating anything when the config does not fit."""
  r = subprocess.run(
      [sys.executable, str(REPO / "launch" / "tpu_pod.py"), "--dry-run", "--name", "p", "--zone", "z"]
      + ["--accelerator-type", "v5litepod-4", "--config", "configs/vit_micro_fmnist.py", "--workdir", "gs://b/r"]
      + ["--", "--config.model.num_classes=30000000"],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert r.returncode == 2, r.stderr[-3000:]
  assert "--mode compile --topology v5litepod-4 --config.model.num_classes=30000000" in r.stderr
  assert "gcloud" not in r.stdout and "no cloud command was run" in r.stderr


def test_the_table_plans_chunks_and_marks_pending_rows(tmp_path):
  """docs/tpu.md's generator: every paper config's main run comes first on the four slices, `alt` rows
  override the compute dtype, a chunk starts no row it cannot finish, and unfinished rows are marked."""
  from scalenet_jax import tpu_table

  rows = tpu_table.rows()
  assert [r["topology"] for r in rows[:4]] == ["v4-8", "v5e-8", "v5e-16", "v5p-8"]
  assert {(r["config"], r["arg"]) for r in rows[:28]} == {
      *((f"configs/{m}_2x.py", "scalenet") for m in tpu_table.VISION),
      ("configs/llama3_1b_2x.py", "run=scalenet"),
  }
  alt = next(r for r in rows if r["dtype"] == "alt" and r["config"] == "configs/llama3_1b_2x.py")
  assert tpu_table.command(alt)[-1] == "--config.model.dtype=float32"  # the LM ships in bf16
  assert not any(a.startswith("--config.model.dtype") for a in tpu_table.command(rows[0]))
  assert not any(r["dtype"] == "alt" and "nas_" in r["config"] for r in rows)
  done = {tpu_table.key(rows[0]): dict(rows[0], exit=1, wall_s=100.0, error="error: a failed compile")}
  record, out = tmp_path / "tpu.json", tmp_path / "tpu.md"
  tpu_table.write_record(str(record), done)
  # 1 minute cannot hold a ~100 s row: nothing runs, the doc is written from the record.
  assert tpu_table.main(["--record", str(record), "--out", str(out), "--max_minutes", "1"]) == 0
  doc = out.read_text()
  assert f"1 of {len(rows)} rows are done" in doc and doc.count("| pending |") == len(rows) - 1
  assert "| error: error: a failed compile |" in doc


def test_only_the_batches_a_task_splits_must_divide_over_the_mesh():
  """A supernet run (no eval step) is not refused for an eval batch that does not divide over the
  devices; a run that evaluates is (a 4-device v5e mesh)."""
  from scalenet_jax.train import loop as loop_lib
  from scalenet_jax.train import sharding as sh

  chip, topology = tpu_check.parse_topology("v5e:2x2")
  mesh = sh.make_mesh(-1, 1, tpu_check.topology_devices(chip, topology))
  config = config_lib.train_config("vit_micro_patch4_28", batch_size=8, eval_batch_size=250)
  task = lambda evals: loop_lib.Task(apply_fn=None, abstract_variables={}, batches=None, eval_batches=evals)
  loop_lib.check_batch_sizes(config, mesh, task(None))
  with pytest.raises(ConfigError, match="eval_batch_size=250"):
    loop_lib.check_batch_sizes(config, mesh, task(lambda: iter(())))
  config.batch_size = 6
  with pytest.raises(ConfigError, match="batch_size=6"):
    loop_lib.check_batch_sizes(config, mesh, task(None))


def test_a_program_the_compiler_refuses_for_memory_is_reported_as_not_fitting():
  """libtpu refuses a program whose temporaries exceed HBM at compile time (the NAS ImageNet supernet at
  128 images per v5e chip: 33.42G of temporaries): the check records the compiler's number and our count
  of the arguments instead of failing."""
  message = (
      "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (33.42G) "
      "exceeds available HBM (15.75G)."
  )

  class Refused:

    def trace(self, *args):
      return self

    def lower(self):
      return self

    def compile(self):
      raise jax.errors.JaxRuntimeError(message)

  p = tpu_check._program(Refused(), None, None, 8, arguments=1000)
  assert p["temp_bytes"] == int(33.42 * 2**30) and p["bytes_per_device"] == 1000 + int(33.42 * 2**30)
  assert p["out_of_memory"].startswith("RESOURCE_EXHAUSTED: Ran out of memory")
