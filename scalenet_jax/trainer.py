"""The image-model trainer behind `python -m scalenet_jax.main` (pipeline 'train').

config -> `builder` (model, initial params, trainable set) -> `train.loop.Task` -> `train.loop.Loop`
(restore-or-init, train, checkpoints) -> evaluation and export. Restore order: this workdir's latest good
checkpoint -> `config.init_from` (+ expansion) -> fresh init.

Modes: 'train' (resumes), 'eval' (the workdir's latest checkpoint, or the initial params when it has none),
'export' (the same params as an Orbax params dir + timm-named `model.safetensors` under `<workdir>/export`).
"""

from __future__ import annotations

import json

import jax
import numpy as np
import safetensors.numpy

from scalenet_jax import builder, config_lib, convert, counting, paths
from scalenet_jax.data import from_config
from scalenet_jax.errors import ConfigError
from scalenet_jax.jax_utils import print0
from scalenet_jax.train import checkpoint as ckpt_lib
from scalenet_jax.train import loop as loop_lib
from scalenet_jax.train import step as step_lib

MODES = ("train", "eval", "export")


def batch_transform(config, num_classes):
  """Mixup / CutMix on device (`data.augment`), or None."""
  d = config.data
  if d.mixup <= 0 and d.cutmix <= 0:
    return None
  from scalenet_jax.data import augment  # pylint: disable=g-import-not-at-top

  def transform(rng, batch):
    # Smoothing is applied by the loss (cross_entropy), so mixup produces unsmoothed targets.
    images, labels = augment.mixup_cutmix(
        rng,
        batch["images"],
        batch["labels"],
        num_classes,
        float(d.mixup),
        float(d.cutmix),
        d.mixup_switch_prob,
        label_smoothing=0.0,
    )
    return {**batch, "images": images, "labels": labels}

  return transform


def export(workdir, model, params) -> dict:
  """Final params as an Orbax directory and as timm-named safetensors (through epath: gs:// works)."""
  out = paths.path(workdir) / "export"
  host = jax.device_get(params)
  ckpt_lib.export_params(out / "params", host, overwrite=True)
  if jax.process_index() == 0:
    tensors = {k: np.ascontiguousarray(v) for k, v in convert.flax_to_timm(host, model).items()}
    paths.write_bytes(out / "model.safetensors", safetensors.numpy.save(tensors))
  return {"export": str(out)}


def make_task(config, workdir, mode: str):
  """(task, init-eval batches, info) of a run; data sources are opened first so a missing dataset fails
  fast (none for modes 'export' and 'compile')."""
  model = builder.build_model(config)
  cfg = model.config
  d = config.data
  shape = (cfg.img_size, cfg.img_size, cfg.in_chans)
  open_split = lambda split: from_config.open_source(
      d, split, cache_dir=workdir, image_shape=shape, num_classes=cfg.num_classes
  )
  eval_source = open_split(d.eval_split) if mode in ("train", "eval") else None
  train_source = open_split(d.train_split) if mode == "train" else None
  init_eval_source = eval_source
  if mode == "train" and config.eval_at_init and config.init_eval_split:
    init_eval_source = open_split(config.init_eval_split)

  abstract = model.abstract_params()
  mask = builder.trainable_mask(config, abstract)
  prep = from_config.preprocess(d, cfg.img_size, cfg.in_chans)
  x = model.input_spec()
  task = loop_lib.Task(
      apply_fn=step_lib.flax_apply_fn(model),
      abstract_variables={"params": abstract},
      batches=lambda start: from_config.train_stream(
          d, train_source, prep, config.batch_size, config.seed, start, config.steps - start
      ),
      init_fn=lambda rng: model.init(rng, jax.numpy.zeros(x.shape, x.dtype)),
      initial_variables=(lambda: {"params": builder.initial_params(config)[1]})
      if builder.needs_initial_params(config)
      else None,
      tag=f"train/{config.model.name}",
      trainable_mask=mask,
      batch_transform=batch_transform(config, cfg.num_classes),
      compute_dtype=builder.compute_dtype(config),
      use_ema=config.ema_decay > 0,
      # Compile mode opens no data but compiles the eval step that training runs.
      eval_batches=(lambda: from_config.eval_stream(d, eval_source, prep, config.eval_batch_size))
      if eval_source is not None or mode == "compile"
      else None,
      export=lambda state: export(workdir, model, state.params),
      meta={"model": config.model.name},
      input_specs=lambda n: {"": (model.input_spec(n), None)},
  )
  init_eval_batches = lambda: from_config.eval_stream(d, init_eval_source, prep, config.eval_batch_size)
  info = {"params": counting.count_params(abstract), "trainable_params": builder.count_trainable(abstract, mask)}
  return task, init_eval_batches, info


def eval_at_init(loop, batches, split: str) -> dict:
  """Metrics of the starting params (e.g. an expanded model before fine-tuning, doc §6), computed once
  and kept in `<workdir>/init_eval.json` (a resumed run reads it back)."""
  path = loop.workdir / "init_eval.json"
  if not path.exists():
    if loop.start != 0:
      raise ConfigError(f"eval_at_init: {path} is missing but the run resumes at step {loop.start}")
    ev = loop.evaluate(batches())
    ev["split"] = split
    if jax.process_index() == 0:
      paths.write_json(path, ev, indent=None)
    return ev
  return paths.read_json(path)


def drive(config, workdir, mode: str, task, info: dict, init_eval=None, on_ready=None) -> dict:
  """Runs a task the way every trainer does: `mode` eval / export of the workdir's latest checkpoint (or
  the initial params), else optional eval at init and training. `init_eval`: `(batches_fn, split)` when
  `config.eval_at_init` is set; `on_ready()` runs once the loop has accepted the workdir (restored or
  initialised). Shared by this trainer and `lm_trainer`."""
  loop = loop_lib.Loop(config, workdir, task)
  if on_ready is not None:
    on_ready()
  result = {"workdir": str(loop.workdir), **info}
  try:
    if mode in ("eval", "export") and loop.start == 0:
      start = "init_from + expansion" if builder.needs_initial_params(config) else "a random init"
      if mode == "export" and not builder.needs_initial_params(config):
        raise ConfigError(f"--mode=export: no checkpoint in {loop.workdir} and no init_from: nothing to export")
      print0(f"no checkpoint in {loop.workdir}: {mode} uses the initial params ({start})")
    if mode == "eval":
      result.update(loop.evaluate())
      print0(json.dumps(result))
      return result
    if mode == "export":
      result.update(task.export(loop.state))
      print0(f"exported step {loop.start} of {loop.workdir} to {result['export']}")
      return result
    if init_eval is not None:
      result["init_eval"] = eval_at_init(loop, *init_eval)
      print0(f"  eval at init: {loop.objective.describe(result['init_eval'])}")
    result.update(loop.train())
  finally:
    loop.close()
  print0(f"done: {loop.objective.describe(result)} ({workdir})")
  return result


def run(config, workdir, mode: str = "train") -> dict:
  if mode not in MODES:
    raise ConfigError(f"unknown mode {mode!r} for the trainer; choose one of {MODES}")
  config = config_lib.resolve(config)
  task, init_eval_batches, info = make_task(config, workdir, mode)
  split = config.init_eval_split or config.data.eval_split
  return drive(config, workdir, mode, task, info, (init_eval_batches, split) if config.eval_at_init else None)
