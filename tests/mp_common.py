"""Shared pieces of the train-step tests: a tiny Flax model, deterministic data and a short training run.

Imported by tests/test_train_step.py, tests/test_multiprocess_step.py and the subprocess entry point
tests/mp_worker.py (which runs the same code under 8 fake CPU devices or as one of 2 jax processes), so
every configuration trains exactly the same model on exactly the same data.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scalenet_jax.train import optim, step

NUM_CLASSES, HIDDEN, IMAGE = 10, 32, (4, 4, 3)


class TinyNet(nn.Module):
  """Dense -> norm -> gelu -> (optional channel mask, as a NAS path would) -> dropout -> head."""

  dropout: float = 0.1
  use_bn: bool = False

  @nn.compact
  def __call__(self, x, train: bool, hidden_mask=None):
    # No bias before BatchNorm: its gradient is exactly 0 up to rounding, and Adam would amplify
    # that rounding noise into full-size updates that differ between device layouts.
    x = nn.Dense(HIDDEN, use_bias=not self.use_bn, name="fc1")(x.reshape(x.shape[0], -1))
    if self.use_bn:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
    else:
      x = nn.LayerNorm(name="norm")(x)
    x = nn.gelu(x)
    if hidden_mask is not None:
      x = x * hidden_mask
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(NUM_CLASSES, name="head")(x)


def make_data(steps: int, batch: int, seed: int = 0):
  """Deterministic (steps, batch, ...) images and int labels, as numpy."""
  r = np.random.default_rng(seed)
  images = r.normal(size=(steps, batch, *IMAGE)).astype(np.float32)
  labels = r.integers(0, NUM_CLASSES, size=(steps, batch)).astype(np.int32)
  return images, labels


def opt_config(**overrides):
  cfg = dict(name="adamw", lr=1e-2, min_lr=1e-4, warmup_steps=2, total_steps=20, weight_decay=0.05, clip_grad_norm=1.0)
  cfg.update(overrides)
  return cfg


def setup(
    mesh,
    *,
    mode="replicate",
    use_bn=False,
    dropout=0.1,
    ema_decay=0.9,
    label_smoothing=0.1,
    opt=None,
    compute_dtype=jnp.float32,
    fsdp_min_size=16,
    trainable="all",
):
  """(state, shardings, train_step, eval_step) for TinyNet on `mesh`."""
  model = TinyNet(dropout=dropout, use_bn=use_bn)
  init_fn = lambda r: model.init(r, jnp.zeros((2, *IMAGE)), train=False)
  cfg = opt_config(**(opt or {}))
  abstract_params = jax.eval_shape(init_fn, jax.random.key(0))["params"]
  tx = optim.make_optimizer(cfg, abstract_params, trainable)
  state, shardings = step.create_train_state(
      init_fn, tx, mesh, jax.random.key(42), mode=mode, fsdp_min_size=fsdp_min_size, use_ema=ema_decay is not None
  )
  apply_fn = step.flax_apply_fn(model)
  train_step = step.make_train_step(
      apply_fn,
      tx,
      mesh,
      shardings,
      trainable_mask=optim.trainable_mask(abstract_params, trainable),
      lr_fn=optim.make_train_lr_fn(cfg),
      grad_accum_steps=cfg.get("grad_accum_steps", 1),
      label_smoothing=label_smoothing,
      ema_decay=ema_decay,
      compute_dtype=compute_dtype,
  )
  eval_step = step.make_eval_step(apply_fn, mesh, shardings, compute_dtype=compute_dtype)
  return state, shardings, train_step, eval_step


def to_host(tree):
  """Numpy copy of a (possibly multi-process sharded) pytree."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree_util.tree_map(np.asarray, tree)


def run(mesh, *, steps=4, batch=16, with_mask=False, global_batch_fn=None, **setup_kwargs):
  """Train `steps` steps; returns losses, is_finite flags, final params/EMA (flat float lists), eval sums.

  `global_batch_fn(batch_dict) -> batch_dict` turns the full host batch into the step's input (default:
  numpy arrays as is; multi-process runs slice their rows and call make_global_batch).
  """
  state, shardings, train_step, eval_step = setup(mesh, **setup_kwargs)
  images, labels = make_data(steps, batch)
  mask = (np.arange(HIDDEN) % 3 != 0).astype(np.float32)  # fixed "path": drop every third channel
  to_input = global_batch_fn or (lambda b: b)
  history = []
  for i in range(steps):
    b = {"images": images[i], "labels": labels[i]}
    if with_mask:
      b["model_kwargs"] = {"hidden_mask": mask}
    state, metrics = train_step(state, to_input(b))
    history.append(metrics)  # no host sync inside the loop
  history = to_host(history)
  eval_batch = {
      "images": images[0],
      "labels": labels[0],
      "mask": (np.arange(batch) < batch - 3).astype(np.float32),
  }  # last 3 rows are padding
  if with_mask:
    eval_batch["model_kwargs"] = {"hidden_mask": mask}
  sums = to_host(eval_step(state, to_input(eval_batch)))
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(to_host(t))]).tolist()
  return dict(
      losses=[float(m["loss"]) for m in history],
      is_finite=[bool(m["is_finite"]) for m in history],
      lrs=[float(m["lr"]) for m in history],
      params=flat(state.params),
      ema=flat(state.ema_params) if state.ema_params is not None else None,
      model_state=flat(state.model_state) if state.model_state is not None else None,
      eval={k: float(v) for k, v in sums.items()},
      specs={optim.path_str(p): str(s.spec) for p, s in jax.tree_util.tree_leaves_with_path(shardings)},
  )


# Configurations compared across device layouts: (name, mesh shape on 8 devices, run kwargs).
# Kept to three because every run compiles its own programs (the test must stay fast on 2 CPU cores).
CONFIGS = [
    ("dp", (8, 1), dict(mode="replicate")),
    ("fsdp_bn_mask", (8, 1), dict(mode="fsdp", use_bn=True, with_mask=True)),
    ("fsdp_4x2", (4, 2), dict(mode="fsdp")),
]

# The 2-process run (2 CPU devices per process, mesh (4, 1)): FSDP across processes plus a model kwarg.
MULTIPROCESS = dict(mode="fsdp", with_mask=True)
