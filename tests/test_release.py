"""Release files: timm-format weights with provenance, loadable by the timm twin that their metadata builds."""

from __future__ import annotations

import numpy as np
import pytest

import tiny_runs
from scalenet_jax import builder, main, release
from scalenet_jax.errors import UserError


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("run")
  config = tiny_runs.micro_config({**tiny_runs.TINY, "steps": 2, "ckpt_every": 0})
  main.run(config, str(wd))
  return config, wd


def test_release_file_builds_its_timm_twin(finished_run, tmp_path, timm, torch):
  config, wd = finished_run
  out = tmp_path / "vit_micro.safetensors"
  meta = release.write(config, wd, out, "python -m scalenet_jax.main --config X --workdir WORKDIR")
  tensors, read_meta = release.read(out)
  assert read_meta == meta and read_meta["timm_class"] == "VisionTransformer"
  assert read_meta["mean"] == list(config.data.mean) and read_meta["steps"] == 2
  assert 0.0 <= read_meta["top1"] <= 1.0
  assert (tmp_path / "vit_micro.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the training curve

  from timm.models.vision_transformer import VisionTransformer

  twin = VisionTransformer(**read_meta["timm_kwargs"]).eval()
  twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, strict=True)
  model = builder.base_model(config)
  params = builder.load_pretrained(tiny_runs.micro_config({"init_from": str(out)}), model)
  x = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
  ours = np.asarray(model.apply({"params": params}, x))
  with torch.no_grad():
    theirs = twin(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_release_of_an_unfinished_run_is_refused(finished_run, tmp_path):
  config, wd = finished_run
  longer = tiny_runs.micro_config({**tiny_runs.TINY, "steps": 5})
  with pytest.raises(UserError, match="no final evaluation at step 5"):
    release.write(longer, wd, tmp_path / "x.safetensors", "cmd")
