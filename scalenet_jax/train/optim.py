"""Optimizer construction: AdamW / SGD-Nesterov, warmup + cosine, clipping, accumulation, freezing.

Freezing is optimizer configuration, not model code: a list of param-path regexes names the trainable
parameters; everything else is routed to `optax.set_to_zero()` inside `optax.multi_transform`, so frozen
parameters receive a zero update *and hold no optimizer state* (no Adam moments, no momentum, no
accumulation buffer). The train step differentiates only the trainable parameters (frozen ones are
constants of its loss; `step._Partition`), so XLA never computes weight gradients for them.

Param paths are the flax dict keys joined by '/', e.g. 'blocks/mlp/fc1/kernel'. Patterns are matched with
`re.search`, so anchor them when needed: r'(^|/)bias$', r'^head/'.

The optimizer config (an `ml_collections.ConfigDict` or a plain mapping) uses the keys of
`default_config()`; unknown keys are rejected so a misspelled field fails loudly.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import jax
import ml_collections
import optax

TRAINABLE = "trainable"
FROZEN = "frozen"

# No weight decay on biases, norm gains/offsets, position/class tokens and relative position bias tables
# (the usual ViT/Swin/EfficientNet recipe). Matched against the '/'-joined param path.
DEFAULT_NO_DECAY = (
    r"(^|/)bias$",
    r"(^|/)scale$",  # flax LayerNorm / BatchNorm gain
    r"(?i)(^|/)[^/]*(norm|ln|bn)[^/]*/",  # any param inside a norm module (norm1, LayerNorm_0, bn, ...)
    r"pos_embed",
    r"cls_token",
    r"dist_token",
    r"relative_position_bias_table",
)


def default_config() -> ml_collections.ConfigDict:
  """All optimizer fields with their defaults (AdamW, the ScaleNet-grow recipe)."""
  return ml_collections.ConfigDict(
      dict(
          name="adamw",  # 'adamw' | 'sgd' (SGD is Nesterov momentum; the NAS recipe)
          lr=2e-4,  # peak learning rate (after warmup)
          min_lr=0.0,  # end value of the cosine decay
          warmup_init_lr=0.0,  # learning rate at step 0 of the linear warmup
          warmup_steps=0,  # in optimizer steps (i.e. after gradient accumulation)
          total_steps=-1,  # in optimizer steps; required (> warmup_steps)
          b1=0.9,
          b2=0.999,
          eps=1e-8,  # AdamW
          momentum=0.9,
          nesterov=True,  # SGD
          weight_decay=0.05,
          no_decay=list(DEFAULT_NO_DECAY),  # param-path regexes with weight decay 0
          wd_mults=[],  # [[regex, multiplier], ...], first match wins (NAS: convs 2x)
          clip_grad_norm=0.0,  # global-norm clipping of the (averaged) trainable gradients; 0 = off
          grad_accum_steps=1,  # optax.MultiSteps: one optimizer step every k train steps (grads averaged)
          trainable="all",  # 'all' or a list of param-path regexes
      )
  )


def _resolve_config(config: Any) -> ml_collections.ConfigDict:
  """Defaults overridden by `config`; raises on unknown keys and obviously bad values."""
  if not hasattr(config, "items"):
    raise ValueError(f"optimizer config must be a mapping or ConfigDict, got {type(config).__name__}")
  merged = default_config().to_dict()
  for key, value in config.items():
    if key not in merged:
      raise ValueError(f"unknown optimizer config key {key!r} (known: {sorted(merged)})")
    merged[key] = value
  base = ml_collections.ConfigDict(merged)
  if base.name not in ("adamw", "sgd"):
    raise ValueError(f"optimizer name must be 'adamw' or 'sgd', got {base.name!r}")
  if base.total_steps <= 0 or base.total_steps <= base.warmup_steps:
    raise ValueError(f"optimizer total_steps={base.total_steps} must be > warmup_steps={base.warmup_steps}")
  if base.grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps must be >= 1, got {base.grad_accum_steps}")
  return base


def path_str(path) -> str:
  """'/'-joined key path of a pytree leaf (dict keys, attribute names, sequence indices)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _map_paths(fn: Callable[[str, Any], Any], tree):
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), tree)


def _compile(patterns: Sequence[str], what: str) -> list[re.Pattern]:
  if isinstance(patterns, str):
    raise ValueError(f"{what} must be a list of regexes, got the string {patterns!r}")
  try:
    return [re.compile(p) for p in patterns]
  except re.error as e:
    raise ValueError(f"bad regex in {what}: {e}") from None


def param_labels(params, trainable_patterns: str | Sequence[str] = "all"):
  """Pytree of 'trainable' / 'frozen' labels, one per leaf of `params` (abstract shapes are fine).

  `trainable_patterns` is 'all' or a list of regexes (re.search on the param path). Each pattern must match
  at least one parameter, and at least one parameter must be trainable, so typos cannot silently freeze
  the whole model.
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
  """Pytree of bools (True = trainable), same structure as `params`."""
  return jax.tree_util.tree_map(lambda l: l == TRAINABLE, param_labels(params, trainable_patterns))


def count(params, mask=None) -> int:
  """Number of scalar parameters (optionally only leaves where the bool pytree `mask` is True)."""
  sizes = jax.tree_util.tree_map(lambda x: math.prod(x.shape), params)
  if mask is not None:
    sizes = jax.tree_util.tree_map(lambda s, m: s if m else 0, sizes, mask)
  return int(sum(jax.tree_util.tree_leaves(sizes)))


def make_lr_schedule(config) -> optax.Schedule:
  """Linear warmup then cosine decay to `min_lr`, as a function of the *optimizer* step."""
  c = _resolve_config(config)
  return optax.warmup_cosine_decay_schedule(
      init_value=c.warmup_init_lr,
      peak_value=c.lr,
      warmup_steps=c.warmup_steps,
      decay_steps=c.total_steps,
      end_value=c.min_lr,
  )


def make_train_lr_fn(config) -> Callable:
  """Learning rate as a function of the *train-step* counter (accounts for gradient accumulation)."""
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


def make_optimizer(config, params_abstract) -> optax.GradientTransformation:
  """The full optimizer for `params_abstract` (a param pytree; `jax.ShapeDtypeStruct` leaves are fine).

  Trainable branch: [clip] -> AdamW (scale_by_adam, decoupled decay) or SGD (decay added to the gradient,
  Nesterov momentum) -> warmup-cosine learning rate, wrapped in `optax.MultiSteps` when
  grad_accum_steps > 1. Frozen branch: `optax.set_to_zero()` (no state).
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
  labels = param_labels(params_abstract, c.trainable)
  return optax.multi_transform({TRAINABLE: inner, FROZEN: optax.set_to_zero()}, labels)
