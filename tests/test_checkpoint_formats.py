"""`init_from` reads the checkpoints users hold, each written here in its real layout.

* timm / Hugging Face hub: `model.safetensors` (the file, or its snapshot directory with `config.json`);
* the original DeiT release / training `.pth`: tensors under `model`, next to optimizer, epoch, args...;
* the original Swin release `.pth`: tensors under `model` or `state_dict`, in the Swin repo's own key
  layout (patch merging at the end of a stage, `head.*`), with its buffers;
* an exported scalenet_jax params dir;
* distilled DeiT checkpoints fail with a message that says so; another number of classes needs
  `init_new_head` (and says so), which then starts a fresh head.
"""

from __future__ import annotations

import argparse
import json
import re

import jax
import numpy as np
import pytest

from conftest import random_params
from scalenet_jax import builder, config_lib, convert
from scalenet_jax.errors import CheckpointError
from scalenet_jax.models import registry
from scalenet_jax.train import checkpoint as ckpt_lib

VIT, SWIN = "vit_micro_patch4_28", "swin_micro_patch2_window4_32"


def config_for(name, init_from, **overrides):
  return config_lib.override(config_lib.train_config(name), {"init_from": str(init_from), **overrides})


def reference(name, seed=3):
  """(model, params, timm-layout state dict) with every param random."""
  model = registry.create_model(name)
  params = random_params(model.abstract_params(), seed=seed)
  return model, params, convert.flax_to_timm(params, model)


def assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_hub_model_safetensors_file_and_snapshot_dir(tmp_path):
  model, params, sd = reference(VIT)
  snapshot = tmp_path / "models--timm--vit_micro" / "snapshots" / "0123abcd"
  snapshot.mkdir(parents=True)
  convert.save_safetensors(str(snapshot / "model.safetensors"), sd)
  (snapshot / "config.json").write_text(json.dumps({"architecture": "vit_micro", "num_classes": 10}))
  for init_from in (snapshot / "model.safetensors", snapshot):
    assert_same(builder.load_pretrained(config_for(VIT, init_from), model), params)


def test_deit_release_pth_with_training_extras(torch, tmp_path):
  model, params, sd = reference(VIT)
  path = tmp_path / "deit_checkpoint.pth"
  torch.save(
      {
          "model": {k: torch.from_numpy(v) for k, v in sd.items()},
          "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4}]},
          "lr_scheduler": {"last_epoch": 299},
          "epoch": 299,
          "args": argparse.Namespace(model="deit_base_patch16_224", lr=5e-4),  # the DeiT train script saves it
      },
      path,
  )
  assert_same(builder.load_pretrained(config_for(VIT, path), model), params)


def to_original_swin(sd):
  """timm layout -> the Swin repo's: merging `layers.{i+1}.downsample` back to `layers.{i}.downsample`."""
  out = {}
  for k, v in sd.items():
    m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
    k = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else k.replace("head.fc.", "head.")
    out[k] = v
  return out


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_swin_release_pth_in_the_original_layout(torch, timm, tmp_path, wrapper):
  model, params, sd = reference(SWIN)
  original = to_original_swin(sd)
  assert "layers.0.downsample.reduction.weight" in original and "head.weight" in original
  # The release files also hold the buffers their model registers.
  original["layers.0.blocks.1.attn_mask"] = np.zeros((4, 16, 16), np.float32)
  original["layers.0.blocks.0.attn.relative_position_index"] = np.zeros((16, 16), np.int64)
  path = tmp_path / "swin_micro.pth"
  torch.save({wrapper: {k: torch.from_numpy(v) for k, v in original.items()}, "epoch": 300, "max_accuracy": 0.8}, path)
  assert_same(builder.load_pretrained(config_for(SWIN, path), model), params)
  # timm's own filter for these files agrees on the renaming.
  from timm.models import swin_transformer

  tm = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **registry.arch_kwargs(SWIN))
  filtered = swin_transformer.checkpoint_filter_fn({k: torch.from_numpy(v) for k, v in original.items()}, tm)
  assert {k for k in filtered if not k.endswith(("attn_mask", "relative_position_index"))} == set(sd)


def test_exported_params_dir(tmp_path):
  model, params, _ = reference(VIT)
  ckpt_lib.export_params(tmp_path / "export" / "params", params)
  assert_same(builder.load_pretrained(config_for(VIT, tmp_path / "export" / "params"), model), params)


def test_distilled_deit_is_refused_with_a_message(tmp_path):
  model, _, sd = reference(VIT)
  sd["dist_token"] = np.zeros((1, 1, 64), np.float32)
  sd["head_dist.weight"], sd["head_dist.bias"] = sd["head.weight"], sd["head.bias"]
  path = tmp_path / "deit_distilled.safetensors"
  convert.save_safetensors(str(path), sd)
  with pytest.raises(CheckpointError, match="distilled DeiT checkpoint"):
    builder.load_pretrained(config_for(VIT, path), model)


def test_another_class_count_needs_init_new_head(tmp_path):
  big = registry.create_model(VIT, {"num_classes": 1000})
  params = random_params(big.abstract_params(), seed=4)
  path = tmp_path / "in1k_head.safetensors"
  convert.save_safetensors(str(path), convert.flax_to_timm(params, big))
  model = registry.create_model(VIT)  # 10 classes
  with pytest.raises(CheckpointError, match=r"head\.weight.*init_new_head=True"):
    builder.load_pretrained(config_for(VIT, path), model)
  loaded = builder.load_pretrained(config_for(VIT, path, init_new_head=True), model)
  fresh = model.init_params(0)
  assert_same(loaded["head"], fresh["head"])  # a fresh (random, not zero) head ...
  assert np.any(loaded["head"]["kernel"])
  assert_same({k: v for k, v in loaded.items() if k != "head"}, {k: v for k, v in params.items() if k != "head"})
