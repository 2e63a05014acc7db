"""timm <-> Flax conversion: exact round trips, files (.safetensors / .pth), refusal of code pickles, errors."""

from __future__ import annotations

import os
import pickle

import jax
import numpy as np
import pytest

from conftest import random_params
from scalenet_jax import convert
from scalenet_jax.grow import spec as spec_lib
from scalenet_jax.models import registry

MICRO = {"vit": "vit_micro_patch4_28", "swin": "swin_micro_patch2_window4_32"}
TIMM_BASE = {"vit": "vit_base_patch16_224", "swin": "swin_tiny_patch4_window7_224"}


def micro(family):
  model = registry.create_model(MICRO[family])
  return model, random_params(model.abstract_params(), seed=1)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def vit_sd():
  model, params = micro("vit")
  return model, params, convert.flax_to_timm(params, model)


# ---------------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["vit", "swin"])
def test_round_trip_through_timm_is_exact(timm, torch, family):
  """Flax -> timm dict -> strict load into timm -> timm state_dict -> Flax, bit for bit."""
  model, params = micro(family)
  sd = convert.flax_to_timm(params, model)
  tm = timm.create_model(TIMM_BASE[family], pretrained=False, **registry.arch_kwargs(MICRO[family]))
  result = tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  assert not result.missing_keys and not result.unexpected_keys
  back = convert.timm_to_flax(tm.state_dict(), model)
  assert_trees_equal(back, params)


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_round_trip_numpy_only(family):
  model, params = micro(family)
  sd = convert.flax_to_timm(params, model)
  assert all(v.flags["C_CONTIGUOUS"] for v in sd.values())
  assert_trees_equal(convert.timm_to_flax(sd, model), params)


def test_key_table_covers_every_param_once():
  for family in ("vit", "swin"):
    model, params = micro(family)
    table = model.key_table()
    assert len({e.key for e in table}) == len(table)
    # every scalar of the Flax tree is written by exactly one entry
    n = 0
    for e in table:
      leaf = np.asarray(convert._get(params, e.path))
      n += leaf[0].size if e.index is not None else leaf.size
    assert n == sum(np.asarray(l).size for l in jax.tree.leaves(params))


def test_layout_transforms(vit_sd):
  model, params, sd = vit_sd
  # torch Linear is (out, in); Conv2d is (O, I, kh, kw)
  np.testing.assert_array_equal(sd["blocks.2.mlp.fc1.weight"], params["blocks"]["core"]["fc1"]["kernel"][2].T)
  assert sd["patch_embed.proj.weight"].shape == (64, 1, 4, 4)
  np.testing.assert_array_equal(sd["patch_embed.proj.weight"][5, 0, 1, 3], params["patch_embed"]["kernel"][1, 3, 0, 5])
  np.testing.assert_array_equal(sd["blocks.4.norm2.weight"], params["blocks"]["seg0"]["norm2"]["scale"][4])


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------
def test_safetensors_round_trip(tmp_path, vit_sd):
  model, params, sd = vit_sd
  path = str(tmp_path / "w.safetensors")
  convert.save_safetensors(path, sd)
  loaded = convert.load_state_dict(path)
  assert sorted(loaded) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(loaded[k], sd[k])
  assert_trees_equal(convert.timm_to_flax(loaded, model), params)


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict"])
def test_pth_round_trip(tmp_path, torch, vit_sd, wrapper):
  model, params, sd = vit_sd
  tsd = {k: torch.from_numpy(v) for k, v in sd.items()}
  obj = tsd if wrapper is None else {wrapper: tsd, "epoch": 7}  # training checkpoints wrap the weights
  path = str(tmp_path / "w.pth")
  torch.save(obj, path)
  loaded = convert.load_state_dict(path)
  assert sorted(loaded) == sorted(sd)
  assert_trees_equal(convert.timm_to_flax(loaded, model), params)


class _Payload:
  """Unpickling this object runs a shell command (what a malicious checkpoint would do)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch '{self.marker}'",)


def test_malicious_pth_is_refused(tmp_path, torch):
  marker = tmp_path / "pwned"
  path = str(tmp_path / "evil.pth")
  torch.save({"w": torch.zeros(2), "x": _Payload(str(marker))}, path)
  with pytest.raises(ValueError, match="refusing"):
    convert.load_state_dict(path)
  assert not marker.exists()
  # The payload is real: a plain pickle load would have run it.
  torch.load(path, weights_only=False)
  assert marker.exists()


def test_plain_pickle_pth_is_refused(tmp_path, torch):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.bin"
  path.write_bytes(pickle.dumps({"w": _Payload(str(marker))}, protocol=2))  # legacy non-zip format
  with pytest.raises(ValueError, match="refusing"):
    convert.load_state_dict(str(path))
  assert not marker.exists()


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.safetensors"):
    convert.load_state_dict(str(tmp_path / "nope.safetensors"))


def test_unsupported_extension(tmp_path):
  path = tmp_path / "w.npz"
  np.savez(path, a=np.zeros(2))
  with pytest.raises(ValueError, match=r"unsupported checkpoint format .*w\.npz"):
    convert.load_state_dict(str(path))


# ---------------------------------------------------------------------------------------------------------
# Strict loading errors
# ---------------------------------------------------------------------------------------------------------
def test_missing_key_is_named(vit_sd):
  model, _, sd = vit_sd
  sd = dict(sd)
  del sd["blocks.3.mlp.fc2.bias"]
  with pytest.raises(ValueError, match=r"missing key in checkpoint: 'blocks\.3\.mlp\.fc2\.bias'"):
    convert.timm_to_flax(sd, model)


def test_new_head_may_be_missing(vit_sd):
  model, params, sd = vit_sd
  sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
  out = convert.timm_to_flax(sd, model, new_head=True)
  np.testing.assert_array_equal(out["head"]["kernel"], 0)
  np.testing.assert_array_equal(out["blocks"]["core"]["qkv"]["kernel"], params["blocks"]["core"]["qkv"]["kernel"])


def test_unexpected_key_is_named(vit_sd):
  model, _, sd = vit_sd
  sd = {**sd, "blocks.6.norm1.weight": np.ones(64, np.float32)}  # a 7th block in a 6-block model
  with pytest.raises(ValueError, match=r"unexpected key in checkpoint: 'blocks\.6\.norm1\.weight'"):
    convert.timm_to_flax(sd, model)


def test_non_persistent_buffers_are_ignored():
  model, params = micro("swin")
  sd = convert.flax_to_timm(params, model)
  sd["layers.0.blocks.1.attn.relative_position_index"] = np.zeros((16, 16), np.int64)
  sd["layers.0.blocks.1.attn_mask"] = np.zeros((16, 16, 16), np.float32)
  assert_trees_equal(convert.timm_to_flax(sd, model), params)


def test_shape_mismatch_names_key_and_shapes(vit_sd):
  model, _, sd = vit_sd
  sd = {**sd, "blocks.1.attn.qkv.weight": np.zeros((5, 64), np.float32)}
  with pytest.raises(
      ValueError,
      match=r"shape mismatch for key 'blocks\.1\.attn\.qkv\.weight': "
      r"checkpoint has \(5, 64\), model expects \(192, 64\)",
  ):
    convert.timm_to_flax(sd, model)


def test_wrong_model_is_rejected(vit_sd):
  _, _, sd = vit_sd
  other = registry.create_model("vit_micro_patch4_28", arch=dict(embed_dim=32, num_heads=2))
  with pytest.raises(ValueError, match="shape mismatch for key 'patch_embed.proj.weight'"):
    convert.timm_to_flax(sd, other)


def test_loading_into_expanded_model_is_refused(vit_sd):
  model, _, sd = vit_sd
  layouts = spec_lib.model_layouts((6,), spec_lib.ExpansionSpec())
  expanded = model.with_layouts(layouts)
  with pytest.raises(ValueError, match="plain model"):
    convert.timm_to_flax(sd, expanded)
