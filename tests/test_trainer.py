"""The trainer end to end on the micro ViT: outputs, eval mode, expansion from an export, freezing, divergence.

Runs are in-process (`trainer.run(config, workdir)`) on tiny synthetic data. XLA compilation dominates
their cost, so the module shares a persistent compilation cache: a later run of the same program
(another workdir, eval mode) loads it instead of compiling again.
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from scalenet_jax import builder, convert, trainer
from scalenet_jax.errors import TrainingDiverged
from scalenet_jax.train import checkpoint as ckpt_lib

import helpers
import tiny_runs

TINY = {**tiny_runs.TINY, "steps": 6, "ckpt_every": 3, "optim.warmup_steps": 0}
MICRO_PARAMS = 305034
D = 64  # micro ViT width


def tiny_config(**overrides):
  """vit_micro_patch4_28 with TINY and `overrides` (dotted keys given with '__', e.g. optim__lr)."""
  return tiny_runs.micro_config({**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}})


@pytest.fixture(scope="module", autouse=True)
def compilation_cache():
  """Every program of this module's runs goes to the suite's persistent cache."""
  with tiny_runs.persistent_compile_cache(helpers.suite_cache()):
    yield


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A finished 6-step run of the plain micro ViT: (workdir, result dict)."""
  workdir = tmp_path_factory.mktemp("pretrain")
  return workdir, trainer.run(tiny_config(), str(workdir))


def read_metrics(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def flat(tree):
  return {
      "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
      for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


# ----------------------------------------------------------------------------------------------
# Plain training: outputs, eval mode, learning
# ----------------------------------------------------------------------------------------------
def test_train_writes_metrics_tensorboard_and_exports(pretrained):
  workdir, result = pretrained
  assert result["params"] == result["trainable_params"] == MICRO_PARAMS
  assert result["eval_examples"] == 30 and 0.0 <= result["top1"] <= result["top5"] <= 1.0
  metrics = read_metrics(workdir)
  train = [m for m in metrics if "loss" in m]
  assert [m["step"] for m in train] == list(range(1, 7))
  assert all(math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) for m in train)
  assert metrics[-1]["step"] == 6 and metrics[-1]["top1"] == result["top1"]
  events = list((workdir / "tb").glob("events.out.tfevents.*"))
  assert events and events[0].stat().st_size > 0
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3", "6"]

  # Orbax export and timm-named safetensors hold the same final params; the latter loads strictly.
  params = ckpt_lib.load_params(workdir / "export" / "params")
  model = builder.base_model(tiny_config())
  assert ckpt_lib.fingerprint(params) == ckpt_lib.fingerprint(model.abstract_params())
  state_dict = convert.load_state_dict(str(workdir / "export" / "model.safetensors"))
  from_timm = convert.timm_to_flax(state_dict, model)
  a, b = flat(params), flat(from_timm)
  assert a.keys() == b.keys()
  assert all(np.array_equal(a[k], b[k]) for k in a)


def test_eval_mode_restores_the_run_and_training_learned(pretrained, tmp_path):
  workdir, result = pretrained
  again = trainer.run(tiny_config(), str(workdir), mode="eval")
  for key in ("top1", "top5", "eval_loss"):
    assert again[key] == result[key], key
  # The same evaluation of a fresh (untrained) model: training must have lowered the loss.
  at_init = trainer.run(tiny_config(), str(tmp_path / "fresh"), mode="eval")
  assert result["eval_loss"] < at_init["eval_loss"] - 0.05, (result, at_init)
  assert not (tmp_path / "fresh" / "metrics.jsonl").exists()  # eval mode writes no training logs


# ----------------------------------------------------------------------------------------------
# Expansion from the exported pretrain
# ----------------------------------------------------------------------------------------------
def expanded_config(pretrained, **overrides):
  workdir, _ = pretrained
  return tiny_config(
      expansion__kind="scalenet",
      expansion__rank=4,
      expansion__trainable="adjust_ln_head",
      init_from=str(workdir / "export" / "params"),
      **overrides,
  )


def test_expansion_starts_from_the_pretrained_tensors(pretrained, tmp_path):
  """steps=0: the export is the expanded model at init (what the first train step starts from)."""
  config = expanded_config(pretrained, steps=0)
  result = trainer.run(config, str(tmp_path))
  assert "top1" in result  # the expanded model is a valid network before any fine-tuning
  pre = ckpt_lib.load_params(pretrained[0] / "export" / "params")
  new = ckpt_lib.load_params(tmp_path / "export" / "params")
  for name in ("patch_embed", "cls_token", "pos_embed", "norm", "head"):
    assert jax.tree.all(jax.tree.map(np.array_equal, new[name], pre[name])), name
  # Shared core: the pretrained stacked tensors, held once (not copied per instance).
  assert jax.tree.all(jax.tree.map(np.array_equal, new["blocks"]["core"], pre["blocks"]["core"]))
  layout = builder.build_model(config).stack_layouts[0]
  assert layout.depth == 12
  adapters = 0
  for k, (start, stop, _) in enumerate(layout.segments()):
    seg = new["blocks"][f"seg{k}"]
    src = np.asarray(layout.mapping[start:stop])
    for ln in ("norm1", "norm2"):  # each instance owns a copy of its source layer's LayerNorms
      for leaf in ("scale", "bias"):
        assert np.array_equal(seg[ln][leaf], np.asarray(pre["blocks"]["seg0"][ln][leaf])[src])
    for name, module in seg.items():
      if name.startswith("adapter_"):
        adapters += 1
        assert not np.any(module["B"]["kernel"]), f"seg{k}/{name}/B must start at zero (identity adapter)"
        assert np.any(module["A"]["kernel"])
  assert adapters >= 2


def test_eval_at_init_uses_its_own_split(pretrained, tmp_path):
  """The demo scores the expanded models at init on minival and after fine-tuning on test."""
  config = expanded_config(pretrained, steps=0, eval_at_init=True, init_eval_split="train")
  result = trainer.run(config, str(tmp_path / "run"))
  init = json.loads((tmp_path / "run" / "init_eval.json").read_text())
  assert init["split"] == "train" and result["init_eval"] == init
  # The same (expanded, untrained) params scored on 'train' by eval mode.
  on_train = trainer.run(expanded_config(pretrained, data__eval_split="train"), str(tmp_path / "eval"), mode="eval")
  assert init["eval_examples"] == on_train["eval_examples"] != result["eval_examples"]
  assert (init["top1"], init["eval_loss"]) == (on_train["top1"], on_train["eval_loss"])


def test_frozen_shared_weights_stay_bit_identical(pretrained, tmp_path):
  config = expanded_config(pretrained, steps=3, ckpt_every=0, optim__lr=1e-2)
  result = trainer.run(config, str(tmp_path))
  # Trainable = adapters (12 instances x 10*r*d) + every LayerNorm + head.
  r = 4
  assert result["trainable_params"] == 12 * 10 * r * D + 12 * 4 * D + 2 * D + D * 10 + 10
  pre = flat(ckpt_lib.load_params(pretrained[0] / "export" / "params"))
  new = flat(ckpt_lib.load_params(tmp_path / "export" / "params"))
  frozen = [k for k in new if k.startswith(("blocks/core/", "patch_embed/", "cls_token", "pos_embed"))]
  assert len(frozen) >= 10
  for k in frozen:
    assert np.array_equal(new[k], pre[k]), f"frozen {k} changed"
  # ...while the trainable set did move.
  assert not np.array_equal(new["head/kernel"], pre["head/kernel"])
  assert any(np.any(v) for k, v in new.items() if k.endswith("/B/kernel"))


# ----------------------------------------------------------------------------------------------
# Divergence
# ----------------------------------------------------------------------------------------------
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  # lr 0 at step 0 (warmup from 0), then 1e30: the params blow up and the loss turns NaN/inf.
  config = tiny_config(optim__lr=1e30, optim__warmup_steps=3, ckpt_every=1, steps=6)
  with pytest.raises(TrainingDiverged, match=r"step \d+") as info:
    trainer.run(config, str(tmp_path))
  message = str(info.value)
  bad = int(message.split("at step ")[1].split(";")[0])
  good = int(message.split("checkpoint is step ")[1].split(" ")[0])
  assert 1 <= good < bad
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
  assert steps and max(steps) == good and all(s < bad for s in steps)
  assert not (tmp_path / "export").exists()
  # The kept checkpoint is finite and a restart resumes from it (then diverges again, same step).
  with pytest.raises(TrainingDiverged, match=f"at step {bad};"):
    trainer.run(config, str(tmp_path))
