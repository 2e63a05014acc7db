"""Super-supernet training (one sampled path per step) and stand-alone training of searched networks.

How a step gets its path and images, resumability and the host-side init are described in
`docs/nas.md` §4; `supernet_config()` below lists every config field.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scalenet_jax import config_lib, jax_utils, paths
from scalenet_jax.data import from_config, preprocess as preprocess_lib
from scalenet_jax.errors import ConfigError
from scalenet_jax.nas import sampling
from scalenet_jax.nas.space import Alpha, Arch, Scaling, SearchSpace, apply_scaling, get_space
from scalenet_jax.nas.supernet import (
    BUCKET_FROM_PATH,
    PathNet,
    SuperNet,
    bucket_of,
    embed_params,
    init_pathnet,
    init_supernet,
    path_arrays,
    stack_paths,
    supernet_arch,
)
from scalenet_jax.train import loop as loop_lib
from scalenet_jax.train import optim
from scalenet_jax.train import sharding as sh
from scalenet_jax.train import step as step_lib

# Weight decay of the official recipe: convolutions (SE 1×1 convs included) 2×, the classifier 1×,
# BatchNorm and every bias 0.
CONV_PARAMS = r"(^|/)(stem|expand|dw\d+|project|head|se_reduce|se_expand)$"
NO_DECAY = (r"(^|/)bias$", r"_bias$", r"(^|/)scale$", r"(^|/)bn_[^/]*/")


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------
def supernet_config(space: str = "fmnist", in_channels: int = 1, **overrides) -> ml_collections.ConfigDict:
  """A supernet (or stand-alone) training run on the registered search space `space` ('fmnist' | 'tiny'
  take `in_channels`; 'imagenet' is RGB): `config_lib.base_config()` plus the space and the path sampler,
  with the Fashion-MNIST recipe as defaults."""
  c = config_lib.base_config(
      pipeline="nas_supernet",
      batch_size=128,
      eval_batch_size=250,
      steps=2000,
      label_smoothing=0.1,
      log_every=100,
      ckpt_every=500,
  )
  c.space = ml_collections.ConfigDict(
      {"name": space, "kwargs": {} if space == "imagenet" else {"in_channels": in_channels}}
  )
  c.sampling = "hss"  # hss | hss_uniform | uniform (sampling.METHODS)
  c.eta = "width"  # HSS stage weights: width | uniform
  # SuperNet(conditional=...): skip a path's inactive slots and run only its kernel size's taps (1.2-1.4x
  # per step on CPU, docs/performance.md). 'auto' = on, except for TPU programs: libtpu 0.0.42.1's compiler
  # aborts on it (a memory-space-assignment check failure, docs/tpu.md); there the selecting supernet runs.
  c.conditional = "auto"  # auto | True | False
  # Each step computes at the widest path of its sampled scaling's bucket (supernet.bucket_of), not of
  # the whole space: the same loss and gradients for fewer MACs (HSS on the search config's space: 16.2
  # instead of 19.4 MMACs per image), for one program per (resolution, bucket): 7 instead of 5 there.
  c.buckets = True
  config_lib.override(
      c.data,
      dict(
          name="fashion_mnist",
          train_split="train_minus_minival",
          eval_split="minival",
          recipe="simple",
          pad=2,
          crop_padding=4,
          hflip=True,
          mean=preprocess_lib.FASHION_MNIST_MEAN,
          std=preprocess_lib.FASHION_MNIST_STD,
          minival_per_class=50,
      ),
  )
  config_lib.override(
      c.optim,
      dict(
          name="sgd",
          lr=0.12,
          momentum=0.9,
          nesterov=True,
          weight_decay=4e-5,
          no_decay=list(NO_DECAY),
          wd_mults=[[CONV_PARAMS, 2.0]],
          warmup_steps=100,
      ),
  )
  return config_lib.override(c, overrides)


def space_of(config) -> SearchSpace:
  kwargs = config.space.kwargs
  return get_space(config.space.name, **{k: kwargs[k] for k in kwargs.keys()})


# ----------------------------------------------------------------------------------------------------
# Input
# ----------------------------------------------------------------------------------------------------
def open_split(config, split: str, cache_dir=None):
  if config.data.recipe == "swin":  # RandAugment / erasing are not part of the ScaleNet-search recipe
    raise ConfigError("NAS runs use data.recipe 'rrc' (RandomResizedCrop + flip), 'simple' or 'none'")
  return from_config.open_source(config.data, split, cache_dir=cache_dir)


def step_batches(source, data_cfg, global_batch: int, seed: int, start: int, num_steps: int, in_channels: int, plan):
  """Iterator of step batches `{'images', 'labels'[, 'model_kwargs']}` for steps start.. (this host's rows):
  `data.train_batches` with `plan(step) -> (resolution, model_kwargs or None)` choosing each step's
  image size and model inputs."""

  def data_plan(step):
    r, kwargs = plan(step)
    return from_config.preprocess(data_cfg, r, in_channels), (None if kwargs is None else {sh.MODEL_KWARGS: kwargs})

  return from_config.train_stream(data_cfg, source, None, global_batch, seed, start, num_steps, plan=data_plan)


def path_plan(space: SearchSpace, method: str, seed: int, eta="width", buckets: bool = True):
  """`plan(step)` for supernet training: the sampled path's resolution and masks, in the compute shapes
  of its bucket (`buckets`) or of the whole supernet; `SuperNet(bucket='path')` reads which from them."""

  def plan(step):
    alpha, S = sampling.sample_path(space, method, seed, step, eta)
    sides = sampling.sample_sides(space, seed, step)  # BCNet slice sides (all left for 'left' coupling)
    bucket = bucket_of(S, space) if buckets else None
    return int(S.r), {"path": path_arrays(apply_scaling(alpha, S, space), space, sides, bucket=bucket)}

  return plan


def programs(space: SearchSpace, method: str, buckets: bool = True) -> list[tuple[int, int | None]]:
  """The (resolution, bucket) of every train-step program `method` can draw (bucket None when
  `buckets` is off): HSS draws d, w and r from one scaling stage, uniform from the union of all."""
  if method not in sampling.METHODS:
    raise ConfigError(f"unknown sampling method {method!r}; known: {sampling.METHODS}")
  stages = list(zip(space.mult_candidates, space.res_candidates))
  if method == "uniform":
    stages = [(sorted({m for ms, _ in stages for m in ms}), sorted({r for _, rs in stages for r in rs}))]
  # bucket_of reads max(d, w), and d = w = m reaches every m of a stage.
  bucket = lambda m, r: bucket_of(Scaling(m, m, r), space) if buckets else None
  keys = {(int(r), bucket(m, r)) for ms, rs in stages for m in ms for r in rs}
  return sorted(keys, key=lambda k: (k[0], -1 if k[1] is None else k[1]))


def _task(config, model, abstract, initial, source, in_channels, plan, tag, label, **kw) -> loop_lib.Task:
  return loop_lib.Task(
      apply_fn=step_lib.flax_apply_fn(model),
      abstract_variables=abstract,
      batches=lambda start: step_batches(
          source, config.data, config.batch_size, config.seed, start, config.steps - start, in_channels, plan
      ),
      initial_variables=initial,
      tag=tag,
      meta={"model": tag},
      label=label,
      **kw,
  )


# ----------------------------------------------------------------------------------------------------
# Supernet
# ----------------------------------------------------------------------------------------------------
def abstract_supernet(model: SuperNet) -> dict:
  sp = model.space
  images = jax.ShapeDtypeStruct((2, sp.base_resolution, sp.base_resolution, sp.in_channels), jnp.float32)
  path = path_arrays(supernet_arch(sp), sp)  # every slot: the whole parameter tree
  return jax.eval_shape(lambda k: model.init(k, images, path=path), jax.random.key(0))


def conditional(config, platform: str) -> bool:
  """Whether the supernet computes conditionally (`config.conditional`, 'auto': not for TPU programs)."""
  c = config.get("conditional", "auto")
  if c not in ("auto", True, False):
    raise ConfigError(f"conditional must be 'auto', True or False, got {c!r}")
  return platform != "tpu" if c == "auto" else c


def buckets(config) -> bool:
  """Whether supernet steps compute at their path's bucket (`config.buckets`, default on)."""
  b = config.get("buckets", True)
  if not isinstance(b, bool):
    raise ConfigError(f"buckets must be True or False, got {b!r}")
  return b


def supernet_task(config, source, platform: str | None = None) -> loop_lib.Task:
  """The `Task` of training the super-supernet of `config.space` on `source` (None: shapes only, for
  `--mode compile`: one program per (resolution, bucket) the sampler draws, `programs`) for devices of
  `platform` (default: jax's backend)."""
  if config.sampling not in sampling.METHODS:
    raise ConfigError(f"unknown sampling method {config.sampling!r}; known: {sampling.METHODS}")
  space, bucketed = space_of(config), buckets(config)
  # The path arrays' shapes choose the bucket, so the step's jit compiles one program per (resolution,
  # bucket) and the parameter tree (every bucket's slice of the same weights) never changes.
  model = SuperNet(space, bucket=BUCKET_FROM_PATH, conditional=conditional(config, platform or jax.default_backend()))
  plan = path_plan(space, config.sampling, config.seed, config.eta, bucketed)
  tag = f"supernet/{space.name}/{space.in_channels}ch/{config.sampling}/{config.eta}"
  # Host-side init: compiling the init of this many-branch network costs over a minute on CPU.
  initial = lambda: {"params": init_supernet(model, config.seed)}
  abstract_path = lambda b: jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype),
      {"path": path_arrays(supernet_arch(space, b), space, bucket=b)},
  )
  image = lambda n, r: jax.ShapeDtypeStruct((n, r, r, space.in_channels), jnp.float32)
  name = lambda r, b: f"@{r}px" + ("" if b is None else f"/bucket{b}")
  keys = programs(space, config.sampling, bucketed)
  specs = lambda n: {name(r, b): (image(n, r), abstract_path(b)) for r, b in keys}
  abstract = abstract_supernet(model)
  return _task(config, model, abstract, initial, source, space.in_channels, plan, tag, "supernet", input_specs=specs)


def train_supernet(config, workdir: str):
  """Trains (or resumes) the super-supernet of `config.space` with one sampled path per step; returns
  the final params (device arrays). See `docs/nas.md` §4."""
  source = open_split(config, config.data.train_split, cache_dir=workdir)
  loop = loop_lib.Loop(config, workdir, supernet_task(config, source))
  loop.train()
  return loop.state.params


# ----------------------------------------------------------------------------------------------------
# Stand-alone network
# ----------------------------------------------------------------------------------------------------
def train_standalone(config, workdir: str, arch: Arch) -> dict:
  """Trains `PathNet(arch)` stand-alone (BN running averages) and evaluates it on
  `config.data.eval_split`; returns {'top1', 'eval_loss', 'train_sec', 'variables', ...}."""
  model = PathNet(arch)
  images = jax.ShapeDtypeStruct((2, arch.resolution, arch.resolution, arch.in_channels), jnp.float32)
  abstract = jax.eval_shape(lambda k: model.init(k, images), jax.random.key(0))
  source = open_split(config, config.data.train_split, cache_dir=workdir)
  eval_source = open_split(config, config.data.eval_split, cache_dir=workdir)
  eval_prep = from_config.preprocess(config.data, arch.resolution, arch.in_channels)
  plan = lambda step: (arch.resolution, None)
  tag = "standalone/" + hashlib.sha256(repr(arch).encode()).hexdigest()[:12]
  task = _task(
      config,
      model,
      abstract,
      lambda: init_pathnet(arch, config.seed),
      source,
      arch.in_channels,
      plan,
      tag,
      "standalone",
      eval_batches=lambda: from_config.eval_stream(config.data, eval_source, eval_prep, config.eval_batch_size),
  )
  loop = loop_lib.Loop(config, workdir, task)
  info = loop.train()
  info["eval_split"] = config.data.eval_split
  info["variables"] = {"params": loop.state.params, **(loop.state.model_state or {})}
  return info


# ----------------------------------------------------------------------------------------------------
# Stand-alone paths through the masked supernet
# ----------------------------------------------------------------------------------------------------
def masked_step(model: SuperNet, tx, objective):
  """`step(params, opt_state, images, labels, path) -> (params, opt_state, loss)`: one stand-alone step
  of a path as the masked `model` with the path's own weights (`embed_params`). It is the update of
  `train_standalone`'s step (`train/step.py`, everything trainable, float32): train-mode BN uses batch
  statistics in both, and the zeros around the path's weights get zero gradient and stay zero."""
  apply_fn = step_lib.flax_apply_fn(model)

  def step(params, opt_state, images, labels, path):
    def loss_fn(p):
      return objective.loss(apply_fn(p, images, True, None, path=path), {"labels": labels})[0]

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(lambda p, u: p + u.astype(p.dtype), params, updates), opt_state, loss

  return step


def masked_correct(model: SuperNet):
  """`correct(params, images, labels, mask, path)`: hits among the real (mask 1) images, BN statistics
  of those images (the masked supernet keeps no running averages)."""

  def correct(params, images, labels, mask, path):
    y = model.apply({"params": params}, images, path=path, train=False, stat_weights=mask)
    return jnp.sum((jnp.argmax(y, -1) == labels) * mask)

  return correct


def train_paths_masked(
    config, workdir: str, pairs: Sequence[tuple[Alpha, Scaling]], space: SearchSpace, vmap_size: int = 1
) -> list[float]:
  """Trains every (α, S) of `pairs` stand-alone (fresh `PathNet` init from `config.seed`, `config`'s
  recipe and batches, as `train_standalone`) through the masked supernet, and returns each one's top-1
  on `config.data.eval_split` with BN statistics of each eval batch. All paths of one (resolution,
  bucket) share one compiled step, `vmap_size` paths per call (`jax.vmap` over their weights; 1: no
  vmap, which keeps the conditional compute). Results are kept in `workdir/standalone.json` after each
  group, so a resumed run trains only the groups it had not finished."""
  if vmap_size < 1:
    raise ConfigError(f"vmap_size must be >= 1, got {vmap_size}")
  wd = paths.path(workdir)
  wd.mkdir(parents=True, exist_ok=True)
  record = wd / "standalone.json"
  # A record of another recipe (steps, seed, optimizer, data, ...) does not count.
  recipe = hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:12]
  key = lambda i: json.dumps([pairs[i][0].to_dict(), pairs[i][1].to_dict(), recipe])
  done = json.loads(record.read_text()) if record.exists() else {}
  groups = defaultdict(list)
  for i, (_, S) in enumerate(pairs):
    if key(i) not in done:
      groups[(int(S.r), bucket_of(S, space))].append(i)
  if groups:
    source = open_split(config, config.data.train_split, cache_dir=workdir)
    eval_source = open_split(config, config.data.eval_split, cache_dir=workdir)
  objective = step_lib.Classification(config.label_smoothing)
  for (r, bucket), idx in sorted(groups.items()):
    # vmap turns a per-path lax.cond into a select of both branches: conditional only without vmap.
    model = SuperNet(space, bucket=bucket, conditional=vmap_size == 1 and conditional(config, jax.default_backend()))
    archs = {i: apply_scaling(*pairs[i], space) for i in idx}
    params = {i: embed_params(init_pathnet(archs[i], config.seed)["params"], archs[i], space) for i in idx}
    tx = optim.make_optimizer(loop_lib.optimizer_config(config), params[idx[0]])
    step, correct = masked_step(model, tx, objective), masked_correct(model)
    stack, unstack = (lambda ts: ts[0]), (lambda t, k: t)
    if vmap_size > 1:
      step = jax.vmap(step, in_axes=(0, 0, None, None, 0))
      correct = jax.vmap(correct, in_axes=(0, None, None, None, 0))
      stack, unstack = stack_paths, (lambda t, k: jax.tree.map(lambda a: a[k], t))
    options = jax_utils.compile_options(config.xla_opt_level)  # as the Loop compiles its steps
    step = jax.jit(step, donate_argnums=(0, 1), compiler_options=options)
    correct = jax.jit(correct, compiler_options=options)
    prep = from_config.preprocess(config.data, r, space.in_channels)
    for start in range(0, len(idx), vmap_size):
      real = idx[start : start + vmap_size]
      chunk = real + [real[-1]] * (vmap_size - len(real))  # padding: trained and dropped
      p = stack([params[i] for i in chunk])
      o = stack([tx.init(params[i]) for i in chunk])
      path = stack([path_arrays(archs[i], space, bucket=bucket) for i in chunk])
      batches = step_batches(
          source, config.data, config.batch_size, config.seed, 0, config.steps, space.in_channels, lambda s: (r, None)
      )
      for b in batches:
        p, o, _ = step(p, o, b["images"], b["labels"], path)
      hits, total = 0, 0.0
      for b in from_config.eval_stream(config.data, eval_source, prep, config.eval_batch_size):
        hits = hits + correct(p, b["images"], b["labels"], b["mask"].astype(np.float32), path)
        total += float(np.sum(b["mask"]))
      hits = np.asarray(hits)
      for k, i in enumerate(real):
        done[key(i)] = float(unstack(hits, k) / total)
    if jax.process_index() == 0:
      paths.write_text(record, json.dumps(done))
  return [done[key(i)] for i in range(len(pairs))]
