"""Parameter and MAC counting: exact small cases, published DeiT/Swin numbers, XLA cross-check, scans."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from scalenet_jax import counting
from scalenet_jax.grow import expand
from scalenet_jax.grow.spec import ExpansionSpec
from scalenet_jax.models import registry

f32 = jnp.float32


def sds(*shape):
  return jax.ShapeDtypeStruct(shape, f32)


class Tiny(nn.Module):
  """Conv -> grouped conv -> Dense, small enough to count by hand."""

  @nn.compact
  def __call__(self, x):  # (2, 8, 8, 4)
    y = nn.Conv(6, (3, 3), padding="VALID")(x)  # (2, 6, 6, 6)
    y = nn.Conv(6, (3, 3), feature_group_count=2, padding="SAME")(y)  # 3 input channels per group
    return nn.Dense(5)(y.reshape(2, -1))


def test_count_params_and_predicate():
  abstract = jax.eval_shape(lambda x: Tiny().init(jax.random.key(0), x), sds(2, 8, 8, 4))["params"]
  conv0, conv1, dense = 3 * 3 * 4 * 6 + 6, 3 * 3 * 3 * 6 + 6, 216 * 5 + 5
  assert counting.count_params(abstract) == conv0 + conv1 + dense
  assert counting.count_params(abstract, counting.matches_any([r"^Conv_\d/kernel$"])) == 3 * 3 * 4 * 6 + 3 * 3 * 3 * 6
  assert counting.count_params(abstract, counting.matches_any(["bias", "^Dense"])) == 6 + 6 + dense


def test_macs_conv_and_dense_exact():
  params = jax.eval_shape(lambda x: Tiny().init(jax.random.key(0), x), sds(2, 8, 8, 4))
  got = counting.macs(lambda p, x: Tiny().apply(p, x), params, sds(2, 8, 8, 4))
  conv0 = 2 * 6 * 6 * 6 * (3 * 3 * 4)
  conv1 = 2 * 6 * 6 * 6 * (3 * 3 * 3)  # grouped: each output sees 3 of the 6 input channels
  dense = 2 * 216 * 5
  assert got == conv0 + conv1 + dense == 15552 + 11664 + 2160


def test_macs_batched_dot():
  got = counting.macs(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), sds(3, 4, 5), sds(3, 5, 6))
  assert got == 3 * 4 * 6 * 5


def test_macs_scan_multiplies_by_length_and_cond_takes_max():
  def f(w, x):
    def body(c, _):
      return w @ c, None

    x, _ = jax.lax.scan(body, x, None, length=7)
    return jax.lax.cond(x.sum() > 0, lambda v: w @ (w @ v), lambda v: v * 2.0, x)

  assert counting.macs(f, sds(4, 4), sds(4)) == 7 * 16 + 2 * 16


def deit_macs(d, depth, img=224, patch=16, chans=3, classes=1000, mlp=4):
  """Hand count of a DeiT forward (one image): patch conv, per-block matmuls incl. QK^T and AV, head."""
  n = (img // patch) ** 2
  t = n + 1
  block = t * d * 3 * d + 2 * t * t * d + t * d * d + 2 * t * d * mlp * d
  return n * patch * patch * chans * d + depth * block + d * classes


@pytest.mark.parametrize("name,d", [("deit_tiny_patch16_224", 192), ("deit_small_patch16_224", 384)])
def test_deit_macs_exact(name, d):
  model = registry.create_model(name)
  assert counting.model_flops(model, model.abstract_params()) == deit_macs(d, 12)


@pytest.mark.parametrize("name,published", [("deit_small_patch16_224", 4.6e9), ("swin_tiny_patch4_window7_224", 4.5e9)])
def test_macs_match_published(name, published):
  """fvcore's numbers (multiply-add = 1 FLOP) as reported by the DeiT and Swin papers."""
  model = registry.create_model(name)
  got = counting.model_flops(model, model.abstract_params())
  assert abs(got - published) <= 0.02 * published, got


def _micro_fn(name, unroll):
  model = registry.create_model(name, unroll=unroll)
  cfg = model.config
  x = sds(2, cfg.img_size, cfg.img_size, cfg.in_chans)
  return (lambda p, x: model.apply({"params": p}, x)), model.abstract_params(), x


@pytest.mark.parametrize("name", ["vit_micro_patch4_28", "swin_micro_patch2_window4_32"])
def test_macs_vs_xla_cost_analysis(name):
  """XLA counts a multiply-add as 2 FLOPs plus elementwise work: 2*MACs <= XLA <= 1.3 * 2*MACs.

  unroll=True because XLA's cost analysis counts a while-loop body once.
  """
  fn, params, x = _micro_fn(name, unroll=True)
  m = counting.macs(fn, params, x)
  xla = counting.xla_flops(fn, params, x)
  assert 2 * m <= xla <= 1.3 * 2 * m, (m, xla)


@pytest.mark.parametrize("name", ["vit_micro_patch4_28", "swin_micro_patch2_window4_32"])
def test_scanned_macs_equal_unrolled(name):
  fn_u, params, x = _micro_fn(name, unroll=True)
  fn_s, _, _ = _micro_fn(name, unroll=False)
  assert "scan" in str(jax.make_jaxpr(fn_s)(params, x))  # really the scanned program
  assert counting.macs(fn_s, params, x) == counting.macs(fn_u, params, x) > 0


@pytest.mark.parametrize("adjust,per_token", [("adapter", 10), ("lora", 16), ("none", 0)])
def test_expanded_vit_macs_exact(adjust, per_token):
  """ScaleNet 2x (interpolate): MACs of a plain 12-layer model + the adjustment modules of 12 instances."""
  model = registry.create_model("vit_micro_patch4_28")
  spec = ExpansionSpec(adjust=adjust, rank=16)
  new = expand.expanded_model(model, spec)
  deep = registry.create_model("vit_micro_patch4_28", arch=dict(depth=12))
  tokens, d, r = 7 * 7 + 1, 64, 16
  want = counting.model_flops(deep, deep.abstract_params()) + 12 * tokens * per_token * r * d
  assert counting.model_flops(new, new.abstract_params()) == want


def test_expanded_swin_macs_exact():
  """Swin, last stage (4x4 tokens, width 128) stacked 2x with adapters: 2 more blocks + 4 adapter pairs."""
  model = registry.create_model("swin_micro_patch2_window4_32")
  new = expand.expanded_model(model, ExpansionSpec(mapping="stack"))
  deep = registry.create_model("swin_micro_patch2_window4_32", arch=dict(depths=(2, 2, 4)))
  want = counting.model_flops(deep, deep.abstract_params()) + 4 * 16 * 10 * 16 * 128
  assert counting.model_flops(new, new.abstract_params()) == want


def test_model_flops_is_per_image():
  model = registry.create_model("vit_micro_patch4_28")
  p = model.abstract_params()
  assert counting.model_flops(model, p, batch=3) == counting.model_flops(model, p, batch=1)


@pytest.mark.parametrize("n,s", [(4.6e9, "4.60G"), (22050664, "22.05M"), (1500, "1.50K"), (12, "12"), (0.5, "0.5")])
def test_human(n, s):
  assert counting.human(n) == s
