"""Optimizer construction: AdamW / SGD-Nesterov, warmup + cosine, clipping, accumulation, freezing.

Freezing is optimizer configuration, not model code: a list of param-path regexes names the trainable
parameters; everything else is routed to `optax.set_to_zero()` inside `optax.multi_transform`, so frozen
parameters receive a zero update *and hold no optimizer state* (no Adam moments, no momentum, no
accumulation buffer). The train step differentiates only the trainable parameters (frozen ones are
constants of its loss; `step._Partition`), so XLA never computes weight gradients for them.

Param paths are the flax dict keys joined by '/', e.g. 'blocks/mlp/fc1/kernel'. Patterns are matched with
`re.search`, so anchor them when needed: r'(^|/)bias$', r'^head/'.

The optimizer config (an `ml_collections.ConfigDict` or a plain mapping) uses the fields of
`config_lib.optim_config()`; unknown keys are rejected so a misspelled field fails loudly. Which params
train is not an optimizer field but an argument (`trainable`): it follows from the run (the expansion's
trainable set), so it cannot be set twice.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from scalenet_jax import config_lib
from scalenet_jax.errors import ConfigError
from scalenet_jax.jax_utils import path_str

TRAINABLE = "trainable"
FROZEN = "frozen"
DEFAULT_NO_DECAY = config_lib.DEFAULT_NO_DECAY


def _resolve_config(config: Any) -> ml_collections.ConfigDict:
  """`config_lib.optim_config()` overridden by `config`; raises on unknown keys and obviously bad values."""
  if not hasattr(config, "items"):
    raise ConfigError(f"optimizer config must be a mapping or ConfigDict, got {type(config).__name__}")
  c = config_lib.optim_config()
  unknown = sorted(set(config.keys()) - set(c.keys()))
  if unknown:
    raise ConfigError(f"unknown optimizer config key {unknown[0]!r} (known: {sorted(c.keys())})")
  config_lib.override(c, dict(config.items()))
  if c.name not in ("adamw", "sgd"):
    raise ConfigError(f"optimizer name must be 'adamw' or 'sgd', got {c.name!r}")
  if c.schedule not in ("cosine", "poly"):
    raise ConfigError(f"optimizer schedule must be 'cosine' or 'poly', got {c.schedule!r}")
  if c.poly_power <= 0:
    raise ConfigError(f"optimizer poly_power must be > 0, got {c.poly_power}")
  if c.total_steps is None or c.total_steps <= 0 or c.total_steps <= c.warmup_steps:
    raise ConfigError(f"optimizer total_steps={c.total_steps} must be > warmup_steps={c.warmup_steps}")
  if c.grad_accum_steps < 1:
    raise ConfigError(f"grad_accum_steps must be >= 1, got {c.grad_accum_steps}")
  return c


def _map_paths(fn: Callable[[str, Any], Any], tree):
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), tree)


def _compile(patterns: Sequence[str], what: str) -> list[re.Pattern]:
  if isinstance(patterns, str):
    raise ConfigError(f"{what} must be a list of regexes, got the string {patterns!r}")
  try:
    return [re.compile(p) for p in patterns]
  except re.error as e:
    raise ConfigError(f"bad regex in {what}: {e}") from None


def param_labels(params, trainable_patterns: str | Sequence[str] = "all"):
  """Pytree of 'trainable' / 'frozen' labels, one per leaf of `params` (abstract shapes are fine).

  Each pattern must match at least one parameter, so typos cannot silently freeze the whole model.

  Args:
    params: the param pytree (arrays or abstract shapes).
    trainable_patterns: 'all' or a list of regexes (re.search on the '/'-joined param path).

  Returns:
    A pytree like `params` with the string `'trainable'` or `'frozen'` per leaf.

  Raises:
    ValueError: a string other than 'all', or a pattern that matches no parameter.
    ConfigError: a pattern that is not a valid regex.
  """
  if isinstance(trainable_patterns, str):
    if trainable_patterns != "all":
      raise ValueError(f"trainable must be 'all' or a list of regexes, got {trainable_patterns!r}")
    return jax.tree_util.tree_map(lambda _: TRAINABLE, params)
  regexes = _compile(list(trainable_patterns), "trainable")
  paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  for rx in regexes:
    if not any(rx.search(p) for p in paths):
      raise ValueError(f"trainable pattern {rx.pattern!r} matches no parameter")
  labels = _map_paths(lambda p, _: TRAINABLE if any(rx.search(p) for rx in regexes) else FROZEN, params)
  return labels


def trainable_mask(params, trainable_patterns: str | Sequence[str] = "all"):
  """Pytree of bools (True = trainable), same structure as `params`; arguments and errors as in
  `param_labels`."""
  return jax.tree_util.tree_map(lambda l: l == TRAINABLE, param_labels(params, trainable_patterns))


def poly_schedule(c) -> optax.Schedule:
  """mmseg's `poly` policy with its linear warmup (`PolyLrUpdaterHook`, by iteration): (lr - min_lr) x
  (1 - step / total_steps)^power + min_lr, and during the first `warmup_steps` that value times
  1 - (1 - step / warmup_steps)(1 - warmup_init_lr / lr) (mmseg's warmup scales the regular rate)."""
  ratio = c.warmup_init_lr / c.lr if c.lr else 1.0

  def schedule(step):
    t = jnp.minimum(step, c.total_steps) / c.total_steps
    lr = (c.lr - c.min_lr) * (1.0 - t) ** c.poly_power + c.min_lr
    if not c.warmup_steps:
      return lr
    warm = 1.0 - (1.0 - step / c.warmup_steps) * (1.0 - ratio)
    return lr * jnp.where(step < c.warmup_steps, warm, 1.0)

  return schedule


def make_lr_schedule(config) -> optax.Schedule:
  """The learning rate as a function of the *optimizer* step: `schedule='cosine'`: linear warmup then
  cosine decay to `min_lr`; `'poly'`: mmseg's (`poly_schedule`).

  Args:
    config: optimizer config (`config_lib.optim_config()` fields: `schedule`, `lr`, `warmup_init_lr`,
      `warmup_steps`, `total_steps`, `min_lr`, `poly_power`).

  Returns:
    The optax schedule.

  Raises:
    ConfigError: an unknown key or a bad value (`total_steps` <= `warmup_steps`, ...).
  """
  c = _resolve_config(config)
  if c.schedule == "poly":
    return poly_schedule(c)
  return optax.warmup_cosine_decay_schedule(
      init_value=c.warmup_init_lr,
      peak_value=c.lr,
      warmup_steps=c.warmup_steps,
      decay_steps=c.total_steps,
      end_value=c.min_lr,
  )


def make_train_lr_fn(config) -> Callable:
  """Learning rate as a function of the *train-step* counter (accounts for gradient accumulation).

  Args:
    config: optimizer config, as in `make_lr_schedule`.

  Returns:
    `lr(step)`: the schedule at optimizer step `step // grad_accum_steps`.
  """
  c = _resolve_config(config)
  sched, k = make_lr_schedule(c), c.grad_accum_steps
  return lambda step: sched(step // k)


def _weight_decay(c: ml_collections.ConfigDict) -> list[optax.GradientTransformation]:
  """One masked `add_decayed_weights` per distinct multiplier (masks are path functions, so they work on
  the masked trees multi_transform hands to the trainable branch)."""
  if c.weight_decay == 0:
    return []
  no_decay = _compile(list(c.no_decay), "no_decay")
  mults = [(re.compile(rx), float(m)) for rx, m in c.wd_mults]

  def mult_of(path: str) -> float:
    if any(rx.search(path) for rx in no_decay):
      return 0.0
    return next((m for rx, m in mults if rx.search(path)), 1.0)

  distinct = sorted({1.0, *(m for _, m in mults)} - {0.0})
  return [
      optax.add_decayed_weights(
          c.weight_decay * m, mask=lambda params, m=m: _map_paths(lambda p, _: mult_of(p) == m, params)
      )
      for m in distinct
  ]


def _is_rows(m) -> bool:
  return not isinstance(m, (bool, np.bool_))


def rows_only(inner: optax.GradientTransformation, mask) -> optax.GradientTransformation:
  """`inner` applied to the trainable rows of row-masked leaves only (and to other leaves as they are).

  Row-masked leaves are gathered to their true rows before `inner`, so its state (Adam moments, momentum,
  accumulation) exists for those rows only; the updates of the other rows are exact zeros.

  Args:
    inner: the transformation to wrap.
    mask: a bool pytree like the params whose leaves are bools or bool arrays over a stacked leaf's
      leading axis (e.g. only a baseline's new layers in a stacked core).

  Returns:
    The wrapped `optax.GradientTransformation`.
  """
  # Row indices are static numpy: the gathers and scatters compile to fixed slices.
  pick = lambda tree: jax.tree.map(lambda x, m: x[np.flatnonzero(m)] if _is_rows(m) else x, tree, mask)

  def scatter(u, full, m):
    return jnp.zeros(full.shape, u.dtype).at[np.flatnonzero(m)].set(u) if _is_rows(m) else u

  def init(params):
    return inner.init(pick(params))

  def update(updates, state, params=None):
    out, state = inner.update(pick(updates), state, None if params is None else pick(params))
    return jax.tree.map(scatter, out, updates, mask), state

  return optax.GradientTransformation(init, update)


def make_optimizer(config, params_abstract, trainable="all") -> optax.GradientTransformation:
  """The full optimizer for `params_abstract`.

  Trainable branch: [clip] -> AdamW (scale_by_adam, decoupled decay) or SGD (decay added to the gradient,
  Nesterov momentum) -> the learning-rate schedule (warmup-cosine or poly), wrapped in `optax.MultiSteps` when
  grad_accum_steps > 1. Frozen branch: `optax.set_to_zero()` (no state).

  Args:
    config: optimizer config (`config_lib.optim_config()` fields; unknown keys are rejected).
    params_abstract: the param pytree (`jax.ShapeDtypeStruct` leaves are fine).
    trainable: 'all', a list of param-path regexes, or a bool pytree like the params (`trainable_mask`),
      whose leaves may be bool arrays over a stacked leaf's leading axis: only those rows train and hold
      optimizer state (`rows_only`).

  Returns:
    The `optax.GradientTransformation`.

  Raises:
    ConfigError: an unknown key, a bad value or a bad regex.
    ValueError: a trainable pattern that matches no parameter.
  """
  c = _resolve_config(config)
  schedule = make_lr_schedule(c)
  parts = [optax.clip_by_global_norm(c.clip_grad_norm)] if c.clip_grad_norm else []
  if c.name == "adamw":
    parts += [optax.scale_by_adam(b1=c.b1, b2=c.b2, eps=c.eps), *_weight_decay(c)]
  else:
    parts += [*_weight_decay(c), optax.trace(decay=c.momentum, nesterov=c.nesterov)]
  parts.append(optax.scale_by_learning_rate(schedule))
  inner = optax.chain(*parts)
  if c.grad_accum_steps > 1:
    # Inside the trainable branch, so the accumulation buffer also exists only for trainable params.
    inner = optax.MultiSteps(inner, every_k_schedule=c.grad_accum_steps).gradient_transformation()
  mask = trainable_mask(params_abstract, trainable) if isinstance(trainable, (str, list, tuple)) else trainable
  labels = jax.tree.map(lambda m: TRAINABLE if np.any(m) else FROZEN, mask)
  tx = optax.multi_transform({TRAINABLE: inner, FROZEN: optax.set_to_zero()}, labels)
  has_rows = any(_is_rows(m) for m in jax.tree.leaves(mask))
  return rows_only(tx, mask) if has_rows else tx
