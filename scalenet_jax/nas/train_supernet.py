"""Super-supernet training (one sampled path per step) and stand-alone training of searched networks.

How a step gets its path and images, resumability and the host-side init are described in
`docs/nas.md` §4; `supernet_config()` below lists every config field.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scalenet_jax import config_lib
from scalenet_jax.data import from_config, preprocess as preprocess_lib
from scalenet_jax.errors import ConfigError
from scalenet_jax.nas import sampling
from scalenet_jax.nas.space import Arch, SearchSpace, apply_scaling, get_space
from scalenet_jax.nas.supernet import PathNet, SuperNet, init_pathnet, init_supernet, path_arrays
from scalenet_jax.train import loop as loop_lib
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


def path_plan(space: SearchSpace, method: str, seed: int, eta="width"):
  """`plan(step)` for supernet training: the sampled path's resolution and masks."""

  def plan(step):
    alpha, S = sampling.sample_path(space, method, seed, step, eta)
    sides = sampling.sample_sides(space, seed, step)  # BCNet slice sides (all left for 'left' coupling)
    return int(S.r), {"path": path_arrays(apply_scaling(alpha, S, space), space, sides)}

  return plan


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
  from scalenet_jax.nas.supernet import supernet_arch  # pylint: disable=g-import-not-at-top

  path = path_arrays(supernet_arch(sp), sp)
  return jax.eval_shape(lambda k: model.init(k, images, path=path), jax.random.key(0))


def conditional(config, platform: str) -> bool:
  """Whether the supernet computes conditionally (`config.conditional`, 'auto': not for TPU programs)."""
  c = config.get("conditional", "auto")
  if c not in ("auto", True, False):
    raise ConfigError(f"conditional must be 'auto', True or False, got {c!r}")
  return platform != "tpu" if c == "auto" else c


def supernet_task(config, source, platform: str | None = None) -> loop_lib.Task:
  """The `Task` of training the super-supernet of `config.space` on `source` (None: shapes only, for
  `--mode compile`: one program per resolution the space samples) for devices of `platform` (default:
  jax's backend)."""
  if config.sampling not in sampling.METHODS:
    raise ConfigError(f"unknown sampling method {config.sampling!r}; known: {sampling.METHODS}")
  space = space_of(config)
  model = SuperNet(space, conditional=conditional(config, platform or jax.default_backend()))
  plan = path_plan(space, config.sampling, config.seed, config.eta)
  tag = f"supernet/{space.name}/{space.in_channels}ch/{config.sampling}/{config.eta}"
  # Host-side init: compiling the init of this many-branch network costs over a minute on CPU.
  initial = lambda: {"params": init_supernet(model, config.seed)}
  path = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), plan(0)[1])
  resolutions = sorted({r for stage in space.res_candidates for r in stage})
  image = lambda n, r: jax.ShapeDtypeStruct((n, r, r, space.in_channels), jnp.float32)
  specs = lambda n: {f"@{r}px": (image(n, r), path) for r in resolutions}
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
