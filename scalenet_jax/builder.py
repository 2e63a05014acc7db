"""From a `config_lib.train_config()` to the model a run trains, its initial params and its trainable set.

The one place that reads `config.model`, `config.expansion` and `config.init_from`:

* `build_model(config)`: the registry model, expanded when `config.expansion.kind` is set;
* `initial_params(config)`: fresh init, or pretrained weights (timm / Hugging Face / original-release
  checkpoint, or an exported params dir) then the expansion;
* `trainable_mask(config, abstract_params)`: the optimizer's trainable patterns and the step's trainable mask
  (row masks for baselines that train only their new layers).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from scalenet_jax import config_lib, convert, paths
from scalenet_jax.errors import ConfigError, MissingInputError
from scalenet_jax.grow import expand as grow_lib
from scalenet_jax.grow import spec as spec_lib
from scalenet_jax.grow.spec import ExpansionSpec
from scalenet_jax.models import registry
from scalenet_jax.train import checkpoint as ckpt_lib
from scalenet_jax.train import optim

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# `config.model` fields that override the registry's architecture (image models; decoders).
ARCH_FIELDS = (*config_lib.IMAGE_ARCH_FIELDS, *config_lib.LLAMA_ARCH_FIELDS)


def expansion_spec(config) -> Optional[ExpansionSpec]:
  """The `ExpansionSpec` of `config.expansion`.

  Args:
    config: a `config_lib.train_config()` ConfigDict; reads `config.expansion` and, for the default
      adjustment scope, the model family of `config.model.name`.

  Returns:
    The spec, or None when `config.expansion.kind` is empty (no expansion).

  Raises:
    ConfigError: an invalid expansion field (`ExpansionSpec` checks them; `mapping` and `subset` must be
      integer lists where they are lists).
  """
  e = config.expansion
  if not e.kind:
    return None
  scope = e.adjust_scope or spec_lib.default_adjust_scope(registry.family_of(config.model.name))
  mapping = e.mapping if e.mapping in ("interpolate", "stack") else config_lib.int_list(e.mapping, "expansion.mapping")
  return ExpansionSpec(
      kind=e.kind,
      reuse=e.reuse,
      mapping=mapping,
      subset=config_lib.int_list(e.subset, "expansion.subset"),
      adjust=e.adjust,
      adjust_scope=scope,
      rank=e.rank,
      act=e.act,
      trainable=e.trainable,
      num_new_layers=e.num_new_layers,
      seed=e.seed,
  )


def compute_dtype(config):
  """The jnp dtype named by `config.model.dtype` (`DTYPES`); raises `ConfigError` on another name."""
  if config.model.dtype not in DTYPES:
    raise ConfigError(f"unknown model dtype {config.model.dtype!r}; choose one of {sorted(DTYPES)}")
  return DTYPES[config.model.dtype]


def base_model(config, unroll: bool | None = None, **model_kwargs):
  """The plain (unexpanded) model of `config.model`.

  Args:
    config: a train config; `config.model` gives the registry name, the architecture overrides
      (`ARCH_FIELDS`), drop-path rate, compute dtype and remat.
    unroll: None = the per-stack default (`models.stack.unroll_segment`), True / False = unroll / scan
      every block stack.
    **model_kwargs: further module fields, e.g. `out_indices` (a feature backbone).

  Returns:
    The registry model (a `models.common.StackedModel`), not expanded.

  Raises:
    ConfigError: unknown model dtype (or model name, from the registry).
  """
  m = config.model
  arch = {k: m[k] for k in ARCH_FIELDS if k in m and m[k] is not None}
  return registry.create_model(
      m.name,
      arch,
      drop_path_rate=m.drop_path_rate,
      dtype=compute_dtype(config),
      remat=m.remat,
      unroll=unroll,
      **model_kwargs,
  )


def build_model(config, unroll: bool | None = None):
  """The model a run trains: the base model, expanded when `config.expansion.kind` is set.

  Args:
    config: a train config (`config.model`, `config.expansion`).
    unroll: as in `base_model`.

  Returns:
    The model; its structure only, no params are built (`grow.expand.expanded_model`).
  """
  model = base_model(config, unroll)
  spec = expansion_spec(config)
  return model if spec is None else grow_lib.expanded_model(model, spec)


def trainable_mask(config, abstract_params):
  """The run's trainable set as a bool pytree like the params (optimizer and step).

  The expansion's trainable patterns, and for baselines under `adjust_ln_head` bool row arrays on the
  stacked core leaves (only the new layers train, and only their rows hold optimizer state).

  Args:
    config: a train config (`config.expansion`, `config.model`).
    abstract_params: the params pytree of the model a run trains (arrays or `jax.ShapeDtypeStruct`s).

  Returns:
    A dict pytree with the structure of `abstract_params`: a Python bool per leaf, or, on the `core` leaves
    of a grown baseline stack, a bool numpy array with one entry per stacked layer.
  """
  spec = expansion_spec(config)
  patterns = "all" if spec is None or spec.trainable == "all" else list(grow_lib.trainable_patterns(spec))
  mask = optim.trainable_mask(abstract_params, patterns)
  rows = {} if spec is None else grow_lib.trainable_rows(base_model(config), spec)
  for name, r in rows.items():
    mask[name]["core"] = jax.tree.map(lambda _: r, mask[name]["core"])
  return mask


def count_trainable(abstract_params, mask) -> int:
  """Trainable scalars under `mask` (row masks count their true rows).

  Args:
    abstract_params: the params pytree (anything with `.shape` per leaf).
    mask: the matching mask of `trainable_mask`.

  Returns:
    The number of trainable scalars.
  """

  def one(a, m):
    size = int(np.prod(a.shape))
    return size * int(m) if isinstance(m, (bool, np.bool_)) else size // len(m) * int(np.sum(m))

  return int(sum(jax.tree.leaves(jax.tree.map(one, abstract_params, mask))))


def needs_initial_params(config) -> bool:
  """Whether a fresh run starts from host-built params (pretrained and/or expanded), not a random init."""
  return bool(config.init_from) or expansion_spec(config) is not None


def check_pretrained(config, model) -> None:
  """Fails fast on an `init_from` that cannot load into `model`, without reading its weights.

  Args:
    config: a train config with a non-empty `init_from` (local or gs:// path).
    model: the plain model the weights are for.

  Raises:
    MissingInputError: `init_from` does not exist.
    CheckpointError: a decoder's Hugging Face directory (the one with a `config.json`) of another
      architecture, naming the first differing field.
  """
  path = paths.path(config.init_from)
  if not path.exists():
    raise MissingInputError(f"init_from not found: {config.init_from}")
  if model.family == "llama" and path.is_dir() and (path / "config.json").exists():
    from scalenet_jax.models import llama  # pylint: disable=g-import-not-at-top

    llama.check_config(model, llama.read_hf_config(str(path)))


def load_pretrained(config, model):
  """Params of the plain `model` from `config.init_from` (`read_pretrained`), after `check_pretrained`.

  A decoder's Hugging Face directory is the one with a `config.json`: its architecture must be the
  model's (`CheckpointError` naming the first differing field) before any weight is read.

  Args:
    config: a train config (`init_from`, `init_new_head`, `seed`).
    model: the plain (unexpanded) model.

  Returns:
    The model's params pytree (numpy or device arrays).

  Raises:
    MissingInputError, CheckpointError: as in `check_pretrained`, or a checkpoint that does not match.
  """
  check_pretrained(config, model)
  return read_pretrained(config.init_from, model, new_head=config.init_new_head, seed=config.seed)


def read_pretrained(path, model, *, new_head: bool = False, seed: int = 0):
  """Params of the plain `model` from an exported params dir or a foreign checkpoint.

  Args:
    path: an exported params dir (Orbax; its arrays must be the model's) or a checkpoint file / directory
      in a foreign layout (timm / Hugging Face / original release, `convert.load_state_dict`).
    model: the plain (unexpanded) model.
    new_head: keep a fresh head (init from `seed`) instead of the checkpoint's (e.g. another class count).
    seed: init seed of the fresh head.

  Returns:
    The model's params pytree.
  """
  init = model.init_params(seed) if new_head else None
  if ckpt_lib.is_params_export(path):
    if not new_head:
      return ckpt_lib.load_params_like(path, model.abstract_params())
    return {**ckpt_lib.load_params(path), "head": init["head"]}  # the old head may have another class count
  return convert.timm_to_flax(convert.load_state_dict(path), model, new_head=new_head, init=init)


def initial_params(config):
  """(model, params) a run starts from: pretrained weights and the expansion, or a fresh init.

  Args:
    config: a train config (`model`, `expansion`, `init_from`, `seed`).

  Returns:
    `(model, params)`: the model a run trains (as `build_model`) and its initial params pytree.

  Raises:
    ConfigError: an expansion other than `scratch` without `init_from`.
    MissingInputError, CheckpointError: as in `load_pretrained`.
  """
  model = base_model(config)
  spec = expansion_spec(config)
  if not config.init_from:
    if spec is not None and spec.kind != "scratch":
      raise ConfigError("expansion needs pretrained weights: set --config.init_from")
    target = model if spec is None else grow_lib.expanded_model(model, spec)
    return target, target.init_params(config.seed)
  pre = load_pretrained(config, model)
  if spec is None:
    return model, pre
  return grow_lib.expand(pre, model, spec)
