"""Dense prediction (§IV-E): feature backbones vs timm, mmdet/mmseg checkpoints, UPerNet vs a torch reference,
Table IX parameter counts by hand, growth of a feature backbone, freezing recipes."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from conftest import random_params
from scalenet_jax import builder, convert, counting, dense
from scalenet_jax.errors import CheckpointError, ConfigError
from scalenet_jax.grow import expand as expand_lib
from scalenet_jax.grow.spec import ExpansionSpec
from scalenet_jax.models import registry, upernet

MICRO = "swin_micro_patch2_window4_32"  # 32 px, dims 32/64/128, stage grids 16/8/4, window 4
OUT = (0, 1, 2)

# mmseg's `SwinTransformer` names (mmseg/models/backbones/swin.py: PatchEmbed.projection, SwinBlock.attn.w_msa,
# mmcv FFN `layers` = Sequential(Sequential(fc1, act, drop), fc2, drop), PatchMerging at the end of stage i),
# written here as renames of timm's keys: the reference the converter is checked against.
TIMM_TO_MMSEG = (
    (r"^patch_embed\.proj\.", "patch_embed.projection."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.", r"stages.\1.blocks.\2.attn.w_msa."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"stages.\1.blocks.\2.ffn.layers.0.0."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"stages.\1.blocks.\2.ffn.layers.1."),
    (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"^layers\.(\d+)\.downsample\.", lambda m: f"stages.{int(m.group(1)) - 1}.downsample."),
)
CLASSIFIER_ONLY = ("norm.", "head.")


def unfold_order(a, axis):
  """mmseg's checkpoint converter (swin2mmseg: correct_unfold_*_order): the 4C merge channels, stored as the
  four 2x2 positions x0..x3 of C channels each, reordered to nn.Unfold's (c, kh, kw)."""
  a = np.moveaxis(a, axis, -1)
  c = a.shape[-1] // 4
  a = a.reshape(*a.shape[:-1], 4, c)[..., [0, 2, 1, 3], :]
  return np.moveaxis(np.swapaxes(a, -1, -2).reshape(*a.shape[:-2], 4 * c), -1, axis)


def mmseg_relative_position_index(w):
  """mmseg's WindowMSA buffer: double_step_seq(2w - 1, w, 1, w), plus its transpose, flipped along dim 1."""
  seq = (np.arange(0, (2 * w - 1) * w, 2 * w - 1)[:, None] + np.arange(w)[None]).reshape(1, -1)
  return np.flip(seq + seq.T, 1).astype(np.int64)


def mmseg_backbone_dict(timm_sd, norms, window):
  out = {}
  for k, v in timm_sd.items():
    v = v.detach().numpy()
    if k.startswith(CLASSIFIER_ONLY) or k.endswith("relative_position_index"):
      continue
    for pattern, repl in TIMM_TO_MMSEG:
      k = re.sub(pattern, repl, k)
    if ".downsample." in k:
      v = unfold_order(v, axis=v.ndim - 1)
    out[k] = v
    if k.endswith("w_msa.relative_position_bias_table"):
      out[k.replace("bias_table", "index")] = mmseg_relative_position_index(window)
  for i, (w, b) in norms.items():
    out[f"norm{i}.weight"], out[f"norm{i}.bias"] = w, b
  return out


# ---------------------------------------------------------------------------------------------------------
# Fixtures: a random timm micro Swin, its weights in our classifier and feature backbone
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def twin(timm, torch):
  torch.manual_seed(0)
  tm = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **registry.arch_kwargs(MICRO))
  with torch.no_grad():  # non-trivial biases and norms, so a dropped or swapped one shows
    for p in tm.parameters():
      if p.ndim == 1:
        p.add_(0.05 * torch.randn_like(p))
  return tm.eval()


@pytest.fixture(scope="module")
def backbone():
  return registry.create_model(MICRO, out_indices=OUT)


@pytest.fixture(scope="module")
def backbone_params(twin, backbone):
  classifier = registry.create_model(MICRO)
  params = dense.backbone_from_classifier(convert.timm_to_flax(twin.state_dict(), classifier), backbone)
  rng = np.random.default_rng(1)
  for i in OUT:  # random output norms (a fresh one is the identity up to centring)
    params[f"norm{i}"] = {
        k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in params[f"norm{i}"].items()
    }
  return params


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).standard_normal((2, 32, 32, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def torch_maps(twin, torch, backbone_params, images):
  """timm's stage outputs (NCHW) through the output norms: the reference feature maps."""
  with torch.no_grad():
    maps = twin.forward_intermediates(
        torch.from_numpy(images.transpose(0, 3, 1, 2)), indices=list(OUT), intermediates_only=True
    )
  out = []
  for i, m in zip(OUT, maps):
    n = backbone_params[f"norm{i}"]
    m = torch.nn.functional.layer_norm(
        m.permute(0, 2, 3, 1), (m.shape[1],), torch.from_numpy(n["scale"]), torch.from_numpy(n["bias"])
    )
    out.append(m.permute(0, 3, 1, 2))
  return out


def mmseg_norms(params):
  return {i: (params[f"norm{i}"]["scale"], params[f"norm{i}"]["bias"]) for i in OUT}


# ---------------------------------------------------------------------------------------------------------
# Feature backbones
# ---------------------------------------------------------------------------------------------------------
def test_swin_feature_maps_match_timm(backbone, backbone_params, torch_maps, images):
  got = jax.jit(backbone.apply)({"params": backbone_params}, images)
  assert [g.shape for g in got] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4)]
  for g, want in zip(got, torch_maps):
    assert np.abs(want.numpy()).max() > 0.5
    np.testing.assert_allclose(np.asarray(g), want.numpy(), rtol=0, atol=1e-4)


def test_vit_single_scale_feature_map_matches_timm(timm, torch):
  name = "vit_micro_patch4_28"
  torch.manual_seed(0)
  tm = timm.create_model("vit_base_patch16_224", pretrained=False, **registry.arch_kwargs(name)).eval()
  model = registry.create_model(name, out_indices=(0,))
  params = dense.backbone_from_classifier(convert.timm_to_flax(tm.state_dict(), registry.create_model(name)), model)
  x = np.random.default_rng(0).standard_normal((2, 28, 28, 1)).astype(np.float32)
  with torch.no_grad():
    (want,) = tm.forward_intermediates(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), indices=1, norm=True, intermediates_only=True
    )
  (got,) = jax.jit(model.apply)({"params": params}, x)
  assert got.shape == want.shape == (2, 64, 7, 7)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=0, atol=1e-4)
  assert set(convert.flax_to_timm(params, model)) == set(tm.state_dict()) - {"head.weight", "head.bias"}


def test_out_indices_checked():
  with pytest.raises(ValueError, match=r"out_indices must be increasing stack indices in \[0, 3\)"):
    registry.create_model(MICRO, out_indices=(1, 0)).abstract_params()
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    registry.create_model("vit_micro_patch4_28", out_indices=(1,)).abstract_params()


# ---------------------------------------------------------------------------------------------------------
# mmdet / mmseg checkpoints
# ---------------------------------------------------------------------------------------------------------
def test_unfold_order_is_mmseg_patch_merging(twin, torch):
  """The reference permutation (`unfold_order`) against mmseg's merge computation (nn.Unfold 2x2 stride 2 ->
  LayerNorm -> Linear) written in torch, with timm's merge (concat of the four positions) as the truth."""
  merge = twin.layers[1].downsample
  sd = {k: v.detach().numpy() for k, v in merge.state_dict().items()}
  x = torch.randn(2, 16, 16, 32)
  with torch.no_grad():
    want = merge(x)
    cols = torch.nn.functional.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2)  # (B, 4C, L), c-major
    cols = cols.transpose(1, 2)
    w = {k: torch.from_numpy(unfold_order(v, v.ndim - 1)) for k, v in sd.items()}
    got = torch.nn.functional.layer_norm(cols, (128,), w["norm.weight"], w["norm.bias"]) @ w["reduction.weight"].T
  np.testing.assert_allclose(got.reshape(want.shape).numpy(), want.numpy(), rtol=0, atol=1e-5)


def test_mmseg_backbone_in_and_out(twin, torch, backbone, backbone_params, tmp_path):
  sd = mmseg_backbone_dict(twin.state_dict(), mmseg_norms(backbone_params), window=4)
  full = {**{f"backbone.{k}": v for k, v in sd.items()}, "decode_head.conv_seg.bias": np.zeros(3, np.float32)}
  path = str(tmp_path / "upernet.pth")
  torch.save(
      {
          "meta": {"mmseg_version": "0.30.0", "CLASSES": ["a", "b", "c"]},
          "state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in full.items()},
      },
      path,
  )
  params = dense.load_backbone(convert.load_state_dict(path), backbone, skip=("decode_head.",))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params, backbone_params)

  out = dense.backbone_to_mmseg(params, backbone)
  assert sorted(out) == sorted(f"backbone.{k}" for k in sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(out[f"backbone.{k}"], v, err_msg=k)

  # strict: the head only when named, no missing or unknown backbone key
  with pytest.raises(CheckpointError, match=r"unexpected key in checkpoint: 'decode_head.conv_seg.bias'"):
    dense.load_backbone(full, backbone)
  with pytest.raises(CheckpointError, match=r"missing key in checkpoint: 'norm1.bias'"):
    dense.load_backbone({k: v for k, v in sd.items() if k != "norm1.bias"}, backbone, prefix="")
  with pytest.raises(CheckpointError, match=r"unexpected key in checkpoint: 'norm.weight'"):
    dense.load_backbone({**sd, "norm.weight": sd["norm0.weight"]}, backbone, prefix="")
  with pytest.raises(CheckpointError, match=r"'meta' but no 'state_dict'"):
    dense.load_backbone({"meta": {}, "model": {}}, backbone)


def test_grown_backbone_is_the_unrolled_deeper_backbone(images):
  """Every stage 2x (the §IV-E setting) at init: the grown feature backbone is the plain one whose stages run
  their pretrained blocks twice (stack mapping), i.e. the deeper plain backbone holding its unrolled export."""
  arch = dict(depths=(2, 1), num_heads=(2, 4))  # two stages (16 and 8 px grids) keep the compiles short
  # Scanned segments (same values) compile faster than the default unrolled ones.
  backbone = registry.create_model(MICRO, arch=arch, out_indices=(0, 1), unroll=False)
  params = random_params(backbone.abstract_params())
  spec = ExpansionSpec(mapping="stack", subset=(0, 1), adjust="adapter", adjust_scope="all", rank=4)
  grown_model = expand_lib.expanded_model(backbone, spec)
  fresh = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), grown_model.abstract_params())  # adapters B = 0
  grown, params = expand_lib.expand(params, backbone, spec, fresh=fresh)
  assert grown.depths == (4, 2) and grown.out_indices == (0, 1)
  exported = dense.backbone_to_mmseg(params, grown, prefix="")
  assert "stages.0.blocks.3.adjust.fc2.B.weight" in exported
  np.testing.assert_array_equal(
      exported["stages.0.blocks.3.ffn.layers.1.weight"], exported["stages.0.blocks.1.ffn.layers.1.weight"]
  )
  plain = registry.create_model(MICRO, arch=dict(arch, depths=(4, 2)), out_indices=(0, 1), unroll=False)
  plain_params = dense.load_backbone({k: v for k, v in exported.items() if ".adjust." not in k}, plain, prefix="")
  got = jax.jit(grown.apply)({"params": params}, images)
  want = jax.jit(plain.apply)({"params": plain_params}, images)
  assert np.abs(np.asarray(want[1])).max() > 0.5
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# UPerNet
# ---------------------------------------------------------------------------------------------------------
def torch_heads(torch, in_dims, channels, classes, aux_channels, aux_in, scales=(1, 2, 3, 6)):
  """mmseg's UPerHead and FCNHead (eval), written in torch from mmseg's module structure: its state dict
  names are mmseg's (`psp_modules.i.1.conv`, `lateral_convs.i`, `fpn_convs.i`, `convs.0`, `conv_seg`)."""
  nn, F = torch.nn, torch.nn.functional
  up = lambda x, ref: F.interpolate(x, size=ref.shape[2:], mode="bilinear", align_corners=False)

  class ConvModule(nn.Module):

    def __init__(self, cin, cout, k):
      super().__init__()
      self.conv, self.bn = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x):
      return F.relu(self.bn(self.conv(x)))

  class UPerHead(nn.Module):

    def __init__(self):
      super().__init__()
      self.psp_modules = nn.ModuleList(
          nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_dims[-1], channels, 1)) for s in scales
      )
      self.bottleneck = ConvModule(in_dims[-1] + len(scales) * channels, channels, 3)
      self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_dims[:-1])
      self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in in_dims[:-1])
      self.fpn_bottleneck = ConvModule(len(in_dims) * channels, channels, 3)
      self.conv_seg = nn.Conv2d(channels, classes, 1)

    def forward(self, xs):
      top = xs[-1]
      lat = [m(x) for m, x in zip(self.lateral_convs, xs)]
      lat.append(self.bottleneck(torch.cat([top] + [up(m(top), top) for m in self.psp_modules], 1)))
      for i in range(len(lat) - 1, 0, -1):
        lat[i - 1] = lat[i - 1] + up(lat[i], lat[i - 1])
      outs = [m(l) for m, l in zip(self.fpn_convs, lat)] + [lat[-1]]
      return self.conv_seg(self.fpn_bottleneck(torch.cat([up(o, outs[0]) for o in outs], 1)))

  class FCNHead(nn.Module):

    def __init__(self):
      super().__init__()
      self.convs = nn.Sequential(ConvModule(in_dims[aux_in], aux_channels, 3))
      self.conv_seg = nn.Conv2d(aux_channels, classes, 1)

    def forward(self, xs):
      return self.conv_seg(self.convs(xs[aux_in]))

  heads = {"decode_head": UPerHead(), "auxiliary_head": FCNHead()}
  with torch.no_grad():  # random BatchNorm affine and running statistics
    for h in heads.values():
      for m in h.modules():
        if isinstance(m, nn.BatchNorm2d):
          m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1), m.running_mean.normal_(0, 0.1), m.running_var.uniform_(
              0.5, 2
          )
  return {k: h.eval() for k, h in heads.items()}


def test_upernet_matches_torch_reference_and_round_trips(twin, torch, backbone, backbone_params, torch_maps, images):
  torch.manual_seed(0)
  heads = torch_heads(torch, (32, 64, 128), channels=16, classes=5, aux_channels=8, aux_in=1)
  with torch.no_grad():
    want = {k: h(torch_maps).numpy() for k, h in heads.items()}
  sd = {f"backbone.{k}": v for k, v in mmseg_backbone_dict(twin.state_dict(), mmseg_norms(backbone_params), 4).items()}
  for name, h in heads.items():
    sd.update((f"{name}.{k}", v.numpy()) for k, v in h.state_dict().items())
  seg = upernet.Segmentor(backbone, num_classes=5, channels=16, aux_channels=8, aux_in_index=1)
  variables = dense.load_segmentor({"meta": {}, "state_dict": sd}, seg)
  got = jax.jit(seg.apply)(variables, images)
  assert got["decode_head"].shape == (2, 5, 16, 16) and got["auxiliary_head"].shape == (2, 5, 8, 8)
  for k in want:
    assert got[k].shape == want[k].shape
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=0, atol=1e-4)

  out = dense.segmentor_to_mmseg(variables, seg)
  assert sorted(out) == sorted(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(out[k], v, err_msg=k)
  for name, h in heads.items():  # torch's strict load takes the export
    h.load_state_dict(
        {k[len(name) + 1 :]: torch.from_numpy(np.asarray(v)) for k, v in out.items() if k.startswith(name)}
    )
  with pytest.raises(CheckpointError, match=r"missing key in checkpoint: 'auxiliary_head.conv_seg.bias'"):
    dense.load_segmentor({k: v for k, v in sd.items() if k != "auxiliary_head.conv_seg.bias"}, seg)


def test_adaptive_pool_and_resize_are_torchs(torch):
  x = np.random.default_rng(0).standard_normal((1, 5, 7, 3)).astype(np.float32)
  tx = torch.from_numpy(x.transpose(0, 3, 1, 2))
  for s in (1, 2, 3, 6):
    want = torch.nn.functional.adaptive_avg_pool2d(tx, s).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(upernet.adaptive_avg_pool(x, s)), want, rtol=0, atol=1e-6)
  for hw in ((10, 14), (3, 4), (9, 5)):
    want = (
        torch.nn.functional.interpolate(tx, size=hw, mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
    )
    np.testing.assert_allclose(np.asarray(upernet.resize(x, hw)), want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Parameter counts (Table IX) by hand
# ---------------------------------------------------------------------------------------------------------
# timm's Swin classifiers (tests/test_models.py PARAM_COUNTS: timm and the Swin paper).
TIMM_SWIN = {"tiny": (28288354, (2, 2, 6, 2)), "small": (49606258, (2, 2, 18, 2))}
SWIN_DIMS = (96, 192, 384, 768)


def mmseg_swin_count(timm_count, dims):
  """mmseg's Swin backbone: timm's minus the final norm and the 1000-class head, plus norm0..norm3."""
  return timm_count - 2 * dims[-1] - (dims[-1] * 1000 + 1000) + sum(2 * c for c in dims)


def uper_head_count(dims, channels, classes, scales=4):
  """Conv weights (no bias) + BatchNorm weight and bias (2 per channel); conv_seg has a bias."""
  cm = lambda cin, k: k * k * cin * channels + 2 * channels
  ppm = scales * cm(dims[-1], 1)
  bottleneck = cm(dims[-1] + scales * channels, 3)
  fpn = sum(cm(c, 1) + cm(channels, 3) for c in dims[:-1])
  return ppm + bottleneck + fpn + cm(len(dims) * channels, 3) + channels * classes + classes


def fcn_head_count(c_in, channels, classes):
  return 9 * c_in * channels + 2 * channels + channels * classes + classes


def grown_increment(dims, depths, rank=16, reuse=2):
  """Every stage R x: an adapter pair (10 r C) on every block, two LayerNorms (4 C) on every new block."""
  return sum(10 * rank * c * reuse * d + 4 * c * (reuse - 1) * d for c, d in zip(dims, depths))


@pytest.mark.parametrize("size,table_ix,grown_table_ix", [("tiny", 59.9, 63.1), ("small", 81.3, 84.4)])
def test_upernet_swin_param_counts(size, table_ix, grown_table_ix):
  timm_count, depths = TIMM_SWIN[size]
  seg = upernet.swin_upernet(size)
  params = seg.abstract_params()
  backbone = mmseg_swin_count(timm_count, SWIN_DIMS)
  decode, aux = uper_head_count(SWIN_DIMS, 512, 150), fcn_head_count(SWIN_DIMS[2], 256, 150)
  assert counting.count_params(params["backbone"]) == backbone
  assert counting.count_params(params["decode_head"]) == decode
  assert counting.count_params(params["auxiliary_head"]) == aux
  total = counting.count_params(params)
  assert total == backbone + decode + aux == {"tiny": 59941862, "small": 81259766}[size]
  assert round(total / 1e6, 1) == table_ix  # Table IX counts the auxiliary head
  assert counting.count_params(upernet.swin_upernet(size, aux=False).abstract_params()) == total - aux

  spec = ExpansionSpec(mapping="stack", subset=(0, 1, 2, 3), adjust="adapter", adjust_scope="all", rank=16)
  grown = counting.count_params(dense.expanded_segmentor(seg, spec).abstract_params())
  assert grown == total + grown_increment(SWIN_DIMS, depths) == {"tiny": 61372646, "small": 84183542}[size]
  # The paper's grown rows add ~3.2 M to both sizes; the stated method adds 1.43 / 2.92 M (upernet.py doc).
  assert round(grown_table_ix - grown / 1e6, 1) == {"tiny": 1.7, "small": 0.2}[size]


# ---------------------------------------------------------------------------------------------------------
# Freezing recipes
# ---------------------------------------------------------------------------------------------------------
def test_freezing_recipes(backbone):
  seg = upernet.Segmentor(backbone, num_classes=5, channels=16, aux_channels=8, aux_in_index=1)
  spec = ExpansionSpec(
      mapping="stack", subset=OUT, adjust="adapter", adjust_scope="all", rank=4, trainable="adjust_ln_head"
  )
  grown = dense.expanded_segmentor(seg, spec)
  params = grown.abstract_params()
  dims, blocks = (32, 64, 128), (4, 4, 4)
  adapters_and_norms = sum(10 * 4 * c * d + 4 * c * d for c, d in zip(dims, blocks))  # block adapters, norm1/2
  adapters_and_norms += 2 * 32 + 2 * (4 * 32 + 4 * 64) + sum(2 * c for c in dims)  # patch, merge, out norms
  heads = uper_head_count(dims, 16, 5) + fcn_head_count(64, 8, 5)

  seg_mask = dense.trainable_mask(params, backbone, spec, "segmentation")
  assert builder.count_trainable(params, seg_mask) == adapters_and_norms + heads
  b = seg_mask["backbone"]
  assert not b["stage0"]["core"]["qkv"]["kernel"] and not b["patch_embed"]["kernel"]
  assert not b["merge1"]["reduction"]["kernel"] and b["merge1"]["norm"]["scale"] and b["norm2"]["bias"]
  assert b["stage2"]["seg0"]["adapter_fc1"]["A"]["kernel"] and b["stage2"]["seg0"]["norm1"]["scale"]

  det_mask = dense.trainable_mask(params, backbone, spec, "detection")
  assert builder.count_trainable(params, det_mask) == adapters_and_norms + (16 * 5 + 5) + (8 * 5 + 5)
  assert (
      det_mask["decode_head"]["cls"]["conv_seg"]["kernel"]
      and not det_mask["decode_head"]["fpn_bottleneck"]["conv"]["kernel"]
  )

  # all trainable without an expansion; a baseline's new core rows only; unknown recipes refused
  plain = seg.abstract_params()
  assert builder.count_trainable(plain, dense.trainable_mask(plain, backbone, None)) == counting.count_params(plain)
  stack = ExpansionSpec(kind="stack", subset=(2,), num_new_layers=1, trainable="adjust_ln_head")
  stacked = dense.expanded_segmentor(seg, stack).abstract_params()
  rows = dense.trainable_mask(stacked, backbone, stack)["backbone"]["stage2"]["core"]["fc1"]["kernel"]
  np.testing.assert_array_equal(rows, [False, False, True])
  with pytest.raises(ConfigError, match="unknown freezing recipe 'detect'"):
    dense.trainable_mask(params, backbone, spec, "detect")
