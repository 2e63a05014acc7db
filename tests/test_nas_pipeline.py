"""Supernet training through the shared train step, exact resume, and the quick end-to-end search.

Uses the 'tiny' space (16/20 px) on real Fashion-MNIST; compiled programs are shared through the
persistent compilation cache set up in conftest.py. The training runs (and every test reading the one
quick search, `quick_run`) are `e2e`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from scalenet_jax.nas import export, pipeline
from scalenet_jax.nas import train_supernet as ts
from scalenet_jax.nas.sampling import sample_path
from scalenet_jax.nas.space import apply_scaling, get_space
from scalenet_jax.nas.supernet import (SuperNet, _conv, depthwise_conv, init_pathnet, init_supernet, path_arrays)
from scalenet_jax.train import loop as loop_lib
from scalenet_jax.train import optim
from scalenet_jax.train import sharding as sh
from scalenet_jax.train import step as step_lib

REPO = Path(__file__).resolve().parents[1]
SPACE = get_space("tiny")


@pytest.fixture(scope="module", autouse=True)
def _fashion_mnist():
  helpers.fashion_mnist_dir()  # every test here trains or evaluates on the real Fashion-MNIST


@pytest.mark.parametrize("k,stride,h", [(3, 1, 8), (5, 2, 9), (7, 2, 8), (7, 2, 5), (3, 2, 7)])
def test_depthwise_conv_matches_grouped_conv(k, stride, h):
  rng = np.random.default_rng(k)
  x = jnp.asarray(rng.normal(size=(2, h, h, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 1, 6)), jnp.float32)
  ref = lambda x, w: _conv(x, w, stride, groups=6)
  new = lambda x, w: depthwise_conv(x, w, stride)
  np.testing.assert_allclose(new(x, w), ref(x, w), atol=1e-4, rtol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  for a, b in zip(jax.grad(loss(new), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_supernet_train_step_with_path_in_model_kwargs():
  model = SuperNet(SPACE)
  params = jax.device_get(init_supernet(model, seed=0))  # host copies: the step donates its state
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
  cfg = helpers.nas_tiny_config()
  tx = optim.make_optimizer(loop_lib.optimizer_config(cfg), abstract)
  mesh = sh.make_mesh()
  zeros = lambda _: {"params": jax.tree.map(jnp.zeros_like, abstract)}
  step = step_lib.make_train_step(
      step_lib.flax_apply_fn(model),
      tx,
      mesh,
      step_lib.create_train_state(zeros, tx, mesh, jax.random.key(0))[1],
      label_smoothing=0.1,
  )
  alpha, S = sample_path(SPACE, "hss", 0, 3)
  rng = np.random.default_rng(0)
  batch = {
      "images": rng.normal(size=(8, S.r, S.r, 1)).astype(np.float32),
      "labels": rng.integers(0, 10, size=8).astype(np.int32),
      "model_kwargs": {"path": path_arrays(apply_scaling(alpha, S, SPACE), SPACE)},
  }

  def one_step():
    state, shardings = step_lib.create_train_state(zeros, tx, mesh, jax.random.key(0))
    state = state.replace(params=jax.device_put(params, shardings.params))
    new, metrics = step(state, batch)
    return jax.device_get(new.params), jax.device_get(metrics)

  p1, m1 = one_step()
  p2, m2 = one_step()
  assert np.isfinite(m1["loss"]) and m1["loss"] == m2["loss"]
  jax.tree.map(np.testing.assert_array_equal, p1, p2)  # deterministic
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(params))]
  assert sum(changed) > len(changed) // 2
  # The sampled path's first block moved; the masks made the step path-specific (an unused kernel
  # candidate of an active layer only gets weight decay, i.e. an exact multiple of itself).
  blk = "stage1_layer0"
  k = alpha.kernels[1][0]
  dw = lambda p, c: p["net"][blk][f"k{c}"][f"dw{c}"]  # one op (k3/k5/k7) per candidate kernel
  assert not np.allclose(dw(p1, k), dw(params, k), rtol=1e-3)
  for other in {3, 5, 7} - {k}:
    np.testing.assert_allclose(dw(p1, other), dw(params, other), rtol=1e-3)


@pytest.mark.e2e
def test_supernet_resume_is_bit_identical(tmp_path):
  full = ts.train_supernet(helpers.nas_tiny_config(steps=4), str(tmp_path / "full"))
  ts.train_supernet(helpers.nas_tiny_config(steps=2), str(tmp_path / "split"))  # "killed" after the step-2 checkpoint
  resumed = ts.train_supernet(helpers.nas_tiny_config(steps=4), str(tmp_path / "split"))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(full), jax.device_get(resumed))
  lines = [json.loads(l) for l in open(tmp_path / "split" / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [2, 4]


@pytest.mark.e2e
def test_masked_standalone_paths_train_evaluate_and_resume(tmp_path, monkeypatch):
  """`train_paths_masked` on real data: 3 paths in 2 (resolution, bucket) groups, 2 per vmapped call
  (one padded); the record in the workdir makes a second call train nothing."""
  c = helpers.nas_tiny_config(steps=2)
  pairs = [sample_path(SPACE, "hss", 1234, i) for i in range(40)]
  by_group = {}
  for a, S in pairs:
    by_group.setdefault((S.r, ts.bucket_of(S, SPACE)), []).append((a, S))
  groups = sorted(by_group.values(), key=len, reverse=True)
  chosen = groups[0][:2] + groups[1][:1]
  accs = ts.train_paths_masked(c, str(tmp_path), chosen, SPACE, vmap_size=2)
  assert len(accs) == 3 and all(0.0 <= a <= 1.0 for a in accs)
  record = json.loads((tmp_path / "standalone.json").read_text())
  assert sorted(record.values()) == sorted(accs)
  # A resumed call trains nothing (it does not even open the data); another recipe is not resumed.
  monkeypatch.setattr(ts, "open_split", lambda *a, **k: pytest.fail("resumed call opened the data"))
  assert ts.train_paths_masked(c, str(tmp_path), chosen, SPACE, vmap_size=2) == accs
  with pytest.raises(pytest.fail.Exception, match="opened the data"):
    ts.train_paths_masked(helpers.nas_tiny_config(steps=3), str(tmp_path), chosen, SPACE, vmap_size=2)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("nas_quick")
  mod = helpers.config_module("nas_fmnist_search.py")
  c = mod.get_config()
  c.quick = True
  # The tests' supernet run (as test_supernet_resume_is_bit_identical's 4 steps): its 2 (resolution, bucket)
  # programs come from the persistent cache when that test has compiled them, ~40 s each otherwise.
  c.supernet = helpers.nas_tiny_config(steps=4)
  c.quick_overrides.supernet = {}
  c.quick_overrides.search = dict(iterations=1, n_base=2, population=3, generations=2)
  c.quick_overrides.rank_corr = dict(num_paths=3, steps=2, batch_size=8)
  return wd, pipeline.run(c, str(wd)), c


@pytest.mark.e2e
def test_quick_search_writes_report_and_archs(quick_run):
  wd, res, _ = quick_run
  report = (wd / "report.md").read_text()
  for section in (
      "MACs histograms",
      "Searched and extrapolated",
      "per-iteration accuracy",
      "Generalisation",
      "Rank correlation",
  ):
    assert section in report
  for png in ("flops_hist.png", "fits.png"):
    assert (wd / png).stat().st_size > 1000
  M = SPACE.num_scaling_stages - 1
  assert [a["stage"] for a in res["archs"]] == list(range(M + 3))
  assert res["history"] and res["paths_evaluated"] > 0
  base = res["archs"][0]["macs"]
  assert all(a["macs"] > base for a in res["archs"][1:])
  assert set(res["rank_corr"]) >= {"hss", "uniform", "standalone_accs"}  # rank_corr.compare_uniform


@pytest.mark.e2e
def test_resumed_run_reports_the_search_it_resumed(quick_run):
  """Re-running a finished workdir re-renders the report from the saved stages: the MCEA count is the
  search's own (it was this invocation's, 0, before), the numbers are the same."""
  wd, res, c = quick_run
  again = pipeline.run(c, str(wd))
  assert again["paths_evaluated"] == res["paths_evaluated"] > 0
  same = lambda k: json.dumps(again[k], sort_keys=True) == json.dumps(res[k], sort_keys=True)  # NaN CIs of 3 paths
  assert same("archs") and same("rank_corr")
  assert f"{res['paths_evaluated']:,} paths evaluated" in (wd / "report.md").read_text()


@pytest.mark.e2e
def test_reproduce_splices_the_nas_run_into_its_report(quick_run, tmp_path):
  wd, res, _ = quick_run
  doc_sections = __import__("scalenet_jax.doc_sections").doc_sections
  doc = tmp_path / "r.md"
  lm = doc_sections.wrap("lm_study", "decoder study")
  doc.write_text(f"# R\n\n## 5. ScaleNet-search\n\n{doc_sections.wrap('nas_run', 'old')}\n\n{lm}\n")
  cmd = [sys.executable, "-m", "scalenet_jax.reproduce", "--nas_workdir", str(wd), "--out", str(doc)]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  text = doc.read_text()
  assert "old" not in text and lm in text and text.startswith("# R\n\n## 5. ScaleNet-search\n")
  section = doc_sections.section_of(str(doc), "nas_run")
  assert f"{res['paths_evaluated']:,} paths evaluated" in section and "\n### ScaleNet-search on" in section
  for png in ("flops_hist", "fits"):  # the run's images sit next to the report, linked from it
    assert f"](r_nas_{png}.png)" in section and (tmp_path / f"r_nas_{png}.png").stat().st_size > 1000
  assert json.loads((tmp_path / "r_nas.json").read_text())["paths_evaluated"] == res["paths_evaluated"]
  bare = tmp_path / "bare.md"
  bare.write_text("# no sections\n")
  cmd[-1] = str(bare)
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2 and "has no nas_run section" in out.stderr.strip().splitlines()[-1]
  assert bare.read_text() == "# no sections\n"


@pytest.mark.e2e
def test_exported_archs_load_and_run(quick_run):
  wd, res, _ = quick_run
  archs = [export.load_arch(str(wd / a["file"])) for a in res["archs"]]  # all load (and were built)
  for arch in (archs[0], archs[-1]):  # the base and the largest extrapolated model run a forward pass
    model = export.build_model(arch)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, arch.resolution, arch.resolution, 1)), jnp.float32)
    y = jax.jit(lambda v, x: model.apply(v, x))(init_pathnet(arch, seed=0), x)
    assert y.shape == (2, 10) and np.all(np.isfinite(np.asarray(y)))


@pytest.mark.e2e
def test_retrain_exported_arch(quick_run, tmp_path):
  wd, _, _ = quick_run
  mod = helpers.config_module("nas_retrain.py")
  c = mod.get_config(str(wd / "archs" / "s0.json"))
  c.steps, c.batch_size, c.log_every, c.ckpt_every, c.eval_batch_size = 2, 8, 1, 0, 50
  c.data.eval_split, c.data.minival_per_class, c.optim.warmup_steps = "minival", 5, 1
  out = pipeline.run(c, str(tmp_path))
  assert out["eval_examples"] == 50 and 0.0 <= out["top1"] <= 1.0
  assert json.loads((tmp_path / "result.json").read_text())["arch"].endswith("s0.json")


def test_main_routes_pipeline_configs():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  out = subprocess.run(
      [
          sys.executable,
          "-m",
          "scalenet_jax.main",
          "--config",
          "configs/nas_fmnist_search.py",
          "--workdir",
          "/tmp/unused_nas",
          "--mode",
          "eval",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith("error: ConfigError: pipeline 'nas_search' supports only")
