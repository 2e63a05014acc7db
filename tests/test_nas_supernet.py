"""Masked supernet path == stand-alone PathNet with sliced per-op weights (left, right and mixed BCNet
slices, tiny and fmnist spaces); only the chosen op trains; one compile serves all paths; buckets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import perturbed_supernet

from scalenet_jax.nas.sampling import sample_path, sample_sides
from scalenet_jax.nas.space import Scaling, apply_scaling, get_space, largest_alpha, left_sides, smallest_alpha
from scalenet_jax.nas.supernet import (
    PathNet,
    SuperNet,
    buffer_arch,
    depthwise_conv,
    bucket_of,
    init_pathnet,
    init_supernet,
    path_arrays,
    slice_params,
    stack_paths,
    supernet_arch,
)

SPACE = get_space("tiny")


def _forward(model):
  traces = []

  def fwd(p, x, path):
    traces.append(x.shape)
    return model.apply({"params": p}, x, path=path, train=True)

  return jax.jit(fwd), traces


@pytest.fixture(scope="module")
def sup():
  model = SuperNet(SPACE)
  params = perturbed_supernet(init_supernet(model, seed=0))
  fwd, traces = _forward(model)
  return model, params, fwd, traces


def _paths():
  """Random paths plus the extremes, at both resolutions of the tiny space (16 and 20)."""
  out = [sample_path(SPACE, "hss_uniform", seed=3, step=i) for i in (0, 2, 4)]
  out += [(smallest_alpha(SPACE), Scaling(1.0, 1.0, 16)), (largest_alpha(SPACE), Scaling(1.5, 1.5, 20))]
  assert {S.r for _, S in out} == {16, 20}
  return out


def _sides(space, kind: str, step: int = 0):
  """'left' / 'right': every module on that side (the two slice sets of a synchronous step);
  'async': the sampler's per-module sides of step `step`."""
  if kind == "async":
    return sample_sides(space, seed=5, step=step)
  side = int(kind == "right")
  ref = left_sides(space)
  return {"stem": side, "head": side, "stages": tuple((side,) * len(x) for x in ref["stages"])}


def _standalone_logits(params, arch, sides, x):
  alone = PathNet(arch, bn_batch_stats=True)
  return jax.jit(lambda p, x: alone.apply({"params": p}, x))(slice_params(params, arch, sides), x)


def _check_equal(space, fwd, params, alpha, S, sides, seed):
  arch = apply_scaling(alpha, S, space)
  x = jnp.asarray(np.random.default_rng(seed).normal(size=(4, S.r, S.r, space.in_channels)), jnp.float32)
  y_sup = fwd(params, x, path_arrays(arch, space, sides))
  y_alone = _standalone_logits(params, arch, sides, x)
  np.testing.assert_allclose(np.asarray(y_sup), np.asarray(y_alone), atol=2e-5, rtol=1e-5)
  assert np.abs(np.asarray(y_alone)).max() > 1e-2  # not trivially zero


CASES = [(0, "left"), (0, "right"), (1, "async"), (2, "right"), (3, "left"), (3, "right"), (4, "async"), (4, "left")]


@pytest.mark.parametrize("i,kind", CASES)
def test_masked_path_equals_standalone_tiny(sup, i, kind):
  _, params, fwd, _ = sup
  alpha, S = _paths()[i]
  _check_equal(SPACE, fwd, params, alpha, S, _sides(SPACE, kind, step=i), seed=i)


def test_masked_path_equals_standalone_fmnist():
  """The Fashion-MNIST space at 32 px: one HSS path, both slice sets of a step and an async step."""
  space = get_space("fmnist")
  model = SuperNet(space)
  params = perturbed_supernet(init_supernet(model, seed=1))
  fwd, _ = _forward(model)
  alpha, S = next(p for p in (sample_path(space, "hss", seed=0, step=i) for i in range(50)) if p[1].r == 32)
  assert S.w > 1 and max(alpha.depths[1:3]) > 1  # a scaled, multi-layer path
  for kind in ("left", "right", "async"):
    _check_equal(space, fwd, params, alpha, S, _sides(space, kind, step=7), seed=0)


def test_left_coupling_buffers_and_equivalence():
  space = get_space("tiny", coupling="left")
  assert buffer_arch(space) == supernet_arch(space)
  assert buffer_arch(SPACE).stem_channels == 12 + 8  # 'bcnet': ceil(8 * 1.5) + 8
  model = SuperNet(space)
  fwd, _ = _forward(model)
  alpha, S = _paths()[0]
  _check_equal(space, fwd, perturbed_supernet(init_supernet(model, seed=0)), alpha, S, None, seed=0)
  with pytest.raises(ValueError, match="coupling 'left'"):
    path_arrays(apply_scaling(alpha, S, space), space, _sides(SPACE, "right"))


def test_one_compile_per_resolution(sup):
  _, params, fwd, traces = sup
  for step, (alpha, S) in enumerate(_paths()):
    path = path_arrays(apply_scaling(alpha, S, SPACE), SPACE, sample_sides(SPACE, 0, step))
    fwd(params, jnp.zeros((4, S.r, S.r, 1)), path)
  assert sorted(set(traces)) == [(4, 16, 16, 1), (4, 20, 20, 1)]
  assert len(traces) == 2


def _flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_only_the_chosen_op_gets_gradient(sup):
  """Per layer slot: the chosen op's weights get gradient, the other ops' exactly zero, inactive slots
  none; inside a right-aligned slot only the right-aligned slice of the buffer is touched."""
  model, params, _, _ = sup
  alpha, S = _paths()[0]
  arch = apply_scaling(alpha, S, SPACE)
  sides = _sides(SPACE, "async", step=1)
  path = path_arrays(arch, SPACE, sides)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, S.r, S.r, 1)), jnp.float32)
  loss = lambda p: jnp.sum(jnp.square(model.apply({"params": p}, x, path=path, train=True)))
  grads = _flat(jax.jit(jax.grad(loss))(params))
  checked = set()
  for s, slots in enumerate(supernet_arch(SPACE).stages):
    for l in range(len(slots)):
      chosen = arch.stages[s][l].kernel if l < len(arch.stages[s]) else None
      for k in SPACE.kernels:
        g = {n: v for n, v in grads.items() if f"['stage{s}_layer{l}']['k{k}']" in n}
        assert g, (s, l, k)
        if k == chosen:
          assert max(np.abs(v).max() for v in g.values()) > 0, (s, l, k)
          checked.add(sides["stages"][s][l])
        else:
          assert all(np.all(v == 0) for v in g.values()), (s, l, k, chosen)
  assert checked == {0, 1}  # both sides occur among the active slots
  # The project weight of a right-aligned active slot: gradient only in its last rows/columns.
  s, l = next((s, l) for s, st in enumerate(arch.stages) for l in range(len(st)) if sides["stages"][s][l])
  la, buf = arch.stages[s][l], buffer_arch(SPACE).stages[s][l]
  g = grads[f"['net']['stage{s}_layer{l}']['k{la.kernel}']['project']"][0, 0]
  inside = np.zeros(g.shape, bool)
  inside[buf.hidden - la.hidden :, buf.c_out - la.c_out :] = True
  assert np.all(g[~inside] == 0) and np.abs(g[inside]).max() > 0


def test_masked_channels_stay_zero_and_inactive_layers_are_identity():
  model = SuperNet(SPACE)
  params = init_supernet(model, seed=1)
  arch = apply_scaling(smallest_alpha(SPACE), Scaling(1.0, 1.0, 16), SPACE)
  path = path_arrays(arch, SPACE, sample_sides(SPACE, 0, 3))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 16, 16, 1)), jnp.float32)
  _, inter = jax.jit(lambda p, x, pth: model.apply({"params": p}, x, path=pth, capture_intermediates=True))(
      params, x, path
  )
  inter = inter["intermediates"]["net"]
  for s, layers in enumerate(supernet_arch(SPACE).stages):
    c = arch.stages[s][0].c_out
    outs = [np.asarray(inter[f"stage{s}_layer{l}"]["__call__"][0]) for l in range(len(layers))]
    for o in outs:
      assert np.all(o[..., c:] == 0), f"stage {s}: masked channels leaked"
    for l in range(len(arch.stages[s]), len(layers)):
      # Inactive slot = identity (up to float noise: XLA may recompute the previous layer's output in
      # another fusion for the captured copy).
      np.testing.assert_allclose(outs[l], outs[l - 1], atol=1e-6, rtol=1e-6)


def test_path_arrays_shapes_are_path_independent_and_validated():
  a = path_arrays(apply_scaling(smallest_alpha(SPACE), Scaling(1.0, 1.0, 16), SPACE), SPACE)
  b = path_arrays(apply_scaling(largest_alpha(SPACE), Scaling(1.5, 1.5, 20), SPACE), SPACE, sample_sides(SPACE))
  assert jax.tree.map(np.shape, a) == jax.tree.map(np.shape, b)
  stacked = stack_paths([a, b])
  assert stacked["stages"][1]["kernel"].shape == (2, SPACE.max_layers(1), 3)
  assert stacked["stages"][1]["side"].shape == (2, SPACE.max_layers(1)) and stacked["stem_side"].shape == (2,)
  big = apply_scaling(largest_alpha(get_space("fmnist")), Scaling(1.0, 1.0, 32), get_space("fmnist"))
  with pytest.raises(ValueError):
    path_arrays(big, SPACE)
  with pytest.raises(ValueError, match="structure"):
    path_arrays(apply_scaling(smallest_alpha(SPACE), Scaling(1.0, 1.0, 16), SPACE), SPACE, {"stem": 0})
  # A bucket holds its scaling stage's paths (fewer slots, narrower) and rejects larger ones.
  small = path_arrays(apply_scaling(largest_alpha(SPACE), Scaling(1.0, 1.0, 16), SPACE), SPACE, bucket=0)
  assert small["stages"][1]["kernel"].shape == (SPACE.max_layers(1, 0), 3) and len(small["stem"]) == 8
  assert bucket_of(Scaling(1.0, 1.0, 16), SPACE) == 0 and bucket_of(Scaling(1.25, 1.0, 16), SPACE) == 1
  with pytest.raises(ValueError, match="slots"):
    path_arrays(apply_scaling(largest_alpha(SPACE), Scaling(1.5, 1.0, 16), SPACE), SPACE, bucket=0)


def test_bucket_equals_full_supernet(sup):
  """A stage-0 path computed in bucket 0 (narrower, fewer slots, same params) gives the full logits."""
  model, params, fwd, _ = sup
  alpha, S = _paths()[3]
  arch, sides = apply_scaling(alpha, S, SPACE), _sides(SPACE, "async", step=2)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 16, 16, 1)), jnp.float32)
  small = SuperNet(SPACE, bucket=0)
  y0 = jax.jit(lambda p, x, pth: small.apply({"params": p}, x, path=pth))(
      params, x, path_arrays(arch, SPACE, sides, bucket=0)
  )
  np.testing.assert_allclose(np.asarray(y0), np.asarray(fwd(params, x, path_arrays(arch, SPACE, sides))), atol=2e-5)


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
  assert "mean" in upd["batch_stats"]["net"]["stage1_layer0"]["bn_dw"]
  y_eval = jax.jit(lambda v, x: model.apply(v, x, train=False))({"params": variables["params"], **upd}, x)
  assert y.shape == y_eval.shape == (4, SPACE.num_classes)


@pytest.mark.parametrize("k,stride,h", [(3, 1, 8), (7, 2, 9), (5, 2, 8)])
def test_unrolled_depthwise_equals_tap_loop(k, stride, h):
  rng = np.random.default_rng(k)
  x = jnp.asarray(rng.normal(size=(2, h, h, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 1, 6)), jnp.float32)
  fast = jax.jit(lambda x, w: depthwise_conv(x, w, stride, impl="unrolled"))
  np.testing.assert_allclose(fast(x, w), depthwise_conv(x, w, stride), atol=1e-4, rtol=1e-5)
  with pytest.raises(ValueError, match="impl"):
    depthwise_conv(x, w, stride, impl="fft")


@pytest.mark.parametrize("impl", ["loop", "unrolled"])
@pytest.mark.parametrize("k,stride,h", [(3, 1, 8), (5, 2, 9), (7, 2, 8)])
def test_depthwise_choice_equals_the_small_kernel(impl, k, stride, h):
  """Running only the chosen size's centred taps of a zero-padded 7×7 kernel (`lax.switch`) gives the
  small conv's output and the small conv's gradients (the padding's gradient is dropped)."""
  rng = np.random.default_rng(k + stride)
  x = jnp.asarray(rng.normal(size=(2, h, h, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 1, 6)), jnp.float32)
  p = (7 - k) // 2
  pad = lambda w: jnp.pad(w, ((p, p), (p, p), (0, 0), (0, 0)))
  choice = jnp.int32((3, 5, 7).index(k))
  chosen = lambda x, w: depthwise_conv(x, pad(w), stride, impl, choice=choice, sizes=(3, 5, 7))
  small = lambda x, w: depthwise_conv(x, w, stride, impl)
  np.testing.assert_allclose(jax.jit(chosen)(x, w), jax.jit(small)(x, w), atol=1e-5, rtol=1e-5)
  g = jnp.asarray(rng.normal(size=small(x, w).shape), jnp.float32)
  grad = lambda f: jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) * g), argnums=(0, 1)))(x, w)
  for a, b in zip(grad(chosen), grad(small)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("space_name", ["tiny", "fmnist"])
def test_conditional_supernet_equals_selecting(space_name):
  """Skipping inactive slots and switching kernels (`conditional`, the default) gives the logits and
  the gradients of computing every slot at 7×7 and selecting. The path is an input of the compiled
  program, as in supernet training: three HSS paths at one resolution share one program per model."""
  space = get_space(space_name)
  on, off = SuperNet(space), SuperNet(space, conditional=False)
  params = perturbed_supernet(init_supernet(on, seed=4))
  steps = (sample_path(space, "hss", seed=2, step=i) for i in range(100))
  first = next(steps)
  pairs = [first, *[p for p in steps if p[1].r == first[1].r][:2]]
  assert {k for a, _ in pairs for ks in a.kernels for k in ks} & {3, 5}  # switched to a smaller kernel
  archs = [apply_scaling(alpha, S, space) for alpha, S in pairs]
  full = supernet_arch(space).stages
  assert any(len(a) < len(b) for arch in archs for a, b in zip(arch.stages, full))  # a skipped slot
  assert len({tuple(len(a) for a in arch.stages) for arch in archs}) > 1  # paths of different depths
  loss = lambda model: lambda p, x, path: jnp.sum(jnp.square(model.apply({"params": p}, x, path=path)))
  grad_on, grad_off = (jax.jit(jax.value_and_grad(loss(m))) for m in (on, off))
  for step, ((alpha, S), arch) in enumerate(zip(pairs, archs)):
    path = path_arrays(arch, space, sample_sides(space, 1, step))
    x = jnp.asarray(np.random.default_rng(step).normal(size=(4, S.r, S.r, space.in_channels)), jnp.float32)
    (l_on, g_on), (l_off, g_off) = grad_on(params, x, path), grad_off(params, x, path)
    np.testing.assert_allclose(l_on, l_off, rtol=1e-5)
    for (name, a), b in zip(_flat(g_on).items(), _flat(g_off).values()):
      np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, np.abs(b).max()), rtol=1e-4, err_msg=name)
