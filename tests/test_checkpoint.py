"""Checkpointer: exact round trips, keep-N, skipping damaged steps, mismatch errors, sharded restore, SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scalenet_jax.train import checkpoint as ckpt_lib

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------
def make_state(seed: int):
  """A small train state like the trainer's: params, adamw state, step, rng key data.

  Arrays are random and >1 KiB so orbax writes them to data files (smaller values are inlined in the
  OCDBT index, where truncating a data file would not damage them).
  """
  rng = np.random.default_rng(seed)
  params = {
      "dense": {
          "kernel": jnp.asarray(rng.standard_normal((32, 16)), jnp.float32),
          "bias": jnp.asarray(rng.standard_normal((16,)), jnp.bfloat16),
      },
      "embed": jnp.asarray(rng.standard_normal((64, 32)), jnp.float32),
  }
  # Values that an imprecise round trip would change: -0.0, NaN, denormals.
  params["embed"] = params["embed"].at[0, :3].set(jnp.array([-0.0, jnp.nan, 1e-40], jnp.float32))
  tx = optax.adamw(1e-3)
  opt_state = tx.init(params)
  # Make the moments non-trivial so a restore from the wrong step would be detected.
  opt_state = jax.tree.map(lambda x: x + seed, opt_state)
  return {
      "params": params,
      "opt_state": opt_state,
      "step": jnp.int32(seed),
      "rng": jax.random.key_data(jax.random.key(seed)),
  }


def abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def fp_of(state) -> str:
  return ckpt_lib.fingerprint(abstract(state["params"]))


def assert_bit_identical(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    assert x.tobytes() == y.tobytes(), f"bits differ at {jax.tree_util.keystr(path)}"


def save_steps(workdir, steps, **kwargs):
  with ckpt_lib.Checkpointer(workdir, **kwargs) as ckpt:
    for step in steps:
      state = make_state(step)
      ckpt.save(step, state, {"fingerprint": fp_of(state), "config": {"lr": 1e-3}})


def restore(workdir, **kwargs):
  like = make_state(0)
  with ckpt_lib.Checkpointer(workdir, **kwargs) as ckpt:
    return ckpt.restore_latest(abstract(like), fp_of(like))


def tree_listing(root: Path):
  return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


# ---------------------------------------------------------------------------------------------------------
# Round trips and keep-N
# ---------------------------------------------------------------------------------------------------------
def test_round_trip_is_bit_identical_and_resumes_rng(tmp_path):
  state = make_state(7)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(7, state, {"fingerprint": fp_of(state), "config": {"model": "vit_ti"}})
  step, restored = restore(tmp_path)
  assert step == 7
  assert_bit_identical(state, restored)
  # The restored key data continues the same random stream.
  key = jax.random.wrap_key_data(restored["rng"])
  np.testing.assert_array_equal(jax.random.normal(key, (4,)), jax.random.normal(jax.random.key(7), (4,)))
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    meta = ckpt.read_meta(7)
  assert meta == {"fingerprint": fp_of(state), "config": {"model": "vit_ti"}, "step": 7}


def test_async_save_survives_donated_buffers(tmp_path):
  state = make_state(5)
  expected = jax.tree.map(np.asarray, state)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(5, state, {"fingerprint": fp_of(state)})
    jax.tree.map(lambda x: x.delete(), state)  # what donating the state to the next step does
  step, restored = restore(tmp_path)
  assert step == 5
  assert_bit_identical(expected, restored)


def test_keep_n_and_latest(tmp_path):
  save_steps(tmp_path, [1, 2, 3, 4], max_to_keep=2)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "4"]
  step, restored = restore(tmp_path)
  assert step == 4
  assert_bit_identical(make_state(4), restored)


def test_save_interval_skips_steps(tmp_path):
  state = make_state(1)
  with ckpt_lib.Checkpointer(tmp_path, save_interval_steps=5, max_to_keep=None) as ckpt:
    saved = [ckpt.save(s, state, {"fingerprint": fp_of(state)}) for s in range(0, 12)]
    assert ckpt.save(12, state, {"fingerprint": fp_of(state)}, force=True)
    ckpt.wait()
    assert ckpt.all_steps() == [0, 5, 10, 12]
  assert [s for s, ok in enumerate(saved) if ok] == [0, 5, 10]


def test_empty_workdir_restores_nothing(tmp_path):
  assert restore(tmp_path / "fresh") is None


# ---------------------------------------------------------------------------------------------------------
# Damaged steps are skipped
# ---------------------------------------------------------------------------------------------------------
def _largest_file(directory: Path) -> Path:
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


# Orbax leaves the failed tensorstore reads as never-awaited coroutines; their errors are expected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    "damage,reason",
    [
        ("truncate", "failed to read arrays"),
        ("delete", "failed to read arrays"),
        ("no_marker", "no commit_success.txt"),
        ("tmp_dir", "unfinished save left 3.orbax-checkpoint-tmp"),
        ("bad_meta", "unreadable metadata"),
    ],
)
def test_damaged_latest_falls_back_to_previous(tmp_path, capsys, damage, reason):
  save_steps(tmp_path, [1, 2, 3])
  step3 = tmp_path / "checkpoints" / "3"
  if damage == "truncate":
    data = _largest_file(step3 / "state")
    os.truncate(data, data.stat().st_size // 2)
  elif damage == "delete":
    _largest_file(step3 / "state").unlink()
  elif damage == "no_marker":
    (step3 / "commit_success.txt").unlink()
  elif damage == "tmp_dir":
    step3.rename(step3.with_name("3.orbax-checkpoint-tmp"))
  elif damage == "bad_meta":
    (step3 / "meta" / "metadata").write_text('{"fingerprint": ')
  capsys.readouterr()

  step, restored = restore(tmp_path)

  assert step == 2
  assert_bit_identical(make_state(2), restored)
  warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("WARNING: skipping")]
  assert len(warnings) == 1 and "step 3" in warnings[0] and reason in warnings[0], warnings
  # The damaged step is moved aside (an unfinished one deleted), so step 3 can be saved again on resume.
  assert not list((tmp_path / "checkpoints").glob("3*"))
  corrupt = tmp_path / "checkpoints.corrupt"
  assert [p.name for p in corrupt.iterdir()] == ["3"] if damage != "tmp_dir" else not corrupt.exists()
  save_steps(tmp_path, [3])
  step, restored = restore(tmp_path)
  assert step == 3
  assert_bit_identical(make_state(3), restored)


def test_discard_bad_false_leaves_files_for_a_live_writer(tmp_path, capsys):
  save_steps(tmp_path, [1, 2])
  (tmp_path / "checkpoints" / "2" / "commit_success.txt").unlink()  # looks like a save in progress on GCS
  like = make_state(0)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    step, _ = ckpt.restore_latest(abstract(like), fp_of(like), discard_bad=False)
  assert step == 1 and "skipping checkpoint step 2" in capsys.readouterr().err
  assert (tmp_path / "checkpoints" / "2").is_dir() and not (tmp_path / "checkpoints.corrupt").exists()


def test_all_steps_damaged_returns_none(tmp_path, capsys):
  save_steps(tmp_path, [1, 2])
  for step in ("1", "2"):
    (tmp_path / "checkpoints" / step / "commit_success.txt").unlink()
  assert restore(tmp_path) is None
  assert capsys.readouterr().err.count("WARNING: skipping checkpoint") == 2


# ---------------------------------------------------------------------------------------------------------
# Mismatches are errors and leave the workdir untouched
# ---------------------------------------------------------------------------------------------------------
def test_fingerprint_mismatch_raises_and_leaves_workdir_untouched(tmp_path):
  save_steps(tmp_path, [1, 2])
  before = tree_listing(tmp_path)
  like = make_state(0)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(ValueError, match=rf"fingerprint '{fp_of(like)}', expected 'deadbeef'"):
      ckpt.restore_latest(abstract(like), "deadbeef")
  assert tree_listing(tmp_path) == before


def test_shape_and_dtype_mismatch_raise(tmp_path):
  save_steps(tmp_path, [1])
  like = make_state(0)
  wrong_shape = abstract(like)
  wrong_shape["params"]["embed"] = jax.ShapeDtypeStruct((65, 32), jnp.float32)
  wrong_dtype = abstract(like)
  wrong_dtype["params"]["dense"]["bias"] = jax.ShapeDtypeStruct((16,), jnp.float32)
  extra_leaf = abstract(like)
  extra_leaf["ema"] = jax.ShapeDtypeStruct((3,), jnp.float32)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(ValueError, match=r"leaf params/embed is float32\(64, 32\), expected float32\(65, 32\)"):
      ckpt.restore_latest(wrong_shape, fp_of(like))
    with pytest.raises(ValueError, match=r"params/dense/bias is bfloat16\(16,\), expected float32\(16,\)"):
      ckpt.restore_latest(wrong_dtype, fp_of(like))
    with pytest.raises(ValueError, match=r"different state structure: missing \['ema'\]"):
      ckpt.restore_latest(extra_leaf, fp_of(like))


def test_save_validates_meta(tmp_path):
  state = make_state(1)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(ValueError, match="no 'fingerprint' key"):
      ckpt.save(1, state, {"config": {}})
    with pytest.raises(ValueError, match="not JSON-serializable"):
      ckpt.save(1, state, {"fingerprint": "x", "config": {"f": object()}})


def test_fingerprint_depends_on_paths_shapes_dtypes_only():
  p = {"a": jnp.zeros((2, 3)), "b": {"c": jnp.zeros((4,), jnp.bfloat16)}}
  same = {"b": {"c": jnp.ones((4,), jnp.bfloat16)}, "a": jax.ShapeDtypeStruct((2, 3), jnp.float32)}
  assert ckpt_lib.fingerprint(p) == ckpt_lib.fingerprint(same)
  assert ckpt_lib.fingerprint(p) != ckpt_lib.fingerprint({**p, "a": jnp.zeros((3, 2))})
  assert ckpt_lib.fingerprint(p) != ckpt_lib.fingerprint({**p, "a": jnp.zeros((2, 3), jnp.bfloat16)})
  assert ckpt_lib.fingerprint(p) != ckpt_lib.fingerprint({"a2": p["a"], "b": p["b"]})


# ---------------------------------------------------------------------------------------------------------
# Params export
# ---------------------------------------------------------------------------------------------------------
def test_export_and_load_params(tmp_path):
  params = make_state(3)["params"]
  ckpt_lib.export_params(tmp_path / "params", params)
  assert_bit_identical(params, ckpt_lib.load_params(tmp_path / "params"))
  assert_bit_identical(params, ckpt_lib.load_params(tmp_path / "params", abstract(params)))
  with pytest.raises(FileExistsError, match="already exists"):
    ckpt_lib.export_params(tmp_path / "params", params)
  ckpt_lib.export_params(tmp_path / "params", make_state(4)["params"], overwrite=True)
  assert_bit_identical(make_state(4)["params"], ckpt_lib.load_params(tmp_path / "params"))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    ckpt_lib.load_params(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------------------
# Subprocess tests: 8-device sharded restore, SIGKILL during an async save
# ---------------------------------------------------------------------------------------------------------
def _run_python(code: str, *args, env_extra=None, timeout=120, background=False):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), **(env_extra or {})}
  cmd = [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]
  if background:
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


SHARDED = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from scalenet_jax.train import checkpoint as C
assert jax.device_count() == 8
mesh = jax.make_mesh((4, 2), ("data", "model"))
def put(x, spec):
    return jax.device_put(x, NamedSharding(mesh, spec))
w = np.arange(16 * 8, dtype=np.float32).reshape(16, 8)
state = {"w": put(w, P("data", "model")), "b": put(np.ones(8, np.float32), P()),
         "rng": put(np.asarray(jax.random.key_data(jax.random.key(3))), P())}
fp = C.fingerprint({"w": state["w"]})
with C.Checkpointer(sys.argv[1]) as ckpt:
    ckpt.save(5, state, {"fingerprint": fp})
# Restore onto a *different* layout: the target shardings win, each device gets only its shard.
target = {"w": jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=NamedSharding(mesh, P("model", "data"))),
          "b": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=NamedSharding(mesh, P("data"))),
          "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(mesh, P()))}
with C.Checkpointer(sys.argv[1]) as ckpt:
    step, restored = ckpt.restore_latest(target, fp)
assert step == 5
for k in target:
    assert restored[k].sharding.is_equivalent_to(target[k].sharding, restored[k].ndim), k
    np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(state[k]))
assert {s.data.shape for s in restored["w"].addressable_shards} == {(8, 2)}
print("SHARDED_OK")
"""


def test_restore_onto_sharded_target_8_cpu_devices(tmp_path):
  result = _run_python(SHARDED, tmp_path, env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert "SHARDED_OK" in result.stdout, result.stderr[-3000:]


WRITER = """
import itertools, sys
import numpy as np
from scalenet_jax.train import checkpoint as C
def state(step):  # ~8 MiB of incompressible data, so every save takes a while to write
    rng = np.random.default_rng(step)
    return {"a": rng.standard_normal((1024, 1024), dtype=np.float32),
            "b": rng.standard_normal((1024, 1024), dtype=np.float32)}
ckpt = C.Checkpointer(sys.argv[1], max_to_keep=3)
for step in itertools.count(int(sys.argv[2])):
    ckpt.save(step, state(step), {"fingerprint": "writer"})  # async: returns while the write goes on
"""


def test_sigkill_during_async_save_restores_last_complete_step(tmp_path, capsys):
  directory = tmp_path / "checkpoints"
  killed_mid_write = False
  for attempt in range(3):  # a kill can land just after a save finished; then try again
    start = 1 + max([int(p.name) for p in directory.glob("[0-9]*") if p.name.isdigit()], default=0)
    writer = _run_python(WRITER, tmp_path, start, background=True)
    deadline = time.time() + 90
    try:
      while time.time() < deadline:
        done = [p for p in directory.glob("*") if p.name.isdigit()]
        if done and list(directory.glob("*.orbax-checkpoint-tmp*")):
          break
        time.sleep(0.005)
      else:
        pytest.fail("writer never got a complete step plus a save in progress")
    finally:
      writer.send_signal(signal.SIGKILL)
      writer.wait()
    if list(directory.glob("*.orbax-checkpoint-tmp*")):
      killed_mid_write = True
      break
  assert killed_mid_write
  complete = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  unfinished = [p.name for p in directory.glob("*.orbax-checkpoint-tmp*")]

  target = {
      k: jax.ShapeDtypeStruct((1024, 1024), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
      for k in ("a", "b")
  }
  capsys.readouterr()
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    step, restored = ckpt.restore_latest(target, "writer")
  assert step == complete[-1]
  expected = np.random.default_rng(step)
  np.testing.assert_array_equal(restored["a"], expected.standard_normal((1024, 1024), dtype=np.float32))
  np.testing.assert_array_equal(restored["b"], expected.standard_normal((1024, 1024), dtype=np.float32))
  err = capsys.readouterr().err
  assert f"unfinished save left {unfinished[0]}" in err, err
  assert f"removed unfinished save {directory / unfinished[0]}" in err, err
  assert not list(directory.glob("*.orbax-checkpoint-tmp*"))


def test_relative_workdir_is_resolved_against_the_cwd(tmp_path, monkeypatch):
  # The README demo passes a relative --workdir; Orbax itself rejects relative paths.
  monkeypatch.chdir(tmp_path)
  save_steps("rel_workdir", [1, 2], async_save=True)
  assert (tmp_path / "rel_workdir" / "checkpoints" / "2").is_dir()
  step, state = restore("rel_workdir")
  assert step == 2
  assert_bit_identical(state, make_state(2))
