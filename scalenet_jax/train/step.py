"""The generic sharded train / eval step (model-agnostic; serves the expansion recipes and the NAS supernet).

Model contract. `apply_fn(params, inputs, train, rngs, **model_kwargs) -> logits` for stateless models.
Models with extra variable collections (BatchNorm's 'batch_stats') keep them in `TrainState.model_state`;
then the step calls `apply_fn(params, inputs, train, rngs, model_state=..., **model_kwargs)` and expects
`(logits, new_model_state)`. `flax_apply_fn(module)` builds a conforming function from a linen module.

Objective (`train/objectives.py`). What the step optimises and reports: the batch entry the model reads
(`objective.inputs`), the training loss (+ train metrics) and the eval sums. `Classification` (default;
'images' (B, H, W, C), 'labels' (B,) int or (B, K) soft targets) or `NextToken` ('tokens' / 'labels'
(B, T), 'mask' (B, T): the positions whose label counts).

Batch contract. A dict with the objective's entries, optionally 'mask' for padded eval examples and
'model_kwargs' (a dict of arrays replicated on every device, passed as keyword arguments to `apply_fn`,
e.g. the NAS path masks). All other entries are split over 'data'.
Pass numpy arrays (single process) or global arrays from `sharding.make_global_batch`: the jit boundary has
explicit shardings, so a jax.Array committed to another sharding is rejected rather than silently moved.
Train batches are assumed full (no 'mask'); a new batch structure or image size compiles a new program.

Randomness. `rng = fold_in(state.rng, state.step)`, split once for `batch_transform(rng, batch)` (mixup
etc., traced inside the jit) and once per model rng name ('dropout'; drop path uses it too), so a resumed
run reproduces the same randomness and the result does not depend on the number of devices.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from scalenet_jax import jax_utils
from scalenet_jax.train import sharding as sh
from scalenet_jax.train.objectives import Classification


@flax.struct.dataclass
class TrainState:
  """The pytree a train step carries, checkpoints and restores.

  Attributes:
    step: int32 scalar: number of train-step calls (micro-steps under accumulation).
    params: the params pytree.
    opt_state: the optax state of the trainable params.
    model_state: None, or a dict of non-param collections, e.g. {'batch_stats': ...}.
    ema_params: EMA of the params; None unless EMA is enabled.
    rng: raw key data (uint32), so it checkpoints like any other array.
  """

  step: jax.Array  # int32 scalar: number of train-step calls (micro-steps under accumulation)
  params: Any
  opt_state: Any
  model_state: Any  # None, or a dict of non-param collections, e.g. {'batch_stats': ...}
  ema_params: Any  # None unless EMA is enabled
  rng: jax.Array  # raw key data (uint32), so it checkpoints like any other array


def flax_apply_fn(module: nn.Module) -> Callable:
  """`apply_fn` for a linen module following the project convention (model kwargs pass through).

  Args:
    module: a linen module whose `__call__(inputs, train=..., **model_kwargs)` returns logits.

  Returns:
    `apply_fn(params, inputs, train, rngs, model_state=None, **model_kwargs)`: logits, or
    `(logits, new_model_state)` when `model_state` is given (mutable in training).
  """

  def apply_fn(params, images, train, rngs, model_state=None, **model_kwargs):
    if model_state is None:
      return module.apply({"params": params}, images, train=train, rngs=rngs, **model_kwargs)
    variables = {"params": params, **model_state}
    if not train:
      return module.apply(variables, images, train=False, rngs=rngs, **model_kwargs), model_state
    return module.apply(variables, images, train=True, rngs=rngs, mutable=list(model_state), **model_kwargs)

  return apply_fn


# ---------------------------------------------------------------------------------------------- State
def _state_init(init_fn: Callable, tx: optax.GradientTransformation, use_ema: bool) -> Callable:
  """`init(raw key data) -> TrainState` of `init_fn`'s variables."""

  def init(key):
    k_init, k_train = jax.random.split(key)
    variables = nn.meta.unbox(dict(init_fn(k_init)))
    if "params" not in variables:
      raise ValueError(f"init_fn must return a variables dict with 'params', got keys {list(variables)}")
    params = variables.pop("params")
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state=variables or None,
        ema_params=jax.tree_util.tree_map(jnp.copy, params) if use_ema else None,
        rng=jax.random.key_data(k_train),
    )

  return init


def _raw_key(rng) -> jax.Array:
  if jax.dtypes.issubdtype(getattr(rng, "dtype", None), jax.dtypes.prng_key):
    return jax.random.key_data(rng)
  return rng


def abstract_train_state(init_fn: Callable, tx: optax.GradientTransformation, *, use_ema: bool = False):
  """The `TrainState` that `create_train_state` builds, as `jax.ShapeDtypeStruct` leaves.

  Nothing is computed: what an ahead-of-time compile (`scalenet_jax.tpu_check`) lowers the step with.

  Args:
    init_fn, tx, use_ema: as in `create_train_state`.

  Returns:
    A `TrainState` of `jax.ShapeDtypeStruct`s.
  """
  return jax.eval_shape(_state_init(init_fn, tx, use_ema), _raw_key(jax.random.key(0)))


def create_train_state(
    init_fn: Callable,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rng: jax.Array,
    *,
    mode: str = "replicate",
    fsdp_min_size: int = 2**14,
    use_ema: bool = False,
):
  """Sharded initial state, built directly on the devices (never as one unsharded host copy).

  Args:
    init_fn: `init_fn(rng) -> variables`, a flax variables dict with a 'params' entry (e.g.
      `lambda r: model.init(r, dummy_images, train=False)`); other collections become `model_state`.
    tx: the optimizer; its state is initialised on the params.
    mesh: the device mesh.
    rng: a PRNG key (typed or raw key data); split into the init key and the state's training key.
    mode: param sharding, `'replicate'` or `'fsdp'` (`sharding.param_shardings`).
    fsdp_min_size: leaves smaller than this stay replicated under FSDP.
    use_ema: also keep `ema_params` (a copy of the params).

  Returns:
    `(state, state_shardings)`: the `TrainState` and the matching `TrainState` of shardings. The abstract
    state is `jax.eval_shape` of the same init, so the shardings can also serve as a restore target.

  Raises:
    ValueError: `init_fn` returns no 'params'.
  """
  init, rng = _state_init(init_fn, tx, use_ema), _raw_key(rng)
  shardings = sh.param_shardings(jax.eval_shape(init, rng), mesh, mode, fsdp_min_size)
  # Small leaves (step, rng, norm params, optimizer counters) fall under min_size and stay replicated.
  state = jax_utils.run_once(init, rng, in_shardings=sh.replicated(mesh), out_shardings=shardings)
  return state, shardings


# ----------------------------------------------------------------------------------------------- Loss
def _cast_floats(tree, dtype):
  return jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _forward(apply_fn, params, model_state, batch, train, rngs, compute_dtype, inputs="images"):
  """Logits in float32 (and the new model state, or None) with params and float inputs (images, not
  token ids) cast to compute_dtype; `inputs` is the batch entry the model reads."""
  kwargs = dict(batch.get(sh.MODEL_KWARGS, {}))
  if model_state is not None:
    kwargs["model_state"] = model_state
  x = batch[inputs]
  x = x.astype(compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  out = apply_fn(_cast_floats(params, compute_dtype), x, train=train, rngs=rngs, **kwargs)
  logits, new_model_state = out if model_state is not None else (out, None)
  # A dict of logits (a segmentor's heads) is cast leaf by leaf.
  return jax.tree_util.tree_map(lambda l: l.astype(jnp.float32), logits), new_model_state


def _jit_per_batch_structure(fn, state_shardings, mesh, out_shardings, donate_argnums=(), compiler_options=None):
  """jax.jit with explicit in_shardings; the batch shardings depend on the batch's keys, so one jitted
  function is built per batch tree structure (normally exactly one). `compiler_options` go to XLA (e.g.
  {'xla_backend_optimization_level': 1} compiles a CPU step several times faster, for short runs)."""
  cache = {}

  def jitted(batch):
    treedef = jax.tree_util.tree_structure(batch)
    if treedef not in cache:
      cache[treedef] = jax.jit(
          fn,
          in_shardings=(state_shardings, sh.batch_shardings(batch, mesh)),
          out_shardings=out_shardings,
          donate_argnums=donate_argnums,
          compiler_options=compiler_options,
      )
    return cache[treedef]

  def call(first, batch):
    return jitted(batch)(first, batch)

  # The program for (`first`, `batch`) traced without running it (`.jaxpr`, `.lower()`); the args may be abstract
  # (`jax.ShapeDtypeStruct`): what `--mode compile` compiles for a TPU topology on any host.
  call.trace = lambda first, batch: jitted(batch).trace(first, batch)
  call.jitted = cache  # exposed for lowering / cost analysis
  return call


# ---------------------------------------------------------------------------------------------- Train
def _select(trainable, a, b):
  """`a` where trainable else `b`. `trainable` is a Python bool (whole leaf) or a bool array over the
  leading axis of a stacked leaf (e.g. only the new layers of a stacked core are trainable)."""
  if isinstance(trainable, (bool, np.bool_)):
    return a if trainable else b
  t = jnp.asarray(trainable)
  return jnp.where(t.reshape(t.shape + (1,) * (a.ndim - t.ndim)), a, b)


def _row_runs(rows) -> list[tuple[int, int, bool]]:
  """Maximal runs (start, stop, trainable) of a leading-axis row mask."""
  out, start = [], 0
  for value, group in itertools.groupby(np.asarray(rows, bool).tolist()):
    n = len(list(group))
    out.append((start, start + n, value))
    start += n
  return out


class _Partition:
  """Trainable / frozen split of a param tree by a `trainable_mask` (static: built once per step function).

  Only the trainable part is differentiated; frozen leaves (and the frozen rows of a row-masked stacked
  leaf) enter the loss as constants, so the backward pass builds no weight gradient for them at all —
  inside scanned or unrolled block stacks too — and no zero gradient is materialised for them (a
  `stop_gradient` mask still leaves a full-size zero cotangent per frozen leaf). A row-masked leaf is
  rebuilt by concatenating its trainable and frozen row runs, so the gradient reaches only the trainable
  runs (XLA can drop the frozen rows' weight gradients where the stack is unrolled; in a rolled scan
  they are computed and discarded, as before).
  """

  def __init__(self, params, trainable_mask):
    self.treedef = jax.tree_util.tree_structure(params)
    mask = [True] * self.treedef.num_leaves if trainable_mask is None else jax.tree_util.tree_leaves(trainable_mask)
    if len(mask) != self.treedef.num_leaves:
      raise ValueError(f"trainable_mask has {len(mask)} leaves but params have {self.treedef.num_leaves}")
    # Per leaf: True (trainable), False (frozen), or the row runs of a row-masked stacked leaf.
    self.kinds = []
    for t in mask:
      if isinstance(t, (bool, np.bool_)):
        self.kinds.append(bool(t))
      else:
        runs = _row_runs(t)
        self.kinds.append(runs if len(runs) > 1 else runs[0][2])

  def split(self, params):
    """(trainable parts, frozen parts): lists with one entry per leaf (None where the leaf has none)."""
    trainable, frozen = [], []
    for p, kind in zip(self.treedef.flatten_up_to(params), self.kinds):
      if isinstance(kind, bool):
        trainable.append(p if kind else None)
        frozen.append(None if kind else p)
      else:
        trainable.append(jnp.concatenate([p[a:b] for a, b, t in kind if t]))
        frozen.append([p[a:b] for a, b, t in kind if not t])
    return trainable, frozen

  def _leaf(self, kind, t, f):
    if isinstance(kind, bool):
      return t if kind else f
    pieces, used, frozen = [], 0, iter(f)
    for a, b, trainable in kind:
      if trainable:
        pieces.append(t[used : used + b - a])
        used += b - a
      else:
        pieces.append(next(frozen))
    return jnp.concatenate(pieces)

  def merge(self, trainable, frozen):
    """The full param tree from `split`'s parts."""
    return self.treedef.unflatten([self._leaf(k, t, f) for k, t, f in zip(self.kinds, trainable, frozen)])

  def full_grads(self, grads, params):
    """Gradients shaped like the params: zeros for frozen leaves / rows (the optimizer ignores them)."""
    out = []
    for kind, g, p in zip(self.kinds, grads, self.treedef.flatten_up_to(params)):
      if isinstance(kind, bool):
        out.append(g if kind else jnp.zeros_like(p))
      else:
        out.append(self._leaf(kind, g, [jnp.zeros_like(p[a:b]) for a, b, t in kind if not t]))
    return self.treedef.unflatten(out)


def make_train_step(
    apply_fn: Callable,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    state_shardings,
    *,
    trainable_mask=None,
    lr_fn: Callable | None = None,
    grad_accum_steps: int = 1,
    label_smoothing: float = 0.0,
    objective=None,
    ema_decay: float | None = None,
    batch_transform: Callable | None = None,
    compute_dtype=jnp.float32,
    rng_names: Sequence[str] = ("dropout",),
    compiler_options=None,
):
  """Jitted `step(state, batch) -> (state, metrics)`; `state` is donated.

  Args:
    apply_fn: the model contract of this module (`flax_apply_fn(module)`).
    tx: the optimizer.
    mesh: the device mesh.
    state_shardings: the `TrainState` of shardings of `create_train_state`.
    trainable_mask: bool pytree like params (`optim.trainable_mask`); a leaf may also be a bool array over
      its leading (stacked) axis to train only some rows. Only trainable leaves/rows are differentiated
      (frozen ones are constants of the loss: no weight-gradient compute, see `_Partition`), and frozen
      ones are passed through untouched (bit-identical). None = all trainable.
    lr_fn: learning rate as a function of `state.step` for the metrics (`optim.make_train_lr_fn(config)`).
    grad_accum_steps: must equal the optimizer's; EMA is updated only on steps that update the params.
    label_smoothing: of the default objective (ignored when `objective` is given).
    objective: `objectives.Classification(label_smoothing)` when None, or e.g. `objectives.NextToken()`.
    ema_decay: requires a state created with `use_ema=True`.
    batch_transform: `batch_transform(rng, batch) -> batch`, traced inside the step (Mixup / CutMix).
    compute_dtype: e.g. jnp.bfloat16 runs the forward/backward in bf16 on float32 master weights.
    rng_names: the model's rng collections, each given its own key per step.
    compiler_options: XLA options of the compile, or None.

  Returns:
    `step(state, batch) -> (state, metrics)`, jitted once per batch structure. Metrics (device arrays, no
    host sync): loss (the objective's, e.g. mean with smoothing), the objective's train metrics (accuracy:
    argmax vs the labels, or vs the argmax of soft targets; tokens), grad_norm (of this micro-batch's
    trainable gradients, before clipping), lr (only with lr_fn), is_finite (loss and grad_norm finite;
    the loop should stop when False).

  Raises:
    ValueError: `ema_decay` set without an EMA state or the reverse; (on the first call) a
      `trainable_mask` whose leaves do not match the params.
  """
  if (ema_decay is None) != (state_shardings.ema_params is None):
    raise ValueError("ema_decay must be set exactly when the state was created with use_ema=True")
  objective = Classification(label_smoothing) if objective is None else objective

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    rng_batch, rng_model = jax.random.split(rng)
    if batch_transform is not None:
      batch = batch_transform(rng_batch, batch)
    rngs = dict(zip(rng_names, jax.random.split(rng_model, len(rng_names))))
    is_trainable = jax.tree_util.tree_map(lambda _: True, state.params) if trainable_mask is None else trainable_mask
    part = _Partition(state.params, trainable_mask)
    trainable, frozen = part.split(state.params)

    def loss_fn(trainable):
      params = part.merge(trainable, frozen)
      logits, new_ms = _forward(apply_fn, params, state.model_state, batch, True, rngs, compute_dtype, objective.inputs)
      loss, aux = objective.loss(logits, batch)
      return loss, (aux, new_ms)

    (loss, (aux, new_model_state)), trainable_grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    grad_norm = optax.tree.norm(trainable_grads)  # frozen leaves / rows contribute exact zeros
    grads = part.full_grads(trainable_grads, state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree_util.tree_map(
        lambda p, u, t: _select(t, p + u.astype(p.dtype), p), state.params, updates, is_trainable
    )
    ema = state.ema_params
    if ema_decay is not None:
      updated = (state.step + 1) % grad_accum_steps == 0
      ema = jax.tree_util.tree_map(
          lambda e, p, t: _select(t, jnp.where(updated, ema_decay * e + (1.0 - ema_decay) * p, e), e),
          ema,
          params,
          is_trainable,
      )
    metrics = dict(
        loss=loss,
        **aux,
        grad_norm=grad_norm,
        is_finite=jnp.isfinite(loss) & jnp.isfinite(grad_norm),
    )
    if lr_fn is not None:
      metrics["lr"] = jnp.asarray(lr_fn(state.step), jnp.float32)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        ema_params=ema,
        model_state=new_model_state if state.model_state is not None else None,
    )
    return new_state, metrics

  return _jit_per_batch_structure(
      train_step,
      state_shardings,
      mesh,
      (state_shardings, sh.replicated(mesh)),
      donate_argnums=(0,),
      compiler_options=compiler_options,
  )


# ----------------------------------------------------------------------------------------------- Eval
def make_eval_step(
    apply_fn: Callable,
    mesh: Mesh,
    state_shardings,
    *,
    compute_dtype=jnp.float32,
    use_ema: bool = False,
    compiler_options=None,
    objective=None,
):
  """Jitted `eval_step(state, batch) -> sums`: the objective's eval sums (default `Classification`:
  {correct1, correct5, loss_sum, count}; labels int (B,)).

  Padded examples / tokens are excluded via batch['mask'] (true = real). Add the sums over batches on
  the host and finish them with `objective.metrics(sums)`.

  Args:
    apply_fn, mesh, state_shardings, compute_dtype, compiler_options: as in `make_train_step`.
    use_ema: evaluate `state.ema_params`.
    objective: the objective whose `eval_sums` the step returns; None = `Classification()`.

  Returns:
    `eval_step(state, batch) -> sums` (replicated device arrays), jitted once per batch structure.

  Raises:
    ValueError: `use_ema` without an EMA state.
  """
  objective = Classification() if objective is None else objective
  if use_ema and state_shardings.ema_params is None:
    raise ValueError("use_ema=True but the state has no ema_params (create it with use_ema=True)")

  def eval_step(state: TrainState, batch):
    params = state.ema_params if use_ema else state.params
    logits, _ = _forward(apply_fn, params, state.model_state, batch, False, {}, compute_dtype, objective.inputs)
    return objective.eval_sums(logits, batch)

  return _jit_per_batch_structure(
      eval_step, state_shardings, mesh, sh.replicated(mesh), compiler_options=compiler_options
  )
