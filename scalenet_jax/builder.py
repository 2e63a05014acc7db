"""From a `config_lib.train_config()` to the model a run trains, its initial params and its trainable set.

The one place that reads `config.model`, `config.expansion` and `config.init_from`:

* `build_model(config)`: the registry model, expanded when `config.expansion.kind` is set;
* `initial_params(config)`: fresh init, or pretrained weights (timm / Hugging Face / original-release
  checkpoint, or an exported params dir) then the expansion;
* `trainable(config, abstract_params)`: the optimizer's trainable patterns and the step's trainable mask
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
ARCH_FIELDS = ("num_classes", "img_size", "in_chans", *config_lib.LLAMA_ARCH_FIELDS)


def expansion_spec(config) -> Optional[ExpansionSpec]:
  """The ExpansionSpec of `config.expansion` (None when `kind` is empty: no expansion)."""
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
  if config.model.dtype not in DTYPES:
    raise ConfigError(f"unknown model dtype {config.model.dtype!r}; choose one of {sorted(DTYPES)}")
  return DTYPES[config.model.dtype]


def base_model(config, unroll: bool | None = None):
  """The plain (unexpanded) model of `config.model`; `unroll` None = the per-stack default
  (`models.stack.unroll_segment`), True / False = unroll / scan every block stack."""
  m = config.model
  arch = {k: m[k] for k in ARCH_FIELDS if k in m and m[k] is not None}
  return registry.create_model(
      m.name, arch, drop_path_rate=m.drop_path_rate, dtype=compute_dtype(config), remat=m.remat, unroll=unroll
  )


def build_model(config, unroll: bool | None = None):
  """The model a run trains: the base model, expanded when `config.expansion.kind` is set."""
  model = base_model(config, unroll)
  spec = expansion_spec(config)
  return model if spec is None else grow_lib.expanded_model(model, spec)


def trainable_mask(config, abstract_params):
  """The run's trainable set as a bool pytree like the params (optimizer and step): the expansion's
  trainable patterns, and for baselines under `adjust_ln_head` bool row arrays on the stacked core leaves
  (only the new layers train, and only their rows hold optimizer state)."""
  spec = expansion_spec(config)
  patterns = "all" if spec is None or spec.trainable == "all" else list(grow_lib.trainable_patterns(spec))
  mask = optim.trainable_mask(abstract_params, patterns)
  rows = {} if spec is None else grow_lib.trainable_rows(base_model(config), spec)
  for name, r in rows.items():
    mask[name]["core"] = jax.tree.map(lambda _: r, mask[name]["core"])
  return mask


def count_trainable(abstract_params, mask) -> int:
  """Trainable scalars under `mask` (row masks count their true rows)."""

  def one(a, m):
    size = int(np.prod(a.shape))
    return size * int(m) if isinstance(m, (bool, np.bool_)) else size // len(m) * int(np.sum(m))

  return int(sum(jax.tree.leaves(jax.tree.map(one, abstract_params, mask))))


def needs_initial_params(config) -> bool:
  """Whether a fresh run starts from host-built params (pretrained and/or expanded), not a random init."""
  return bool(config.init_from) or expansion_spec(config) is not None


def check_pretrained(config, model) -> None:
  """Fails fast on an `init_from` that cannot load into `model` without reading its weights: a missing
  path, or a decoder's Hugging Face directory (the one with a `config.json`) of another architecture
  (`CheckpointError` naming the first differing field)."""
  path = paths.path(config.init_from)
  if not path.exists():
    raise MissingInputError(f"init_from not found: {config.init_from}")
  if model.family == "llama" and path.is_dir() and (path / "config.json").exists():
    from scalenet_jax.models import llama  # pylint: disable=g-import-not-at-top

    llama.check_config(model, llama.read_hf_config(str(path)))


def load_pretrained(config, model):
  """Params of the plain `model` from `config.init_from` (`read_pretrained`), after `check_pretrained`.
  A decoder's Hugging Face directory is the one with a `config.json`: its architecture must be the
  model's (`CheckpointError` naming the first differing field) before any weight is read."""
  check_pretrained(config, model)
  return read_pretrained(config.init_from, model, new_head=config.init_new_head, seed=config.seed)


def read_pretrained(path, model, *, new_head: bool = False, seed: int = 0):
  """Params of the plain `model` from an exported params dir (Orbax; its arrays must be the model's) or
  a checkpoint file / directory in a foreign layout (`convert.load_state_dict`). `new_head` keeps a fresh
  head (init from `seed`) instead of the checkpoint's."""
  init = model.init_params(seed) if new_head else None
  if ckpt_lib.is_params_export(path):
    if not new_head:
      return ckpt_lib.load_params_like(path, model.abstract_params())
    return {**ckpt_lib.load_params(path), "head": init["head"]}  # the old head may have another class count
  return convert.timm_to_flax(convert.load_state_dict(path), model, new_head=new_head, init=init)


def initial_params(config):
  """(model, params) a run starts from: pretrained weights and the expansion, or a fresh init."""
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
