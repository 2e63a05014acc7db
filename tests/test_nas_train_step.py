"""Supernet training at the sampled path's bucket equals the full-width step (loss, gradients, update);
a stand-alone path trained through the masked supernet (`embed_params`) follows the stand-alone
`PathNet`'s trajectory. No data set: random images, the 'tiny' space (BCNet coupling)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import nas_tiny_config, perturbed_supernet

from scalenet_jax.errors import ConfigError
from scalenet_jax.nas import train_supernet as ts
from scalenet_jax.nas.sampling import sample_path
from scalenet_jax.nas.space import apply_scaling, get_space
from scalenet_jax.nas.supernet import (
    PathNet,
    SuperNet,
    bucket_of,
    embed_params,
    init_pathnet,
    init_supernet,
    path_arrays,
    path_bucket,
    slice_params,
    supernet_arch,
)
from scalenet_jax.train import loop as loop_lib
from scalenet_jax.train import optim
from scalenet_jax.train import sharding as sh
from scalenet_jax.train import step as step_lib

SPACE = get_space("tiny")


def _batch(r: int, seed: int = 0, n: int = 8):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, r, r, 1)).astype(np.float32), rng.integers(0, 10, size=n).astype(np.int32)


def _bucket0_steps(plan_seed: int, n: int) -> list[int]:
  """The first `n` HSS steps whose path falls in bucket 0 (narrower than the whole supernet)."""
  out = [s for s in range(200) if bucket_of(sample_path(SPACE, "hss", plan_seed, s)[1], SPACE) == 0]
  return out[:n]


def test_programs_and_input_specs():
  assert ts.programs(SPACE, "hss") == [(16, 0), (16, 1), (20, 1)]
  assert ts.programs(SPACE, "uniform") == [(16, 0), (16, 1), (20, 0), (20, 1)]
  assert ts.programs(SPACE, "hss", buckets=False) == [(16, None), (20, None)]
  task = ts.supernet_task(nas_tiny_config(), source=None)
  specs = task.input_specs(8)
  assert list(specs) == ["@16px/bucket0", "@16px/bucket1", "@20px/bucket1"]
  stem = lambda name: specs[name][1]["path"]["stem"].shape
  assert stem("@16px/bucket0") == (supernet_arch(SPACE, 0).stem_channels,)
  assert stem("@16px/bucket0") < stem("@16px/bucket1")
  assert list(ts.supernet_task(nas_tiny_config(buckets=False), source=None).input_specs(8)) == ["@16px", "@20px"]
  with pytest.raises(ConfigError, match="buckets"):
    ts.supernet_task(nas_tiny_config(buckets="yes"), source=None)


def test_path_bucket_reads_the_array_shapes():
  alpha, S = sample_path(SPACE, "hss", 0, _bucket0_steps(0, 1)[0])
  arch = apply_scaling(alpha, S, SPACE)
  assert path_bucket(path_arrays(arch, SPACE, bucket=0), SPACE) == 0
  assert path_bucket(path_arrays(arch, SPACE), SPACE) in (1, None)  # the whole supernet's shapes
  bad = path_arrays(arch, SPACE, bucket=0)
  bad["stem"] = np.ones((3,), np.float32)
  with pytest.raises(ValueError, match="match no bucket"):
    path_bucket(bad, SPACE)


def test_bucketed_step_equals_full_width_step():
  """Same sampled path and batch: the step at the path's bucket gives the full-width step's loss,
  gradients (zero on every weight the path does not use) and updated parameters."""
  cfg = nas_tiny_config()
  task = ts.supernet_task(cfg, source=None)  # its model reads the bucket from the path arrays
  params = jax.device_get(perturbed_supernet(init_supernet(SuperNet(SPACE), seed=0)))
  plan_b = ts.path_plan(SPACE, "hss", cfg.seed, cfg.eta, buckets=True)
  plan_f = ts.path_plan(SPACE, "hss", cfg.seed, cfg.eta, buckets=False)
  objective = step_lib.Classification(cfg.label_smoothing)

  def loss(p, x, y, path):
    return objective.loss(task.apply_fn(p, x, True, None, path=path), {"labels": y})[0]

  grad_fn = jax.jit(jax.value_and_grad(loss))
  tx, ocfg = loop_lib.make_optimizer(cfg, task)
  mesh = sh.make_mesh()
  zeros = lambda _: {"params": jax.tree.map(jnp.zeros_like, params)}
  train_step = step_lib.make_train_step(
      task.apply_fn, tx, mesh, step_lib.create_train_state(zeros, tx, mesh, jax.random.key(0))[1], objective=objective
  )

  def one_step(batch):
    state, shardings = step_lib.create_train_state(zeros, tx, mesh, jax.random.key(0))
    state = state.replace(params=jax.device_put(params, shardings.params))
    new, metrics = train_step(state, batch)
    return jax.device_get(new.params), float(metrics["loss"])

  for step in _bucket0_steps(cfg.seed, 2):
    (r, kb), (r_f, kf) = plan_b(step), plan_f(step)
    assert r == r_f and path_bucket(kb["path"], SPACE) == 0 and path_bucket(kf["path"], SPACE) != 0
    x, y = _batch(r, seed=step)
    (l_b, g_b), (l_f, g_f) = grad_fn(params, x, y, kb["path"]), grad_fn(params, x, y, kf["path"])
    np.testing.assert_allclose(l_b, l_f, rtol=1e-5)
    flat_b, flat_f = jax.tree_util.tree_leaves_with_path(g_b), jax.tree.leaves(g_f)
    n_zero = 0
    for (k, a), b in zip(flat_b, flat_f):
      a, b = np.asarray(a), np.asarray(b)
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * (1 + np.abs(b).max()), err_msg=jax.tree_util.keystr(k))
      n_zero += int(not b.any())
      if not b.any():  # a weight the path does not touch: exactly no gradient at the bucket either
        assert not a.any(), jax.tree_util.keystr(k)
    assert n_zero > len(flat_f) // 4  # the comparison covered unused weights too
    (p_b, m_b), (p_f, m_f) = (one_step({"images": x, "labels": y, "model_kwargs": kw}) for kw in (kb, kf))
    np.testing.assert_allclose(m_b, m_f, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p_b, p_f)


def _pathnet_trajectory(cfg, arch, variables, batches):
  """Losses and final params of `PathNet(arch)` trained by the shared train step (`train_standalone`'s)."""
  model = PathNet(arch)
  tx = optim.make_optimizer(loop_lib.optimizer_config(cfg), variables["params"])
  mesh = sh.make_mesh()
  state, shardings = step_lib.create_train_state(lambda _: variables, tx, mesh, jax.random.key(0))
  step = step_lib.make_train_step(
      step_lib.flax_apply_fn(model), tx, mesh, shardings, objective=step_lib.Classification(cfg.label_smoothing)
  )
  losses = []
  for x, y in batches:
    state, m = step(state, {"images": x, "labels": y})
    losses.append(float(m["loss"]))
  return losses, jax.device_get(state.params)


def _masked_trajectory(cfg, archs, bucket, batches, vmap: bool):
  """Losses and final params of `archs` trained through the masked supernet (`ts.masked_step`)."""
  params = [embed_params(init_pathnet(a, cfg.seed)["params"], a, SPACE) for a in archs]
  tx = optim.make_optimizer(loop_lib.optimizer_config(cfg), params[0])
  model = SuperNet(SPACE, bucket=bucket, conditional=not vmap)
  step = ts.masked_step(model, tx, step_lib.Classification(cfg.label_smoothing))
  paths = [path_arrays(a, SPACE, bucket=bucket) for a in archs]
  stack = lambda ts_: jax.tree.map(lambda *xs: np.stack(xs), *ts_)
  if vmap:
    step = jax.vmap(step, in_axes=(0, 0, None, None, 0))
    p, o, path = stack(params), stack([tx.init(q) for q in params]), stack(paths)
  else:
    (p,), (path,) = params, paths
    o = tx.init(p)
  step = jax.jit(step)
  losses = []
  for x, y in batches:
    p, o, loss = step(p, o, x, y, path)
    losses.append(np.asarray(loss))
  return np.asarray(losses), jax.device_get(p)


def test_masked_standalone_path_follows_the_pathnet():
  """Fresh PathNet weights embedded in the supernet tree, trained through the masked program with the
  same recipe and batches: the PathNet's losses and parameters step by step; the zeros around the
  path's weights stay exactly zero. Through `jax.vmap` over two paths as well."""
  cfg = nas_tiny_config()
  steps = _bucket0_steps(cfg.seed, 2)
  pairs = [sample_path(SPACE, "hss", cfg.seed, s) for s in steps]
  archs = [apply_scaling(a, S, SPACE) for a, S in pairs]
  assert {a.resolution for a in archs} == {16} and archs[0] != archs[1]
  batches = [_batch(16, seed=i) for i in range(3)]
  refs = [_pathnet_trajectory(cfg, a, init_pathnet(a, cfg.seed), batches) for a in archs]
  loss_1, p_1 = _masked_trajectory(cfg, archs[:1], 0, batches, vmap=False)
  loss_v, p_v = _masked_trajectory(cfg, archs, 0, batches, vmap=True)
  for k, (arch, (ref_loss, ref_p)) in enumerate(zip(archs, refs)):
    runs = [(loss_v[:, k], jax.tree.map(lambda a: a[k], p_v))] + ([(loss_1, p_1)] if k == 0 else [])
    for losses, p in runs:
      np.testing.assert_allclose(losses, ref_loss, rtol=1e-5)
      assert losses[-1] != losses[0]
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), slice_params(p, arch), ref_p)
      # Outside the path's slice the tree is still exactly zero.
      jax.tree.map(np.testing.assert_array_equal, embed_params(slice_params(p, arch), arch, SPACE), p)
