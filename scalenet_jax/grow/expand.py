"""Depth expansion as pure functions on param trees: ScaleNet and the baselines of the paper.

`expand(pretrained_params, model, spec) -> (expanded_model, params)`

* `scalenet`: the expanded model has the same core stacks (each pretrained tensor held once);
  its blocks gather them through the layout's mapping. Every per-block param that is not an
  adjustment module (the LayerNorms / RMSNorms, whatever a family names them) is a copy of the
  source layer's; adjustment modules start at identity (B = 0). So at init the expanded model
  computes exactly the pretrained layers run in the mapped order.
* baselines (`random`/`stack`/`interpolate`/`swa`) add `k` *independent* layers, where
  `k` is `spec.num_new_layers` or, when 0, the count that brings the parameter count closest to
  the ScaleNet model's (at least one layer). `scratch` is an R-times deeper model, randomly initialised.
"""

from __future__ import annotations

import jax
import numpy as np

from scalenet_jax import counting
from scalenet_jax.grow import spec as spec_lib
from scalenet_jax.grow.spec import ExpansionSpec, model_layouts
from scalenet_jax.errors import ConfigError
from scalenet_jax.models.stack import ADJUST_KINDS


def _check_plain(model):
  if not model.is_plain:
    raise ValueError("expand() takes a plain (unexpanded) pretrained model")


def _stack_np(trees):
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def _take(tree, i):
  return jax.tree.map(lambda a: np.asarray(a)[i], tree)


def expand(pretrained_params, model, spec: ExpansionSpec, fresh=None):
  """Expand a plain pretrained `model` with `pretrained_params` according to `spec`.

  Args:
    pretrained_params: the params pytree of the plain `model` (numpy or device arrays).
    model: the plain (unexpanded) pretrained model.
    spec: what to grow and how (`kind`, mapping, adjustment, baseline layer count).
    fresh: params of the expanded structure (e.g. a train state's init, saving a second init compile)
      that new params (adjustment modules, random layers) are taken from; None = an init with
      `spec.seed`.

  Returns:
    `(expanded_model, params)`: the structure of `expanded_model(model, spec)` and its params (numpy),
    which at init compute the pretrained layers in the mapped order (ScaleNet) or hold the baseline's
    new layers; `scratch` returns the fresh init.

  Raises:
    ValueError: `model` is already expanded.
    ConfigError: a mapping or subset that does not fit the model's stacks.
  """
  _check_plain(model)
  new = expanded_model(model, spec)
  fresh = new.init_params(spec.seed) if fresh is None else jax.tree.map(np.asarray, fresh)
  if spec.kind == "scalenet":
    return new, _expand_scalenet(pretrained_params, new, fresh)
  if spec.kind == "scratch":
    return new, fresh
  return new, _grown(pretrained_params, model, spec, new, fresh)


def scalenet_model(model, spec: ExpansionSpec):
  """The ScaleNet-expanded structure of the plain `model`: its stacks with the layouts of `spec`."""
  layouts = model_layouts(model.depths, spec)
  return model.with_layouts(layouts, rank=spec.rank, adapter_act=spec.act)


def _expand_scalenet(pre, new, fresh):
  params = {k: v for k, v in jax.tree.map(np.asarray, dict(pre)).items()}
  for name, layout in zip(new.stack_names(), new.stack_layouts):
    old = pre[name]
    stack = {"core": jax.tree.map(np.asarray, old["core"])}  # shared: held once, unchanged
    for k, (start, stop, _) in enumerate(layout.segments()):
      seg = dict(fresh[name][f"seg{k}"])  # adjustment modules: fresh (B = 0)
      src = np.asarray(layout.mapping[start:stop])
      for p, value in old["seg0"].items():  # each block owns a copy of its source layer's norms
        if not _is_adjustment(p):
          seg[p] = _take(value, src)
      stack[f"seg{k}"] = seg
    params[name] = stack
  return params


def _is_adjustment(name: str) -> bool:
  """Per-block params of adjustment modules are named `<kind>_<linear>` (`adapter_fc1`, `lora_q`)."""
  return name.startswith(tuple(f"{k}_" for k in ADJUST_KINDS if k != "none"))


# ----------------------------------------------------------------------------------------------
# Baselines: new independent layers
# ----------------------------------------------------------------------------------------------
def _layer(stack, i):
  return {"core": _take(stack["core"], i), "block": _take(stack["seg0"], i)}


def _assemble(layers):
  s = _stack_np(layers)
  return {"core": s["core"], "seg0": s["block"]}


def _new_layer_plan(kind, num_layers, k, rng):
  """Sequence of ('old', i) / ('new', source) entries of the grown stack."""
  if kind == "interpolate":
    sources = set(int(s) for s in np.floor((np.arange(k) + 0.5) * num_layers / k)) if k <= num_layers else None
    if sources is None:
      raise ConfigError(f"interpolate baseline supports at most {num_layers} new layers, got {k}")
    plan = []
    for l in range(num_layers):
      plan.append(("old", l))
      if l in sources:
        plan.append(("copy", l))
    return plan
  plan = [("old", l) for l in range(num_layers)]
  if kind == "stack":
    return plan + [("copy", j % num_layers) for j in range(k)]
  if kind == "random":
    return plan + [("random", j) for j in range(k)]
  if kind == "swa":
    size = min(num_layers, max(2, num_layers // 2))  # a one-layer stack averages just that layer
    return plan + [("avg", tuple(sorted(rng.choice(num_layers, size, replace=False)))) for _ in range(k)]
  raise ValueError(f"unknown baseline {kind!r}")


def _grown_stacks(model, spec) -> tuple[int, ...]:
  """Stacks a baseline grows: the ViT's one stack, or the chosen Swin stages (default: the last)."""
  return spec_lib.expanded_stacks(model.depths, spec)


def _grown_model(model, spec, k):
  grow = _grown_stacks(model, spec)
  return model.with_plain_depths([d + (k if i in grow else 0) for i, d in enumerate(model.depths)])


def expanded_model(model, spec: ExpansionSpec):
  """The structure `expand` produces, without building any params (cheap: for summaries).

  Args:
    model: the plain (unexpanded) model.
    spec: the expansion.

  Returns:
    The expanded model: shared-core layouts (`scalenet`), an R-times deeper plain model (`scratch`), or
    the plain model with the baseline's new layers in its grown stacks.

  Raises:
    ValueError: `model` is already expanded.
    ConfigError: a mapping or subset that does not fit the model's stacks.
  """
  _check_plain(model)
  if spec.kind == "scalenet":
    return scalenet_model(model, spec)
  if spec.kind == "scratch":
    return model.with_plain_depths([l.depth for l in model_layouts(model.depths, spec)])
  return _grown_model(model, spec, spec.num_new_layers or matched_new_layers(model, spec))


def _grown(pre, model, spec, new, fresh):
  grow = set(_grown_stacks(model, spec))
  k = max(a - b for a, b in zip(new.depths, model.depths))
  params = {k_: v for k_, v in jax.tree.map(np.asarray, dict(pre)).items()}
  rng = np.random.RandomState(spec.seed)
  for i, name in enumerate(model.stack_names()):
    if i not in grow:
      continue
    old, layers, rand = pre[name], [], 0
    for what, src in _new_layer_plan(spec.kind, model.depths[i], k, rng):
      if what in ("old", "copy"):
        layers.append(_layer(old, src))
      elif what == "random":
        layers.append(_layer(fresh[name], model.depths[i] + rand))
        rand += 1
      else:  # average of randomly sampled pretrained layers
        layers.append(jax.tree.map(lambda *xs: np.mean(xs, axis=0), *[_layer(old, s) for s in src]))
    params[name] = _assemble(layers)
  return params


def param_count(model) -> int:
  """Number of parameters of `model` (from its abstract params; nothing is allocated)."""
  return counting.count_params(model.abstract_params())


def matched_new_layers(model, spec: ExpansionSpec) -> int:
  """Layers a baseline adds so its parameter count is closest to the ScaleNet model's.

  Args:
    model: the plain model.
    spec: the baseline's spec; its ScaleNet counterpart has the same reuse, mapping and adjustment.

  Returns:
    The number of new layers per grown stack (at least 1).
  """
  target = param_count(scalenet_model(model, spec))
  base = param_count(model)
  per_layer = param_count(_grown_model(model, spec, 1)) - base
  return max(1, int(round((target - base) / per_layer)))


def trainable_patterns(spec: ExpansionSpec) -> tuple[str, ...]:
  """Param-path regexes of the trainable set of `spec` (`optim.trainable_mask` patterns).

  Args:
    spec: the expansion (`trainable`, `kind`, `adjust`).

  Returns:
    A tuple of regexes over '/'-joined param paths; `('.*',)` for `trainable='all'` and for `scratch`.
  """
  if spec.trainable == "all" or spec.kind == "scratch":
    # A random init has no pretrained weights to keep frozen: the paper's scratch rows (and
    # `configs/swin_*_2x.py:scratch`, whose recipe says adjust_ln_head) train every parameter.
    return (".*",)
  # Adjustment modules, every norm (norm, norm1, patch_norm, attn_norm ...) and, for `adjust_ln_head`,
  # the head (a decoder's untied LM head; a tied one is the input embedding and stays frozen); shared
  # core weights stay frozen.
  patterns = (r"(^|/)([a-z]+_)?norm\d*/",)
  if spec.trainable == "adjust_ln_head":
    patterns += (r"^head/",)
  if spec.kind == "scalenet" and spec.adjust != "none":
    patterns += (r"/(adapter|lora)_",)
  if spec.kind in ("random", "stack", "interpolate", "swa"):
    patterns += (r"/core/",)  # only the new layers' rows: see trainable_rows
  return patterns


def trainable_rows(model, spec: ExpansionSpec) -> dict[str, np.ndarray]:
  """Baselines under a restricted trainable set: which rows of each stacked core leaf are new (trainable).

  Pretrained layers stay frozen like ScaleNet's shared ones.

  Args:
    model: the plain model.
    spec: the expansion.

  Returns:
    `{stack name ('blocks', 'stage3'): bool array [depth of the grown stack]}`, True on the new layers
    (all False in stacks that do not grow); empty for `trainable='all'` and for non-baseline kinds.
  """
  if spec.trainable == "all" or spec.kind not in ("random", "stack", "interpolate", "swa"):
    return {}
  grow = _grown_stacks(model, spec)
  k = spec.num_new_layers or matched_new_layers(model, spec)
  rows = {}
  for i, (name, d) in enumerate(zip(model.stack_names(), model.depths)):
    if i in grow:
      plan = _new_layer_plan(spec.kind, d, k, np.random.RandomState(spec.seed))
      rows[name] = np.array([what != "old" for what, _ in plan])
    else:
      rows[name] = np.zeros(d, bool)
  return rows
