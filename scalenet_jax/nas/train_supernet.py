"""Super-supernet training (one sampled path per step) and stand-alone training of searched networks.

Both run through the project's generic sharded train step (`train/step.py`), Orbax checkpoints
(`train/checkpoint.py`) and the deterministic data sources (`data/`):

* `train_supernet(config, workdir) -> params`: at step s the path (α, S) is
  `sampling.sample_path(space, config.sampling, config.seed, s)`; its masks go to the model as
  `batch['model_kwargs']['path']` (replicated numpy arrays) and the images of the step are produced at
  the path's resolution S.r by the host pipeline (a resolution is a different image shape, so
  `jax.jit` compiles one program per resolution and reuses it for every path of that resolution).
  Data order, augmentation, path and rng are pure functions of (seed, step), so a run killed and
  resumed from its last checkpoint ends bit-identical to an uninterrupted one.
* `train_standalone(config, workdir, arch) -> dict`: trains `PathNet(arch)` (BatchNorm running
  averages kept in `TrainState.model_state`) and evaluates it on `config.data.eval_split`.

Parameters are built on the host (`supernet.init_params`; compiling the init of this many-branch
network costs over a minute on CPU) and placed into the state's shardings; the train state itself
(optimizer slots, step, rng) comes from `step.create_train_state` with a trivial all-zeros init.
These CNNs are small (a few M parameters), so one host copy of the params is harmless.

Config: `supernet_config()` below lists every field (the files in `configs/nas_*` override them).

```python
params = train_supernet(supernet_config(space='fmnist', steps=2000), '/tmp/supernet')
```
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Callable

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

from scalenet_jax import config_lib
from scalenet_jax import data as data_lib
from scalenet_jax import jax_utils
from scalenet_jax.nas import sampling
from scalenet_jax.nas.space import Arch, SearchSpace, apply_scaling, get_space
from scalenet_jax.nas.supernet import PathNet, SuperNet, init_pathnet, init_supernet, path_arrays
from scalenet_jax.train import checkpoint as ckpt_lib
from scalenet_jax.train import optim
from scalenet_jax.train import sharding as sh
from scalenet_jax.train import step as step_lib
from scalenet_jax.train.trainer import TrainingDiverged, Writer
from scalenet_jax.jax_utils import print0 as _log

# Weight decay of the official recipe: convolutions (SE 1×1 convs included) 2×, the classifier 1×,
# BatchNorm and every bias 0.
CONV_PARAMS = r"(^|/)(stem|expand|dw\d+|project|head|se_reduce|se_expand)$"
NO_DECAY = (r"(^|/)bias$", r"_bias$", r"(^|/)scale$", r"(^|/)bn_[^/]*/")


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------
def supernet_config(space: str = "fmnist", in_channels: int = 1, **overrides) -> ml_collections.ConfigDict:
  """Every field of a supernet (or stand-alone) training run on the registered search space `space`
  ('fmnist' | 'tiny' take `in_channels`; 'imagenet' is RGB). Defaults are the Fashion-MNIST recipe."""
  c = ml_collections.ConfigDict()
  c.pipeline = "nas_supernet"
  c.seed = 0
  c.space = ml_collections.ConfigDict(
      {"name": space, "kwargs": {} if space == "imagenet" else {"in_channels": in_channels}}
  )
  c.sampling = "hss"  # hss | hss_uniform | uniform (sampling.METHODS)
  c.eta = "width"  # HSS stage weights: width | uniform
  c.data = config_lib.data_config(
      name="fashion_mnist",
      train_split="train_minus_minival",
      eval_split="minival",
      recipe="simple",
      pad=2,
      crop_padding=4,
      hflip=True,
      mean=data_lib.preprocess.FASHION_MNIST_MEAN,
      std=data_lib.preprocess.FASHION_MNIST_STD,
      minival_per_class=50,
  )
  c.optim = optim.default_config()
  c.optim.update(
      dict(
          name="sgd",
          lr=0.12,
          momentum=0.9,
          nesterov=True,
          weight_decay=4e-5,
          no_decay=list(NO_DECAY),
          wd_mults=[[CONV_PARAMS, 2.0]],
          warmup_steps=100,
      )
  )
  c.optim.total_steps = config_dict.placeholder(int)  # filled from steps when unset
  c.batch_size = 128
  c.eval_batch_size = 250
  c.steps = 2000
  c.label_smoothing = 0.1
  c.log_every = 100
  c.ckpt_every = 500
  c.keep_checkpoints = 2
  c.mesh_data = -1
  c.mesh_model = 1
  c.sharding = "replicate"
  c.xla_opt_level = -1  # 1 compiles CPU steps ~3x faster (short runs)
  c.quick = False
  for k, v in overrides.items():
    if k not in c:
      raise KeyError(f"unknown supernet config field {k!r}")
    c[k] = v
  return c


def space_of(config) -> SearchSpace:
  return get_space(config.space.name, **dict(config.space.kwargs))


def optim_config(config) -> dict:
  cfg = config.optim.to_dict()
  if cfg["total_steps"] is None:
    cfg["total_steps"] = max(config.steps // cfg["grad_accum_steps"], cfg["warmup_steps"] + 1)
  return cfg


# ----------------------------------------------------------------------------------------------------
# Input
# ----------------------------------------------------------------------------------------------------
def preprocess_at(data_cfg, r: int, in_channels: int) -> data_lib.Preprocess:
  """The preprocessing recipe producing r×r inputs: 'swin' = RandomResizedCrop + flip at r (the
  ScaleNet ImageNet recipe: no RandAugment, no erasing); 'simple' = pad, resize to r, crop + flip."""
  d = data_cfg
  if d.recipe == "swin":
    return data_lib.imagenet_swin_preprocess(r, mean=tuple(d.mean), std=tuple(d.std), randaug_num_ops=0, reprob=0.0)
  if d.recipe not in ("simple", "none"):
    raise ValueError(f"data.recipe must be 'simple', 'swin' or 'none' for NAS training, got {d.recipe!r}")
  aug = d.recipe == "simple"
  return data_lib.Preprocess(
      img_size=r,
      recipe="simple",
      pad=d.pad,
      to_rgb=in_channels == 3,
      mean=tuple(d.mean),
      std=tuple(d.std),
      crop_padding=d.crop_padding if aug else 0,
      hflip=d.hflip and aug,
  )


def open_source(data_cfg, split: str):
  kw = {"root": data_cfg.root} if data_cfg.root and data_cfg.name == "fashion_mnist" else {}
  return data_lib.get_source(data_cfg.name, split, minival_per_class=data_cfg.minival_per_class, **kw)


def step_batches(
    source,
    data_cfg,
    global_batch: int,
    seed: int,
    start: int,
    num_steps: int,
    in_channels: int,
    plan: Callable[[int], tuple[int, dict | None]],
):
  """Iterator of step batches `{'images', 'labels'[, 'model_kwargs']}` for steps start.. (this host's rows).

  `plan(step) -> (resolution, model_kwargs or None)` chooses the step's image size and model inputs;
  example order and augmentation are those of `data.train_batches` (pure functions of seed and step)."""
  rows = data_lib.host_slice(global_batch, jax.process_index(), jax.process_count())
  n, labels = len(source), source.labels
  data_lib.steps_per_epoch(n, global_batch)  # fail now, not in a worker thread
  preps = {}

  def load(step: int) -> dict:
    r, kwargs = plan(step)
    if r not in preps:  # a benign race between loader threads builds an identical Preprocessor twice
      preps[r] = data_lib.Preprocessor(source, preprocess_at(data_cfg, r, in_channels), train=True)
    idx, epoch = data_lib.global_batch_indices(n, global_batch, seed, step)
    idx = idx[rows]
    out = {"images": preps[r](idx, seed, epoch), "labels": labels[idx].astype(np.int32)}
    if kwargs is not None:
      out[sh.MODEL_KWARGS] = kwargs
    return out

  read = grain.ReadOptions(num_threads=data_cfg.num_threads, prefetch_buffer_size=4)
  return iter(grain.MapDataset.range(start, start + num_steps).map(load).to_iter_dataset(read))


def path_plan(space: SearchSpace, method: str, seed: int, eta="width"):
  """`plan(step)` for supernet training: the sampled path's resolution and masks."""

  def plan(step):
    alpha, S = sampling.sample_path(space, method, seed, step, eta)
    return int(S.r), {"path": path_arrays(apply_scaling(alpha, S, space), space)}

  return plan


# ----------------------------------------------------------------------------------------------------
# The shared loop
# ----------------------------------------------------------------------------------------------------
def _fit(
    config,
    workdir: str,
    model,
    host_variables: Callable[[], dict],
    abstract_variables: dict,
    batches_from: Callable[[int], object],
    tag: str,
):
  """Trains `model` for `config.steps` (resuming from `workdir`); returns (final state, info dict).

  `host_variables()` gives the initial variables {'params'[, 'batch_stats']} (only called on a fresh
  start); `batches_from(start)` the step batches from step `start`; `tag` is mixed into the checkpoint
  fingerprint so that a workdir of another space / sampling method is refused."""
  os.makedirs(workdir, exist_ok=True)
  mesh = sh.make_mesh(config.mesh_data, config.mesh_model)
  if config.batch_size % mesh.shape["data"]:
    raise ValueError(f"batch_size={config.batch_size} is not divisible by the {mesh.shape['data']} data devices")
  abstract_params = abstract_variables["params"]
  ocfg = optim_config(config)
  tx = optim.make_optimizer(ocfg, abstract_params)
  zeros = lambda _: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract_variables)
  state, shardings = step_lib.create_train_state(zeros, tx, mesh, jax.random.key(config.seed), mode=config.sharding)
  fingerprint = hashlib.sha256((ckpt_lib.fingerprint(abstract_variables) + tag).encode()).hexdigest()[:16]
  ckpt = ckpt_lib.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  restored = ckpt.restore_into(state, shardings, fingerprint)
  if restored is not None:
    start, state = restored
    _log(f"resumed {workdir} at step {start}")
  else:
    start, init = 0, dict(host_variables())
    params = jax.device_put(init.pop("params"), shardings.params)
    ms = jax.device_put(init, shardings.model_state) if init else None
    state = state.replace(params=params, model_state=ms)

  xla = jax_utils.compile_options(config.xla_opt_level)
  train_step = step_lib.make_train_step(
      step_lib.flax_apply_fn(model),
      tx,
      mesh,
      shardings,
      lr_fn=optim.make_train_lr_fn(ocfg),
      label_smoothing=config.label_smoothing,
      compiler_options=xla,
  )
  meta = {"fingerprint": fingerprint, "model": tag}
  info = {"steps": config.steps, "start_step": start}
  writer = Writer(workdir)
  first_bad = jnp.asarray(-1, jnp.int32)
  t0, last_good = time.perf_counter(), start
  try:
    batches = batches_from(start)
    for step in range(start, config.steps):
      state, metrics = train_step(state, sh.make_global_batch(next(batches), mesh))
      first_bad = jnp.where((first_bad < 0) & ~metrics["is_finite"], step + 1, first_bad)
      done = step + 1
      is_log = done % config.log_every == 0 or done == config.steps
      is_ckpt = bool(config.ckpt_every) and done % config.ckpt_every == 0
      if (is_log or is_ckpt) and int(first_bad) >= 0:
        raise TrainingDiverged(
            f"loss became NaN/inf at step {int(first_bad)}; last good checkpoint is step " f"{last_good} in {workdir}"
        )
      if is_log:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        m["elapsed_sec"] = time.perf_counter() - t0
        writer.write(done, m)
        _log(
            f"[{tag}] step {done}/{config.steps} loss {m['loss']:.4f} acc {m['accuracy']:.3f} "
            f"lr {m.get('lr', 0):.3g} {m['elapsed_sec']:.0f}s"
        )
      if is_ckpt:
        ckpt.save(done, state, meta, force=True)
        last_good = done
    if config.steps > start and last_good != config.steps:
      ckpt.save(config.steps, state, meta, force=True)
    jax.block_until_ready(state)
  finally:
    ckpt.wait()
    ckpt.close()
    writer.close()
  info["train_sec"] = time.perf_counter() - t0
  return state, shardings, mesh, info


# ----------------------------------------------------------------------------------------------------
# Supernet
# ----------------------------------------------------------------------------------------------------
def abstract_supernet(model: SuperNet) -> dict:
  sp = model.space
  images = jax.ShapeDtypeStruct((2, sp.base_resolution, sp.base_resolution, sp.in_channels), jnp.float32)
  from scalenet_jax.nas.supernet import supernet_arch  # pylint: disable=g-import-not-at-top

  path = path_arrays(supernet_arch(sp), sp)
  return jax.eval_shape(lambda k: model.init(k, images, path=path), jax.random.key(0))


def train_supernet(config, workdir: str):
  """Trains (or resumes) the super-supernet of `config.space` with one sampled path per step; returns
  the final params (device arrays). See the module docstring."""
  if config.sampling not in sampling.METHODS:
    raise ValueError(f"unknown sampling method {config.sampling!r}; known: {sampling.METHODS}")
  space = space_of(config)
  source = open_source(config.data, config.data.train_split)
  model = SuperNet(space)
  plan = path_plan(space, config.sampling, config.seed, config.eta)
  tag = f"supernet/{space.name}/{space.in_channels}ch/{config.sampling}/{config.eta}"
  state, *_ = _fit(
      config,
      workdir,
      model,
      lambda: {"params": init_supernet(model, config.seed)},
      abstract_supernet(model),
      lambda start: step_batches(
          source, config.data, config.batch_size, config.seed, start, config.steps - start, space.in_channels, plan
      ),
      tag,
  )
  return state.params


# ----------------------------------------------------------------------------------------------------
# Stand-alone network
# ----------------------------------------------------------------------------------------------------
def eval_sources(data_cfg, split: str, r: int, in_channels: int, batch_size: int):
  """Every example of `split` once, preprocessed for evaluation at r×r, as step batches with 'mask'."""
  source = open_source(data_cfg, split)
  prep = preprocess_at(data_cfg, r, in_channels)
  for b in data_lib.eval_batches(source, batch_size, preprocess=prep, num_threads=data_cfg.num_threads):
    yield {"images": b["image"], "labels": b["label"], "mask": b["mask"].astype(np.float32)}


def train_standalone(config, workdir: str, arch: Arch) -> dict:
  """Trains `PathNet(arch)` stand-alone (BN running averages) and evaluates it on
  `config.data.eval_split`; returns {'top1', 'eval_loss', 'train_sec', ...} (also in result.json)."""
  model = PathNet(arch)
  images = jax.ShapeDtypeStruct((2, arch.resolution, arch.resolution, arch.in_channels), jnp.float32)
  abstract = jax.eval_shape(lambda k: model.init(k, images), jax.random.key(0))
  source = open_source(config.data, config.data.train_split)
  plan = lambda step: (arch.resolution, None)
  tag = "standalone/" + hashlib.sha256(repr(arch).encode()).hexdigest()[:12]
  state, shardings, mesh, info = _fit(
      config,
      workdir,
      model,
      lambda: init_pathnet(arch, config.seed),
      abstract,
      lambda start: step_batches(
          source, config.data, config.batch_size, config.seed, start, config.steps - start, arch.in_channels, plan
      ),
      tag,
  )
  xla = jax_utils.compile_options(config.xla_opt_level)
  eval_step = step_lib.make_eval_step(step_lib.flax_apply_fn(model), mesh, shardings, compiler_options=xla)
  sums = None
  for b in eval_sources(config.data, config.data.eval_split, arch.resolution, arch.in_channels, config.eval_batch_size):
    out = eval_step(state, sh.make_global_batch(b, mesh))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  n = float(sums["count"])
  info.update(
      top1=float(sums["correct1"]) / n,
      eval_loss=float(sums["loss_sum"]) / n,
      eval_examples=int(n),
      eval_split=config.data.eval_split,
  )
  info["variables"] = {"params": state.params, **(state.model_state or {})}
  return info
