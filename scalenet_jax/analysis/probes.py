"""What the analyses measure on a model: per-block outputs, per-layer gradient norms, accuracy.

Blocks are numbered in forward order over all stacks (ViT: one stack `blocks`; Swin: `stage0`...), and
`block_table` says, for each, its stack, its index inside the stack and the core layer whose weights it
runs. Block outputs come from `Block`'s `sow('intermediates', 'block_out', ...)` (stacked over each scanned
segment), so the model code is unchanged otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from scalenet_jax.models import stack as stack_lib
from scalenet_jax.train import objectives


@dataclasses.dataclass(frozen=True)
class BlockInfo:
  stack: str  # param-tree name of the stack ('blocks', 'stage2', ...)
  index: int  # block index inside the stack
  core: int  # core layer (of that stack) whose weights the block runs

  @property
  def label(self) -> str:
    return f"{self.stack}.{self.index}"


def block_table(model) -> list[BlockInfo]:
  """Every block of `model` in forward order."""
  return [
      BlockInfo(name, i, c)
      for name, layout in zip(model.stack_names(), model.stack_layouts)
      for i, c in enumerate(layout.mapping)
  ]


def is_shared(model) -> bool:
  """True when some core layer is run by more than one block (a ScaleNet-expanded model)."""
  return any(len(set(l.mapping)) < l.depth for l in model.stack_layouts)


# ----------------------------------------------------------------------------------------------
# Block outputs
# ----------------------------------------------------------------------------------------------
# Compiled functions are cached per model (linen modules hash and compare by their fields), so measuring
# the same model twice, or an equal clone, compiles once.
@functools.lru_cache(maxsize=64)
def make_block_outputs_fn(model):
  """Jitted `(params, images) -> (logits, [block output (B, tokens, C) per block, forward order])`."""
  names = model.stack_names()
  layouts = model.stack_layouts

  @jax.jit
  def fn(params, images):
    logits, state = model.apply({"params": params}, images, train=False, mutable=["intermediates"])
    inter = state["intermediates"]
    outs = []
    for name, layout in zip(names, layouts):
      for k in range(len(layout.segments())):
        (stacked,) = inter[name][f"seg{k}"]["block_out"]  # (blocks in segment, B, tokens, C)
        outs.extend(stacked[i] for i in range(stacked.shape[0]))
    return logits, outs

  return fn


# ----------------------------------------------------------------------------------------------
# Gradient norms
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def make_grad_fn(model):
  """Jitted `(params, images, labels) -> (loss, grads)` of the mean cross-entropy (eval mode)."""

  def loss(params, images, labels):
    logits = model.apply({"params": params}, images, train=False)
    return objectives.cross_entropy(logits.astype(jnp.float32), labels).mean()

  return jax.jit(jax.value_and_grad(loss))


def _leading_axis_norms(tree) -> np.ndarray:
  """L2 norm of each slice `[i]` along the shared leading axis of every leaf of `tree`."""
  sq = [np.square(np.asarray(a, np.float64)).reshape(a.shape[0], -1).sum(1) for a in jax.tree.leaves(tree)]
  return np.sqrt(np.sum(sq, axis=0))


def _global_norm(tree) -> float:
  return float(np.sqrt(sum(np.square(np.asarray(a, np.float64)).sum() for a in jax.tree.leaves(tree))))


def layer_grad_norms(model, grads) -> dict:
  """Per-layer gradient L2 norms of one gradient tree of `model`.

  Returns ``{'core': {stack: [norm of grad core[c], c < num_core]}, 'block': {stack: [norm of the block's own
  params (LNs, adjustment modules), per block]}, 'mapping': {stack: [core of each block]}, 'other': norm of the
  params outside the stacks (embeddings, final norm, head), 'total': global norm}``. In a shared stack the
  gradient of core[c] is the sum over the blocks that run it (the transpose of the gather), and its norm is
  reported once per *distinct* layer.
  """
  grads = jax.device_get(grads)
  out = {"core": {}, "block": {}, "mapping": {}}
  names = model.stack_names()
  for name, layout in zip(names, model.stack_layouts):
    out["core"][name] = _leading_axis_norms(grads[name]["core"]).tolist()
    own = [_leading_axis_norms(grads[name][f"seg{k}"]) for k in range(len(layout.segments()))]
    out["block"][name] = np.concatenate(own).tolist()
    out["mapping"][name] = list(layout.mapping)
  out["other"] = _global_norm({k: v for k, v in grads.items() if k not in names})
  out["total"] = _global_norm(grads)
  return out


def unshare(model, params):
  """An equivalent model in which every block owns a private copy of the core layer it runs.

  Layout `num_core = depth`, identity mapping, same adjustments (so the same segments and per-block
  params); `core` is gathered through the old mapping. Same function as `model`; its core gradient
  `[l]` is block `l`'s own contribution to the shared gradient of `core[mapping[l]]`.
  """
  layouts, new = [], dict(params)
  for name, layout in zip(model.stack_names(), model.stack_layouts):
    layouts.append(stack_lib.StackLayout(layout.depth, tuple(range(layout.depth)), layout.adjust))
    idx = np.asarray(layout.mapping)
    new[name] = {**params[name], "core": jax.tree.map(lambda a: jnp.asarray(a)[idx], params[name]["core"])}
  return model.with_layouts(layouts), new


def gradient_norms(model, params, images, labels, per_instance: bool = False) -> dict:
  """`layer_grad_norms` of the cross-entropy gradient on one batch, plus the loss.

  `per_instance` (shared models) adds `'core_instance': {stack: [norm per block]}`: each block's own
  contribution to its core layer's gradient, computed on `unshare(model, params)`.
  """
  loss, grads = make_grad_fn(model)(params, images, labels)
  out = {"loss": float(loss), **layer_grad_norms(model, grads)}
  if per_instance:
    umodel, uparams = unshare(model, params)
    _, ugrads = make_grad_fn(umodel)(uparams, images, labels)
    out["core_instance"] = layer_grad_norms(umodel, ugrads)["core"]
  return out


# ----------------------------------------------------------------------------------------------
# Accuracy
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def make_logits_fn(model):
  """Jitted `(params, images) -> logits` (eval mode)."""
  return jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))


def accuracy(model, params, batches: Iterable[dict], apply: Optional[Callable] = None) -> dict:
  """Top-1 accuracy over `eval_batches`-style dicts (`image`, `label`, `mask`).

  `apply(params, images) -> logits` replaces the model's own (jitted) apply, e.g. to reuse a compiled one.
  """
  apply = apply or make_logits_fn(model)
  correct = total = 0
  for b in batches:
    pred = np.asarray(jnp.argmax(apply(params, jnp.asarray(b["image"])), -1))
    mask = np.asarray(b["mask"], bool)
    correct += int((pred[mask] == np.asarray(b["label"])[mask]).sum())
    total += int(mask.sum())
  if total == 0:
    raise ValueError("accuracy: no (unmasked) examples in the batches")
  return {"top1": correct / total, "examples": total}
