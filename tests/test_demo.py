"""The README's demo (`python -m scalenet_jax.demo`, the plan `configs/grow_study.py:demo` of the study
runner) in --quick form on real Fashion-MNIST from the released base, its errors, its --pretrain and
Swin plans."""

import json
import subprocess
import sys

import numpy as np
import pytest

import helpers
from scalenet_jax import config_lib, release, study

GROW = helpers.CONFIGS / "grow_study.py"
RELEASED_VIT = helpers.REPO / "pretrained" / "vit_micro_patch4_28_fmnist.safetensors"
RELEASED_SWIN = helpers.REPO / "pretrained" / "swin_micro_patch2_window4_32_fmnist.safetensors"
ARMS = ["scalenet", "random", "stack", "interpolate", "swa", "scratch", "further"]  # the README's table


def _demo(*args, timeout=600):
  return subprocess.run(
      [sys.executable, "-m", "scalenet_jax.demo", *args], capture_output=True, text=True, timeout=timeout
  )


def _rows(report: str) -> dict:
  """label -> cells of the report's arm rows."""
  rows = [l for l in report.splitlines() if l.startswith("| ") and not l.startswith("| arm")]
  return {r.split(" | ")[0][2:]: [c.strip() for c in r.strip("|").split("|")] for r in rows}


@pytest.mark.e2e
def test_quick_demo_grows_the_released_base_and_reports(tmp_path):
  helpers.fashion_mnist_dir()
  out = _demo("--quick", "--workdir", str(tmp_path), timeout=1200)
  assert out.returncode == 0, out.stderr[-3000:]
  report = (tmp_path / "report.md").read_text()
  assert report in out.stdout  # also printed
  record = json.loads((tmp_path / "record.json").read_text())["runs"]
  assert list(record) == [f"{a}_s0" for a in ARMS]
  labels = config_lib.load_config_module(GROW).demo("quick=1")["arms"]
  rows = _rows(report)
  assert list(rows) == [labels[a] for a in ARMS]
  # ScaleNet doubles the 6-layer ViT: an adapter pair of 10 r d (r = 5, d = 64) on each of the 12 block
  # instances and the two LNs of each new layer, on top of the base's 305,034 (hand count in test_study).
  sn = record["scalenet_s0"]
  assert sn["depths"] == [12] and sn["unique_params"] == 305_034 + 12 * 10 * 5 * 64 + 6 * 2 * 2 * 64
  assert rows[labels["scalenet"]][1:4] == ["12", f"{sn['params']:,}", f"{sn['unique_params']:,}"]
  for name, r in record.items():
    assert 0 <= r["top1"] <= r["top5"] <= 1 and r["images"] == 10 * 128, name
  # It grew the released base, whose provenance the report states; that base, loaded from its release
  # file, scores what a converged base scores (>= 85 %) on the held-out minival before any fine-tuning.
  _, meta = release.read(RELEASED_VIT)
  assert f"top-1 {meta['top1'] * 100:.2f}% on test after 1,769,984 training images" in report
  assert record["further_s0"]["top1_init"] >= 0.85 and "top1_init" not in record["scratch_s0"]
  assert rows[labels["further"]][6] == f"{10 * 128 / 1_769_984:.1%}"  # of the base's budget
  # Run again: everything is in the record, nothing trains.
  again = _demo("--quick", "--workdir", str(tmp_path))
  assert again.returncode == 0 and "7 runs recorded" in again.stdout and "; 0 to go" in again.stdout


def test_demo_user_errors_are_one_line(tmp_path):
  missing = _demo("--base", str(tmp_path / "nope.safetensors"), "--workdir", str(tmp_path / "w"))
  assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0, missing.stderr
  assert "released base not found" in missing.stderr and "--pretrain" in missing.stderr
  assert not (tmp_path / "w").exists()


def test_pretrain_plan_trains_the_base_in_the_workdir_first(tmp_path):
  plan = study.Study(f"{GROW}:demo,pretrain=1,quick=1,seed=2", str(tmp_path)).plan
  base, *grown = plan["runs"]
  assert base["name"] == "base_s2" and base["release"] == f"{tmp_path}/base_s2.safetensors"
  assert [r["arm"] for r in grown] == ARMS and plan["phases"] == ["base", "grow"]
  for r in grown:
    from_base = r["arm"] != "scratch"
    assert (r.get("needs") == "base_s2") == from_base and (f"base={base['release']}" in r["arg"]) == from_base
  assert plan["record"] == f"{tmp_path}/record.json" and plan["report"] == f"{tmp_path}/report.md"


def test_a_swin_base_grows_by_its_recipe(tmp_path):
  """A Swin release grows as the paper's Swin recipe says: its last stage doubled with the stack mapping,
  adapters + norms + head trainable; the baselines add one block to stage 1; scratch trains it all."""
  s = study.Study(f"{GROW}:demo,base={RELEASED_SWIN}", str(tmp_path))
  counts = {r["arm"]: study.counts_of(s.config(r)) for r in s.plan["runs"]}
  grown, scratch = counts["scalenet"], counts["scratch"]
  assert grown["depths"] == scratch["depths"] == [2, 2, 4] and counts["stack"]["depths"] == [2, 3, 2]
  assert grown["trainable_params"] < grown["unique_params"] < scratch["unique_params"]
  assert scratch["trainable_params"] == scratch["unique_params"]
  cfg = s.config(next(r for r in s.plan["runs"] if r["arm"] == "scalenet"))
  assert cfg.expansion.mapping == "stack" and cfg.init_from == str(RELEASED_SWIN) and cfg.data.pad == 2


def _release_like(path, config: str, **timm_kwargs):
  """A file with the release metadata of a study base trained by `config` (one dummy tensor: the demo's
  plan reads only the metadata); the ViT architecture fields as timm spells them."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  kwargs = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=12, num_heads=4)
  meta = dict(model="vit_micro_patch4_28", timm_kwargs={**kwargs, **timm_kwargs}, config=config, steps=100)
  meta.update(top1=0.5, eval_split="test", mean=[0.286], std=[0.353], pad=0)
  save_file({"x": np.zeros(1, np.float32)}, path, metadata=release.encode_metadata(meta))
  return path


def test_a_release_grows_by_the_study_family_of_its_architecture(tmp_path):
  """The family is the one whose base has the release's model and timm arguments (its metadata): a 3-block
  patch-4 base grows by the vit3 recipe (3 -> 6 blocks), a study base by the family that trained it;
  a 12-block ViT is no family's base and is refused before anything runs."""
  vit3 = _release_like(tmp_path / "vit3.safetensors", "", depth=3)
  s = study.Study(f"{GROW}:demo,base={vit3}", str(tmp_path / "vit3"))
  grown = s.config(next(r for r in s.plan["runs"] if r["arm"] == "scalenet"))
  assert (grown.model.depth, grown.model.patch_size) == (3, None)  # None: the registry model's patch 4
  assert study.counts_of(grown)["depths"] == [6]
  # Two families share the patch-7 3-block architecture; a study base grows by the family that trained it.
  for family, crops in (("vit3_p7", 0), ("vit3_p7_crops", 2)):
    trained_by = f"configs/grow_study.py:{family},run=base,seed=0"
    base = _release_like(tmp_path / f"{family}.safetensors", trained_by, depth=3, patch_size=7)
    s = study.Study(f"{GROW}:demo,base={base}", str(tmp_path / family))
    grown = s.config(next(r for r in s.plan["runs"] if r["arm"] == "scalenet"))
    assert (grown.model.patch_size, grown.data.crop_padding) == (7, crops), family
  deep = _release_like(tmp_path / "deep.safetensors", "configs/grow_study.py:vit,run=deep,seed=0")
  with pytest.raises(study.ConfigError, match="holds a 'vit_micro_patch4_28' base of no study family"):
    study.Study(f"{GROW}:demo,base={deep}", str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
