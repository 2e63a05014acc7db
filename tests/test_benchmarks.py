"""The benchmark scripts still run (tiny shapes, one timed step) and their numbers obey their conventions.

Each script runs as a subprocess exactly as a user would (`python benchmarks/<name>.py ... --json`). They
share a persistent XLA compilation cache in a temp dir, so the identical micro train step of train_step and
vs_timm compiles once, and compile at XLA's backend level 1 as the rest of the suite (tests/conftest.py:
compiles are nearly all of these runs; the tests check the scripts' bookkeeping, not the programs' speed).
Those tests are `e2e`.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import subprocess
import sys

import pytest

from scalenet_jax import jax_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
MICRO = "vit_micro_patch4_28"
TINY = ["--batch", "2", "--steps", "1", "--warmup", "0"]
ARGS = {
    "train_step": [
        "--model",
        MICRO,
        "--peak-n",
        "128",
        "--peak-iters",
        "1",
        "--recipe",
        "simple",
        "--loader-threads",
        "1",
    ],
    "vs_timm": ["--models", MICRO, "--no-torch-compile", "--peak-n", "128"],
    "scalenet_step": ["--model", MICRO],
    "compile_depth": ["--depths", "2,4", "--unroll-depths", "2", "--repeats", "1"],
    "profile_step": ["--models", f"{MICRO}:2", "--steps", "1", "--warmup", "1"],
    "nas_step": ["--space", "tiny", "--res", "16"],
}
NO_TINY = {"compile_depth", "profile_step"}  # no --batch/--steps/--warmup (compile_depth: not a train step)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """`run(name) -> results dict` of the script's tiny mode (each script runs at most once per module)."""
  tmp = tmp_path_factory.mktemp("bench")
  env = dict(
      os.environ,
      JAX_COMPILATION_CACHE_DIR=str(tmp / "xla_cache"),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  # One CPU device, as a user's run has (no other flags of the test session). The tiny modes time a step
  # or two, and these tests check what the scripts record, not the numbers: level 0 compiles fastest
  # (nas_step's three programs: 73 -> 52 s for the whole script, 2-core AMD EPYC under load).
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"

  @functools.lru_cache(maxsize=None)
  def go(name):
    out = tmp / f"{name}.json"
    tiny = [] if name in NO_TINY else TINY
    cmd = [sys.executable, os.path.join(BENCH, f"{name}.py"), *ARGS[name], *tiny, "--json", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    with open(out) as f:
      return json.load(f)

  return go


def _bench_module(name: str):
  """Import `benchmarks/<name>.py` as a module (the scripts are not a package)."""
  sys.path.insert(0, BENCH)
  try:
    return importlib.import_module(name)
  finally:
    sys.path.remove(BENCH)


@pytest.mark.e2e
def test_train_step_reports_mfu_with_stated_convention(run):
  d = run("train_step")
  assert d["model"] == MICRO and d["batch"] == 2 and d["img_size"] == 28
  assert d["images_per_s"] > 0 and d["peak_jax_flops"] > 0 and d["peak_numpy_flops"] > 0
  assert d["images_per_s"] == pytest.approx(d["batch"] / d["step_s"])
  # 3 x forward MACs x 2 FLOP/MAC per image, over the best matmul rate measured in the run.
  assert d["model_flops_per_s"] == pytest.approx(6 * d["fwd_macs"] * d["images_per_s"])
  assert d["peak_best_flops"] == max(v for k, v in d["peaks"].items() if k != "best") == d["peaks"]["best"]
  assert d["mfu"] == pytest.approx(d["model_flops_per_s"] / d["peak_best_flops"])
  assert d["loader_slowdown_pct"] == pytest.approx(100 * (d["loader_step_s"] / d["resident_step_s"] - 1))
  m = d["machine"]
  assert m["cores"] >= 1 and len(m["loadavg"].split()) == 3 and m["cpu"]
  assert m["jax"] and m["jaxlib"] and m["flax"] and "xla_flags" in m and m["allocator"]
  if jax_utils._thp_mode() in ("madvise", "always"):  # the script re-ran itself with the huge-page tunable
    assert m["allocator"].startswith("transparent huge pages"), m["allocator"]


@pytest.mark.e2e
def test_vs_timm_compares_the_same_model(run):
  (r,) = run("vs_timm")["results"]
  assert r["model"] == MICRO and r["batch"] == 2
  assert r["jax_images_per_s"] > 0 and r["torch_images_per_s"] > 0
  assert r["ratio"] == pytest.approx(r["jax_images_per_s"] / r["torch_images_per_s"])
  assert r["jax_mfu"] == pytest.approx(r["flops_per_image"] * r["jax_images_per_s"] / run("vs_timm")["peaks"]["best"])
  assert r["torch_compile_s"] is None and "ratio_compile" not in r  # --no-torch-compile


@pytest.mark.e2e
def test_scalenet_step_freezes_the_core_at_equal_depth(run):
  d = run("scalenet_step")
  s, f = d["scalenet"], d["full"]
  assert s["depth"] == f["depth"] == 2 * 6  # vit_micro has 6 layers; R = 2
  assert s["trainable_params"] < s["params"] < f["params"] == f["trainable_params"]
  for v in (s, f):
    m = v["memory"]
    assert m["peak"] == m["argument"] + m["output"] - m["alias"] + m["temp"] > 0
  assert d["time_ratio"] == pytest.approx(s["step_s"] / f["step_s"])
  # The frozen core holds no Adam moments, so the ScaleNet state (the step's arguments) is smaller.
  assert s["memory"]["argument"] < f["memory"]["argument"]


@pytest.mark.e2e
def test_compile_depth_reports_every_mode(run):
  d = run("compile_depth")
  modes = {(r["mode"], r["depth"]) for r in d["rows"]}
  assert modes == {("scan", 2), ("scan", 4), ("unrolled", 2), ("default", 2), ("default", 4), ("scalenet2x", 24)}
  assert all(r["total_s"] == pytest.approx(r["lower_s"] + r["compile_s"]) for r in d["rows"])
  assert d["ratio_24_12"] == {}  # neither 12 nor 24 was compiled


@pytest.mark.e2e
def test_run_all_renders_every_result(run):
  run_all = _bench_module("run_all")
  assert {"train_step", "vs_timm", "scalenet_step"} <= set(run_all.discover())
  assert not {"common", "run_all"} & set(run_all.discover())
  names = ["train_step", "scalenet_step", "compile_depth", "vs_timm"]  # torch and timm: test dependencies
  runs = [dict(name=n, cmd=f"{n}.py --quick", status="ok", runtime_s=1.0, output="printed", data=run(n)) for n in names]
  runs.append(dict(name="broken", cmd="broken.py", status="failed (exit 1)", runtime_s=0.5, output="Trace", data=None))
  md = run_all.render(runs, run("train_step")["machine"], quick=True)
  assert f"{100 * run('train_step')['mfu']:.1f}%" in md
  assert f"**{run('scalenet_step')['time_ratio']:.2f}**" in md
  assert "| broken | failed (exit 1) |" in md and "## broken" in md
  assert "XLA_FLAGS:" in md and "allocator:" in md  # flags are part of every result
  block = run_all.readme_block(runs, run("train_step")["machine"], quick=True)
  assert block.startswith(run_all.README_BEGIN) and block.endswith(run_all.README_END)
  assert f"**{run('scalenet_step')['time_ratio']:.2f}**" in block
  assert not math.isnan(run("train_step")["loader_slowdown_pct"])


def test_update_readme_replaces_only_the_marked_block(tmp_path):
  run_all = _bench_module("run_all")
  readme = tmp_path / "README.md"
  readme.write_text(f"# Title\n\nbefore\n{run_all.README_BEGIN}\nold table\n{run_all.README_END}\nafter\n")
  assert run_all.update_readme(f"{run_all.README_BEGIN}\nnew table\n{run_all.README_END}", str(readme))
  assert readme.read_text() == f"# Title\n\nbefore\n{run_all.README_BEGIN}\nnew table\n{run_all.README_END}\nafter\n"
  (tmp_path / "plain.md").write_text("no markers\n")
  assert not run_all.update_readme("x", str(tmp_path / "plain.md"))
  assert (tmp_path / "plain.md").read_text() == "no markers\n"


def test_profile_step_counts_dot_flops_from_the_compiled_program():
  import jax
  import jax.numpy as jnp

  def f(x, w, q, k):
    return jnp.tanh(x @ w), jnp.einsum("bhqd,bhkd->bhqk", q, k)

  args = (jnp.ones((24, 16)), jnp.ones((16, 40)), jnp.ones((2, 3, 5, 8)), jnp.ones((2, 3, 7, 8)))
  table = _bench_module("profile_step").dot_table(jax.jit(f).lower(*args).compile().as_text())
  found = sorted(table.values())
  assert found == [("batched", 2.0 * 2 * 3 * 5 * 7 * 8), ("linear", 2.0 * 24 * 40 * 16)], table


@pytest.mark.e2e
def test_profile_step_reports_every_op_class(run):
  d = run("profile_step")
  (r,) = d["models"]
  assert r["model"] == MICRO and r["batch"] == 2 and r["step_ms"] > 0 and r["minor_faults"] >= 0
  assert r["op_ms"] and all(ms >= 0 for ms in r["op_ms"].values())
  assert set(r["op_ms"]) <= {label for label, _ in _bench_module("profile_step").CLASSES} | {"other"}
  # A ViT step has both dense-layer and per-head attention products, and the parsed FLOPs add up to the
  # step's dot work: forward + backward of every dot is between 2x and 3x the forward MACs x 2 FLOPs.
  assert set(r["dots"]) == {"linear", "batched"}
  assert all(v["gflop"] > 0 and v["ms"] > 0 for v in r["dots"].values())
  step_flops = sum(v["gflop"] for v in r["dots"].values()) * 1e9
  assert 2.0 < step_flops / (2 * r["fwd_macs_per_image"] * r["batch"]) <= 3.0


@pytest.mark.e2e
def test_nas_step_times_the_supernet_and_the_standalone_path(run):
  d = run("nas_step")
  (row,) = d["rows"]
  assert d["space"] == "tiny" and d["batch"] == 2 and row["resolution"] == 16
  # The supernet computes at its widest path: at least the sampled path's MACs.
  assert 0 < row["path_macs"] <= row["supernet_macs"]
  assert set(row["step_s"]) == set(row["compile_s"]) == {"supernet", "select", "standalone"}
  assert row["ratio"] == pytest.approx(row["step_s"]["supernet"] / row["step_s"]["standalone"])
  assert row["select_ratio"] == pytest.approx(row["step_s"]["select"] / row["step_s"]["supernet"])
  assert d["machine"]["cpu"] and d["machine"]["cores"] >= 1
