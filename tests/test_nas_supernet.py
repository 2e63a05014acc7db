"""Masked supernet path == stand-alone PathNet with sliced weights; one compile serves all paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalenet_jax.nas.sampling import sample_path
from scalenet_jax.nas.space import Scaling, apply_scaling, get_space, largest_alpha, smallest_alpha
from scalenet_jax.nas.supernet import (
    PathNet,
    SuperNet,
    init_pathnet,
    init_supernet,
    path_arrays,
    slice_params,
    stack_paths,
    supernet_arch,
)

SPACE = get_space("tiny")


@pytest.fixture(scope="module")
def sup():
  model = SuperNet(SPACE)
  params = init_supernet(model, seed=0)
  # Perturb BN/SE biases so masked channels would leak if the masks were wrong.
  params = jax.tree_util.tree_map_with_path(lambda k, v: v + 0.3 if "bias" in jax.tree_util.keystr(k) else v, params)
  traces = []

  def fwd(p, x, path):
    traces.append(x.shape)
    return model.apply({"params": p}, x, path=path, train=True)

  return model, params, jax.jit(fwd), traces


def _paths():
  """Random paths plus the extremes, at both resolutions of the tiny space (16 and 20)."""
  out = [sample_path(SPACE, "hss_uniform", seed=3, step=i) for i in (0, 2, 4)]
  out += [(smallest_alpha(SPACE), Scaling(1.0, 1.0, 16)), (largest_alpha(SPACE), Scaling(1.5, 1.5, 20))]
  assert {S.r for _, S in out} == {16, 20}
  return out


@pytest.mark.parametrize("i", range(5))
def test_masked_path_equals_standalone(sup, i):
  model, params, fwd, _ = sup
  alpha, S = _paths()[i]
  arch = apply_scaling(alpha, S, SPACE)
  x = jnp.asarray(np.random.default_rng(i).normal(size=(4, S.r, S.r, 1)), jnp.float32)
  y_sup = fwd(params, x, path_arrays(arch, SPACE))
  alone = PathNet(arch, bn_batch_stats=True)
  y_alone = jax.jit(lambda p, x: alone.apply({"params": p}, x))(slice_params(params, arch), x)
  np.testing.assert_allclose(np.asarray(y_sup), np.asarray(y_alone), atol=1e-5, rtol=1e-5)
  assert np.abs(np.asarray(y_alone)).max() > 1e-2  # not trivially zero


def test_one_compile_per_resolution(sup):
  _, params, fwd, traces = sup
  for alpha, S in _paths():
    fwd(params, jnp.zeros((4, S.r, S.r, 1)), path_arrays(apply_scaling(alpha, S, SPACE), SPACE))
  assert sorted(set(traces)) == [(4, 16, 16, 1), (4, 20, 20, 1)]
  assert len(traces) == 2


def test_masked_channels_stay_zero_and_inactive_layers_are_identity():
  model = SuperNet(SPACE)
  params = init_supernet(model, seed=1)
  arch = apply_scaling(smallest_alpha(SPACE), Scaling(1.0, 1.0, 16), SPACE)
  path = path_arrays(arch, SPACE)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 16, 16, 1)), jnp.float32)
  _, inter = jax.jit(lambda p, x, pth: model.apply({"params": p}, x, path=pth, capture_intermediates=True))(
      params, x, path
  )
  inter = inter["intermediates"]["net"]
  full = supernet_arch(SPACE)
  for s, layers in enumerate(full.stages):
    c = arch.stages[s][0].c_out
    outs = [np.asarray(inter[f"stage{s}_layer{l}"]["__call__"][0]) for l in range(len(layers))]
    for o in outs:
      assert np.all(o[..., c:] == 0), f"stage {s}: masked channels leaked"
    for l in range(len(arch.stages[s]), len(layers)):
      np.testing.assert_array_equal(outs[l], outs[l - 1])  # inactive slot = identity


def test_path_arrays_shapes_are_path_independent_and_validated():
  a = path_arrays(apply_scaling(smallest_alpha(SPACE), Scaling(1.0, 1.0, 16), SPACE), SPACE)
  b = path_arrays(apply_scaling(largest_alpha(SPACE), Scaling(1.5, 1.5, 20), SPACE), SPACE)
  assert jax.tree.map(np.shape, a) == jax.tree.map(np.shape, b)
  stacked = stack_paths([a, b])
  assert stacked["stages"][1]["kernel"].shape == (2, SPACE.max_layers(1), 3)
  big = apply_scaling(largest_alpha(get_space("fmnist")), Scaling(1.0, 1.0, 32), get_space("fmnist"))
  with pytest.raises(ValueError):
    path_arrays(big, SPACE)


def test_stat_weights_restrict_bn_statistics():
  """BN recalibration: with stats from the calibration part only, no output depends on the other
  evaluation samples (with uniform weights they do)."""
  model = SuperNet(SPACE)
  params = init_supernet(model, seed=2)
  path = path_arrays(apply_scaling(largest_alpha(SPACE), Scaling(1.25, 1.25, 16), SPACE), SPACE)
  rng = np.random.default_rng(0)
  calib = rng.normal(size=(6, 16, 16, 1)).astype(np.float32)
  ev = rng.normal(size=(2, 16, 16, 1)).astype(np.float32)
  w = jnp.asarray([1.0] * 6 + [0.0] * 2)
  f = jax.jit(lambda x, w: model.apply({"params": params}, x, path=path, stat_weights=w))
  y = f(jnp.concatenate([calib, ev]), w)
  ev2 = ev.copy()
  ev2[1] += 5.0
  y2 = f(jnp.concatenate([calib, ev2]), w)
  np.testing.assert_allclose(np.asarray(y2[:6]), np.asarray(y[:6]), atol=1e-5)
  y3 = f(jnp.concatenate([calib, ev2]), jnp.ones(8))  # stats over all 8 samples do change
  assert not np.allclose(np.asarray(y3[:6]), np.asarray(y[:6]), atol=1e-3)
  np.testing.assert_allclose(np.asarray(y2[6]), np.asarray(y[6]), atol=1e-5)


def test_pathnet_running_stats_train_and_eval():
  arch = apply_scaling(smallest_alpha(SPACE), Scaling(1.0, 1.0, 16), SPACE)
  variables = init_pathnet(arch, seed=0)
  model = PathNet(arch)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 1)), jnp.float32)
  y, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  assert not np.allclose(np.asarray(upd["batch_stats"]["net"]["bn_stem"]["mean"]), 0)
  y_eval = jax.jit(lambda v, x: model.apply(v, x, train=False))({"params": variables["params"], **upd}, x)
  assert y.shape == y_eval.shape == (4, SPACE.num_classes)
