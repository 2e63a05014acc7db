"""From a config to a model and its initial params (pretrained weights, expansion, freezing)."""

from __future__ import annotations

import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from scalenet_jax import convert
from scalenet_jax.grow import expand as grow_lib
from scalenet_jax.grow.spec import ExpansionSpec
from scalenet_jax.models import registry

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _ints(text) -> Optional[tuple[int, ...]]:
  if isinstance(text, (list, tuple)):
    return tuple(int(v) for v in text)
  text = str(text).strip()
  if not text:
    return None
  try:
    return tuple(int(v) for v in text.split(","))
  except ValueError:
    raise ValueError(f"expected a comma-separated list of integers, got {text!r}") from None


def expansion_spec(config) -> Optional[ExpansionSpec]:
  """The ExpansionSpec of `config.expansion` (None when `kind` is empty: no expansion)."""
  e = config.expansion
  if not e.kind:
    return None
  mapping = e.mapping if e.mapping in ("interpolate", "stack") else _ints(e.mapping)
  return ExpansionSpec(
      kind=e.kind,
      reuse=e.reuse,
      mapping=mapping,
      subset=_ints(e.subset),
      adjust=e.adjust,
      rank=e.rank,
      act=e.act,
      trainable=e.trainable,
      num_new_layers=e.num_new_layers,
      seed=e.seed,
  )


def base_model(config, unroll: bool | None = None):
  """The plain (unexpanded) model of `config.model`; `unroll` None = the per-stack default
  (`models.stack.unroll_segment`), True / False = unroll / scan every block stack."""
  m = config.model
  if m.dtype not in DTYPES:
    raise ValueError(f"unknown model dtype {m.dtype!r}; choose one of {sorted(DTYPES)}")
  arch = {k: m[k] for k in ("num_classes", "img_size", "in_chans") if m[k] is not None}
  return registry.create_model(
      m.name, arch, drop_path_rate=m.drop_path_rate, dtype=DTYPES[m.dtype], remat=m.remat, unroll=unroll
  )


def build_model(config, unroll: bool | None = None):
  """The model a run trains: the base model, expanded when `config.expansion.kind` is set."""
  model = base_model(config, unroll)
  spec = expansion_spec(config)
  return model if spec is None else grow_lib.expanded_model(model, spec)


def trainable_patterns(config) -> tuple[str, ...]:
  spec = expansion_spec(config)
  return (".*",) if spec is None else grow_lib.trainable_patterns(spec)


def trainable_mask(config, abstract_params):
  """Bool pytree (True = trainable); stacked core leaves of baselines get per-row bool arrays."""
  from scalenet_jax.train import optim

  patterns = trainable_patterns(config)
  mask = optim.trainable_mask(abstract_params, "all" if patterns == (".*",) else list(patterns))
  spec = expansion_spec(config)
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


def load_pretrained(config, model):
  """Params of the plain `model` from `config.init_from` (timm file or exported params dir)."""
  path = config.init_from
  if os.path.isdir(path):
    from scalenet_jax.train import checkpoint

    return checkpoint.load_params(path)
  skip = tuple(k for k in config.init_skip.split(",") if k)
  return convert.timm_to_flax(convert.load_state_dict(path), model, ignore=skip)


def initial_params(config, seed: int, fresh=None):
  """(model, params) a run starts from: fresh init, or pretrained weights, then expansion.

  `fresh`: already-initialised params of the target model to draw new params from (saves an init).
  """
  model = base_model(config)
  spec = expansion_spec(config)
  if not config.init_from:
    if spec is not None and spec.kind != "scratch":
      raise ValueError("expansion needs pretrained weights: set --config.init_from")
    target = model if spec is None else grow_lib.expanded_model(model, spec)
    return target, (grow_lib.init_params(target, seed) if fresh is None else fresh)
  pre = load_pretrained(config, model)
  if spec is None:
    return model, pre
  return grow_lib.expand(pre, model, spec, fresh=fresh)
