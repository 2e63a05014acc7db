"""Models: logits parity with timm, exact parameter counts, bf16/remat options, Swin window geometry."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_params
from scalenet_jax import convert, counting
from scalenet_jax.models import registry
from scalenet_jax.models import stack as stack_lib

# Published parameter counts (timm / the DeiT and Swin papers).
PARAM_COUNTS = {
    "deit_tiny_patch16_224": 5717416,
    "deit_small_patch16_224": 22050664,
    "deit_base_patch16_224": 86567656,
    "swin_tiny_patch4_window7_224": 28288354,
    "swin_small_patch4_window7_224": 49606258,
    "swin_base_patch4_window7_224": 87768224,
}
TIMM_BASE = {"vit": "vit_base_patch16_224", "swin": "swin_tiny_patch4_window7_224"}


def timm_twin(timm, name, **overrides):
  """timm model with the architecture of registry model `name` (+ `overrides`), random init, eval."""
  import torch

  torch.manual_seed(0)
  if name in PARAM_COUNTS and not overrides:
    tm = timm.create_model(name, pretrained=False)
  else:  # micro / reduced models: a timm model of the family with every arch field overridden
    tm = timm.create_model(
        TIMM_BASE[registry.family_of(name)], pretrained=False, **registry.arch_kwargs(name, **overrides)
    )
  # timm inits biases to 0 and LayerNorms to (1, 0): perturb them so a swapped or dropped
  # bias / norm parameter in the conversion changes the logits.
  with torch.no_grad():
    for p in tm.parameters():
      if p.ndim == 1:
        p.add_(0.05 * torch.randn_like(p))
  return tm.eval()


def images(cfg, batch=2, seed=0):
  return (
      np.random.default_rng(seed).standard_normal((batch, cfg.img_size, cfg.img_size, cfg.in_chans)).astype(np.float32)
  )


def check_parity(timm, name, **overrides):
  import torch

  tm = timm_twin(timm, name, **overrides)
  model = registry.create_model(name, arch=overrides)
  params = convert.timm_to_flax(tm.state_dict(), model)
  x = images(model.config)
  with torch.no_grad():
    want = tm(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = np.asarray(jax.jit(model.apply)({"params": params}, x))
  assert got.shape == want.shape == (2, model.config.num_classes)
  assert np.abs(want).max() > 0.1  # a dead (all-zero) network would match trivially
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
  n_timm = sum(p.numel() for p in tm.parameters())
  assert counting.count_params(params) == n_timm


# ---------------------------------------------------------------------------------------------------------
# Parity with timm
# ---------------------------------------------------------------------------------------------------------
# Measured on the shared 2-core box: deit_* 6-25 s, swin_tiny 15-19 s, swin_small/base 21 s at load ~4
# and 40-48 s at load ~10; all six run in every suite run.
@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parity_full_size(timm, name):
  check_parity(timm, name)


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("vit_micro_patch4_28", {}),
        ("swin_micro_patch2_window4_32", {}),
        # reduced width at 224 (DeiT: 14x14 tokens; Swin: 56/28/14/7 with window 7, last stage = one window)
        ("deit_tiny_patch16_224", dict(embed_dim=64, depth=3, num_heads=4)),
        ("swin_tiny_patch4_window7_224", dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))),
        # other options: no qkv bias, MLP ratio 2, 7 classes, RGB
        ("vit_micro_patch4_28", dict(qkv_bias=False, mlp_ratio=2.0, num_classes=7, in_chans=3)),
        # window 8 on 16/8/4: stage 1 exactly one window, stage 2 smaller than the window (it shrinks)
        ("swin_micro_patch2_window4_32", dict(window_size=8, qkv_bias=False)),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else "-".join(f"{k}={v[k]}" for k in v) or "default",
)
def test_parity_small(timm, name, overrides):
  check_parity(timm, name, **overrides)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count_constants(name):
  """Exact counts without torch: shapes only (jax.eval_shape)."""
  model = registry.create_model(name)
  assert counting.count_params(model.abstract_params()) == PARAM_COUNTS[name]


# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------
def test_unknown_model_lists_known_models():
  with pytest.raises(ValueError, match=r"unknown model 'deit_huge'.*deit_tiny_patch16_224.*swin_micro"):
    registry.create_model("deit_huge")


def test_unknown_arch_override():
  with pytest.raises(ValueError, match=r"no architecture field 'depths'"):
    registry.model_config("deit_tiny_patch16_224", depths=(2, 2))  # a Swin field on a ViT


def test_arch_override_applies():
  cfg = registry.model_config("swin_micro_patch2_window4_32", depths=[1, 1, 3], num_classes=3)
  assert cfg.depths == (1, 1, 3) and cfg.num_classes == 3 and cfg.embed_dim == 32


def test_wrong_image_shape():
  model = registry.create_model("vit_micro_patch4_28")
  x = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)
  with pytest.raises(ValueError, match=r"expected images of shape \(B, 28, 28, 1\)"):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


def test_swin_layout_count_checked():
  model = registry.create_model("swin_micro_patch2_window4_32", layouts=(None, None))
  with pytest.raises(ValueError, match="Swin has 3 stacks but 2 layouts"):
    model.stack_layouts


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(num_core=0, mapping=(), adjust=()), "num_core >= 1"),
        (dict(num_core=2, mapping=(0, 1), adjust=("none",)), "2 entries but adjust has 1"),
        (dict(num_core=2, mapping=(0, 2), adjust=("none", "none")), "index 2 out of range"),
        (dict(num_core=2, mapping=(0, 1), adjust=("none", "prefix")), "unknown adjustment 'prefix'"),
    ],
)
def test_stack_layout_validation(kwargs, msg):
  with pytest.raises(ValueError, match=msg):
    stack_lib.StackLayout(**kwargs)


def test_stack_layout_segments():
  layout = stack_lib.StackLayout(3, (0, 0, 1, 2, 2), ("adapter", "adapter", "none", "lora", "lora"))
  assert layout.segments() == [(0, 2, "adapter"), (2, 3, "none"), (3, 5, "lora")]
  assert [layout.locate(l) for l in range(5)] == [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1)]
  with pytest.raises(IndexError):
    layout.locate(5)


# ---------------------------------------------------------------------------------------------------------
# Runtime options: bf16 compute, remat
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,arch", [("vit_micro_patch4_28", {}), ("swin_micro_patch2_window4_32", dict(depths=(2, 2), num_heads=(2, 4)))]
)
def test_bf16_compute_keeps_fp32_params(name, arch):
  m32 = registry.create_model(name, arch=arch)
  m16 = registry.create_model(name, arch=arch, dtype=jnp.bfloat16)
  abstract = m16.abstract_params()
  assert {a.dtype for a in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
  params = random_params(abstract)
  x = images(m32.config)
  y32 = np.asarray(jax.jit(m32.apply)({"params": params}, x))
  y16 = jax.jit(m16.apply)({"params": params}, x)
  assert y16.dtype == jnp.float32
  y16 = np.asarray(y16)
  err = np.abs(y16 - y32).max()
  assert 0 < err <= 0.05 * np.abs(y32).max() + 1e-2, err  # > 0: bf16 really is used


# ViT only: remat wraps the Block that Swin's stages scan too, and Swin's backward compiles for > 1 min
# on the loaded 2-core box.
@pytest.mark.parametrize("name,arch", [("vit_micro_patch4_28", {})])
def test_remat_same_outputs_and_grads(name, arch):
  plain = registry.create_model(name, arch=arch, drop_path_rate=0.2)
  remat = registry.create_model(name, arch=arch, drop_path_rate=0.2, remat=True)
  params = random_params(plain.abstract_params())
  x = images(plain.config)
  # train=True so drop path draws its masks inside the rematerialised blocks; an 'rbg' key only
  # because threefry random bits compile slowly on CPU.
  rngs = {"dropout": jax.random.key(3, impl="rbg")}

  def loss(model):
    def f(p):
      y = model.apply({"params": p}, x, train=True, rngs=rngs)
      return jnp.sum(y * jnp.arange(y.shape[-1])), y

    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

  (_, y0), g0 = loss(plain)
  (_, y1), g1 = loss(remat)
  # Same computation, but XLA may fuse the recomputed forward differently: allow float rounding.
  np.testing.assert_allclose(np.asarray(y1), np.asarray(y0), rtol=0, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
  # drop path really dropped something (else train=True would test nothing beyond eval mode)
  y_eval = np.asarray(jax.jit(plain.apply)({"params": params}, x))
  assert np.abs(y_eval - np.asarray(y0)).max() > 1e-3


# ---------------------------------------------------------------------------------------------------------
# Swin window geometry
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "res,window,want",
    [
        ((56, 56), 7, (7, 3)),
        ((14, 14), 7, (7, 3)),
        ((7, 7), 7, (7, 0)),  # fits in one window: nothing to shift
        ((4, 4), 7, (4, 0)),  # smaller than the window: window shrinks to the stage
        ((8, 8), 4, (4, 2)),
    ],
)
def test_window_spec_for_stage(res, window, want):
  spec = stack_lib.WindowSpec.for_stage(res, window)
  assert (spec.window, spec.shift) == want


def test_window_spec_rejects_non_multiple():
  with pytest.raises(ValueError, match=r"\(10, 10\) is not a multiple of window size 4"):
    stack_lib.WindowSpec.for_stage((10, 10), 4)


def test_window_partition_reverse():
  x = np.random.default_rng(0).standard_normal((2, 8, 12, 3)).astype(np.float32)
  win = np.asarray(stack_lib.window_partition(x, 4))
  assert win.shape == (2 * 2 * 3, 16, 3)
  # batch-major, then row-major over windows; tokens row-major inside a window
  np.testing.assert_array_equal(win[4].reshape(4, 4, 3), x[0, 4:8, 4:8])
  np.testing.assert_array_equal(win[6 + 2].reshape(4, 4, 3), x[1, 0:4, 8:12])
  np.testing.assert_array_equal(np.asarray(stack_lib.window_reverse(win, 4, 2, 8, 12)), x)


@pytest.mark.parametrize("res,window", [((8, 8), 4), ((14, 14), 7), ((12, 8), 4)])
def test_shift_mask_brute_force(res, window):
  """Two tokens of a shifted window may attend iff the cyclic roll kept them true neighbours."""
  spec = stack_lib.WindowSpec.for_stage(res, window)
  h, w = res
  s, ws = spec.shift, spec.window
  assert s > 0
  nwh, nww = h // ws, w // ws
  want = np.zeros((nwh * nww, ws * ws, ws * ws), np.float32)
  for wi, wj in itertools.product(range(nwh), range(nww)):
    cells = [(wi * ws + a, wj * ws + b) for a in range(ws) for b in range(ws)]  # rolled coordinates
    for p, q in itertools.product(range(ws * ws), repeat=2):
      (pi, pj), (qi, qj) = cells[p], cells[q]
      # original position of rolled cell (i, j) is ((i + s) % h, (j + s) % w)
      oi = ((pi + s) % h) - ((qi + s) % h)
      oj = ((pj + s) % w) - ((qj + s) % w)
      if (oi, oj) != (pi - qi, pj - qj):
        want[wi * nww + wj, p, q] = -100.0
  np.testing.assert_array_equal(spec.shift_mask(), want)
  assert (want != 0).any() and (want == 0).any()


def test_patch_embed_is_the_strided_conv_it_replaces():
  """Same param names, shapes and init as nn.Conv(kernel p, stride p), and the same outputs."""
  import flax.linen as nn

  x = jax.random.normal(jax.random.key(1), (2, 28, 28, 3))
  conv = nn.Conv(16, (4, 4), strides=(4, 4), padding="VALID")
  ours = stack_lib.PatchEmbed(4, 16)
  p_conv = conv.init(jax.random.key(0), x)
  p_ours = ours.init(jax.random.key(0), x)
  assert jax.tree.all(jax.tree.map(np.array_equal, p_conv, p_ours))
  p_conv["params"]["bias"] = jax.random.normal(jax.random.key(2), (16,))  # a non-zero bias too
  np.testing.assert_allclose(ours.apply(p_conv, x), conv.apply(p_conv, x), atol=1e-5)


def test_gelu_is_the_exact_gelu():
  x = jnp.linspace(-8, 8, 10001)
  np.testing.assert_allclose(stack_lib.gelu(x), jax.nn.gelu(x, approximate=False), atol=2e-6)
  g = jax.vmap(jax.grad(stack_lib.gelu))(x)
  np.testing.assert_allclose(g, jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x), atol=2e-6)
