"""The trainer behind `scalenet_jax.main`: one straight script in banner-divided sections.

Restore order: this workdir's latest good checkpoint -> `config.init_from` (+ expansion) -> fresh
init. Data order and randomness are pure functions of (seed, step), so a run killed at any point and
restarted from its last checkpoint ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from scalenet_jax import builder, convert, counting
from scalenet_jax import data as data_lib
from scalenet_jax.train import checkpoint as ckpt_lib
from scalenet_jax.train import distributed, optim
from scalenet_jax.train import sharding as sh
from scalenet_jax.train import step as step_lib
from scalenet_jax import jax_utils
from scalenet_jax.jax_utils import print0 as _log


class TrainingDiverged(RuntimeError):
  pass


# ----------------------------------------------------------------------------------------------
# Input
# ----------------------------------------------------------------------------------------------
def preprocess_of(config, model) -> data_lib.Preprocess:
  d, cfg = config.data, model.config
  if d.recipe == "swin":
    return data_lib.imagenet_swin_preprocess(cfg.img_size, mean=tuple(d.mean), std=tuple(d.std))
  return data_lib.Preprocess(
      img_size=cfg.img_size,
      recipe="simple",
      pad=d.pad,
      to_rgb=cfg.in_chans == 3 and len(d.mean) == 3,
      mean=tuple(d.mean),
      std=tuple(d.std),
      crop_padding=d.crop_padding if d.recipe == "simple" else 0,
      hflip=d.hflip and d.recipe == "simple",
  )


def source_of(config, split):
  d = config.data
  kw = {"root": d.root} if d.root and d.name == "fashion_mnist" else {}
  if d.name == "synthetic":  # smoke tests: images shaped like the model's input, its number of classes
    cfg = builder.base_model(config).config
    kw = dict(
        num_examples=d.synthetic_examples,
        num_classes=cfg.num_classes,
        image_shape=(cfg.img_size, cfg.img_size, cfg.in_chans),
    )
  return data_lib.get_source(d.name, split, minival_per_class=d.minival_per_class, **kw)


def _to_step_batch(b):
  out = {"images": b["image"], "labels": b["label"]}
  if "mask" in b:
    out["mask"] = b["mask"].astype(np.float32)
  return out


def batch_transform_of(config, num_classes):
  d = config.data
  if d.mixup <= 0 and d.cutmix <= 0:
    return None
  from scalenet_jax.data import augment

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


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
def evaluate(eval_step, state, config, model, mesh, split: Optional[str] = None, source=None) -> dict:
  source = source or source_of(config, split or config.data.eval_split)
  sums = None
  for b in data_lib.eval_batches(
      source,
      config.eval_batch_size,
      preprocess=preprocess_of(config, model),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      num_threads=config.data.num_threads,
  ):
    out = eval_step(state, sh.make_global_batch(_to_step_batch(b), mesh))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  n = float(sums["count"])
  return {
      "top1": float(sums["correct1"]) / n,
      "top5": float(sums["correct5"]) / n,
      "eval_loss": float(sums["loss_sum"]) / n,
      "eval_examples": int(n),
  }


# ----------------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------------
class Writer:
  """metrics.jsonl + TensorBoard event files in the workdir (process 0 only)."""

  def __init__(self, workdir):
    self.active = jax.process_index() == 0
    if self.active:
      from tensorboardX import SummaryWriter

      self.tb = SummaryWriter(os.path.join(workdir, "tb"))
      self.f = open(os.path.join(workdir, "metrics.jsonl"), "a")

  def write(self, step, metrics: dict):
    if not self.active:
      return
    self.f.write(json.dumps({"step": int(step), **metrics}) + "\n")
    self.f.flush()
    for k, v in metrics.items():
      if isinstance(v, (int, float)):
        self.tb.add_scalar(k, v, int(step))

  def close(self):
    if self.active:
      self.f.close()
      self.tb.close()


# ----------------------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------------------
def run(config, workdir: str, mode: str = "train") -> dict:
  distributed.maybe_initialize()
  os.makedirs(workdir, exist_ok=True)

  # ---- Mesh
  mesh = sh.make_mesh(config.mesh_data, config.mesh_model)
  data_size = mesh.shape["data"]
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % data_size:
      raise ValueError(f"{name}={config[name]} is not divisible by the {data_size} devices of the mesh's data axis")

  # ---- Data sources, opened before the (slow) model init so a missing/broken dataset fails fast
  eval_source = source_of(config, config.data.eval_split) if mode in ("train", "eval") else None
  train_source = source_of(config, config.data.train_split) if mode == "train" else None
  init_eval_source = eval_source
  if mode == "train" and config.eval_at_init and config.init_eval_split:
    init_eval_source = source_of(config, config.init_eval_split)

  # ---- Model & optimizer
  model = builder.build_model(config)
  abstract_params = convert.abstract_params(model)
  patterns = builder.trainable_patterns(config)
  optim_cfg = config.optim.to_dict()
  if optim_cfg["total_steps"] is None:
    optim_cfg["total_steps"] = max(config.steps // optim_cfg["grad_accum_steps"], optim_cfg["warmup_steps"] + 1)
  optim_cfg["trainable"] = list(patterns) if patterns != (".*",) else "all"
  tx = optim.make_optimizer(optim_cfg, abstract_params)
  mask = builder.trainable_mask(config, abstract_params)
  cfg = model.config
  dummy = jnp.zeros((1, cfg.img_size, cfg.img_size, cfg.in_chans), jnp.float32)
  use_ema = config.ema_decay > 0
  state, shardings = step_lib.create_train_state(
      lambda r: model.init(r, dummy), tx, mesh, jax.random.key(config.seed), mode=config.sharding, use_ema=use_ema
  )
  fingerprint = ckpt_lib.fingerprint(abstract_params)
  info = {
      "params": counting.count_params(abstract_params),
      "trainable_params": builder.count_trainable(abstract_params, mask),
  }

  # ---- Restore: own checkpoint, else pretrained/expanded init
  ckpt = ckpt_lib.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  restored = ckpt.restore_into(state, shardings, fingerprint)
  if restored is not None:
    start, state = restored
    _log(f"resumed from {workdir} at step {start}")
  else:
    start = 0
    if config.init_from or builder.expansion_spec(config) is not None:
      built, params = builder.initial_params(config, config.seed, fresh=jax.device_get(state.params))
      if ckpt_lib.fingerprint(convert.abstract_params(built)) != fingerprint:
        raise ValueError("initial params do not match the model built from the config")
      params = jax.device_put(params, shardings.params)
      state = state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params) if use_ema else None)

  compute_dtype = builder.DTYPES[config.model.dtype]
  xla = jax_utils.compile_options(config.xla_opt_level)
  eval_step = step_lib.make_eval_step(
      step_lib.flax_apply_fn(model), mesh, shardings, compute_dtype=compute_dtype, use_ema=use_ema, compiler_options=xla
  )
  result = {"workdir": workdir, **info}
  if mode == "eval":
    result.update(evaluate(eval_step, state, config, model, mesh, source=eval_source))
    _log(json.dumps(result))
    return result
  if mode == "export":
    return {**result, **export(workdir, model, state.params)}

  if config.eval_at_init:  # e.g. the accuracy of an expanded model before fine-tuning (doc §6)
    path = os.path.join(workdir, "init_eval.json")
    if start == 0 or not os.path.exists(path):
      if start != 0:
        raise ValueError(f"eval_at_init: {path} is missing but the run resumes at step {start}")
      init_eval = evaluate(eval_step, state, config, model, mesh, source=init_eval_source)
      init_eval["split"] = config.init_eval_split or config.data.eval_split
      if jax.process_index() == 0:
        with open(path, "w") as f:
          json.dump(init_eval, f)
    with open(path) as f:
      result["init_eval"] = json.load(f)
    _log(f"  eval at init: top1 {result['init_eval']['top1']:.4f}")

  # ---- Update step
  train_step = step_lib.make_train_step(
      step_lib.flax_apply_fn(model),
      tx,
      mesh,
      shardings,
      trainable_mask=mask,
      lr_fn=optim.make_train_lr_fn(optim_cfg),
      grad_accum_steps=optim_cfg["grad_accum_steps"],
      label_smoothing=config.label_smoothing,
      ema_decay=config.ema_decay if use_ema else None,
      batch_transform=batch_transform_of(config, cfg.num_classes),
      compute_dtype=compute_dtype,
      compiler_options=xla,
  )

  # ---- Loop
  batches = data_lib.train_batches(
      train_source,
      config.batch_size,
      config.seed,
      start_step=start,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      preprocess=preprocess_of(config, model),
      num_steps=max(config.steps - start, 0),
      num_threads=config.data.num_threads,
  )
  writer = Writer(workdir)
  progress = _progress(config.steps, start)
  first_bad = jnp.asarray(-1, jnp.int32)  # device-side: first step with a non-finite loss (no per-step sync)
  t_compile = t_loop = None
  timed_steps = 0
  last_good = start
  try:
    for step in range(start, config.steps):
      batch = sh.make_global_batch(_to_step_batch(next(batches)), mesh)
      t0 = time.perf_counter()
      state, metrics = train_step(state, batch)
      first_bad = jnp.where((first_bad < 0) & ~metrics["is_finite"], step + 1, first_bad)
      if step == start:
        jax.block_until_ready(metrics)
        t_compile = time.perf_counter() - t0
        t_loop, timed_steps = time.perf_counter(), 0
      else:
        timed_steps += 1
      done = step + 1
      is_log = done % config.log_every == 0 or done == config.steps
      is_ckpt = config.ckpt_every and done % config.ckpt_every == 0
      if is_log or is_ckpt:
        bad = int(first_bad)
        if bad >= 0:
          raise TrainingDiverged(
              f"loss became NaN/inf at step {bad}; stopped, last good checkpoint is step " f"{last_good} in {workdir}"
          )
      if is_log:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        rate = timed_steps / (time.perf_counter() - t_loop) if timed_steps else 0.0
        m.update(steps_per_sec=rate, images_per_sec=rate * config.batch_size)
        writer.write(done, m)
        progress(done, m)
      if is_ckpt:
        ckpt.save(done, state, {"fingerprint": fingerprint, "model": config.model.name}, force=True)
        last_good = done
      if config.eval_every and done % config.eval_every == 0 and done != config.steps:
        ev = evaluate(eval_step, state, config, model, mesh, source=eval_source)
        writer.write(done, ev)
        _log(f"  eval @ {done}: top1 {ev['top1']:.4f} top5 {ev['top5']:.4f}")
    if config.steps > start:
      jax.block_until_ready(state)
      if timed_steps:
        result["sec_per_step"] = (time.perf_counter() - t_loop) / timed_steps
      result["compile_sec"] = t_compile
      if last_good != config.steps:
        ckpt.save(config.steps, state, {"fingerprint": fingerprint, "model": config.model.name}, force=True)
    ev = evaluate(eval_step, state, config, model, mesh, source=eval_source)
    writer.write(config.steps, ev)
  finally:
    ckpt.wait()
    ckpt.close()
    writer.close()
  result.update(ev)
  result.update(export(workdir, model, state.params))
  _log(f"done: top1 {ev['top1']:.4f} top5 {ev['top5']:.4f} ({workdir})")
  return result


def export(workdir, model, params) -> dict:
  """Final params as an Orbax directory and as timm-named safetensors."""
  out = os.path.join(workdir, "export")
  os.makedirs(out, exist_ok=True)
  host = jax.device_get(params)
  ckpt_lib.export_params(os.path.join(out, "params"), host, overwrite=True)
  if jax.process_index() == 0:
    convert.save_safetensors(os.path.join(out, "model.safetensors"), convert.flax_to_timm(host, model))
  return {"export": out}


def _progress(total, start):
  """A one-line-per-log progress report with rate and ETA (plain text: works in logs and CI)."""
  t0 = time.perf_counter()

  def show(done, m):
    rate = m.get("steps_per_sec") or 0.0
    eta = (total - done) / rate if rate else float("nan")
    _log(
        f"step {done:>6}/{total} loss {m['loss']:.4f} acc {m['accuracy']:.3f} lr {m.get('lr', 0):.2e} "
        f"{rate:6.2f} it/s eta {eta:6.0f}s elapsed {time.perf_counter() - t0:6.0f}s"
    )

  return show
