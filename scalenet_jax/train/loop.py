"""The one training loop: grow fine-tuning, plain training, the NAS super-supernet and stand-alone retraining.

A driver describes *what* to train as a `Task` (apply function, variables, step batches, trainable set,
evaluation, export); `Loop(config, workdir, task)` does the rest the same way for all of them:

* The workdir's lock (`workdir_lock`: one run per workdir), taken before anything is written and released
  by `close()` (or at the end of `train()`).
* Mesh and optimizer from the config (`config_lib.base_config()` fields).
* State: built sharded on the devices; restored from this workdir's latest good checkpoint if there is one,
  else the task's initial variables (pretrained / expanded / host-built) or its on-device init.
* `Loop.train()`: the jitted step, a device-side NaN guard (no per-step host sync), periodic log / eval /
  checkpoint, metrics.jsonl + TensorBoard, progress lines, the final save and the final evaluation.

Data order and randomness are pure functions of (seed, step), so a run killed at any point and restarted
from its last checkpoint ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp

from scalenet_jax import jax_utils, paths
from scalenet_jax.errors import ConfigError, TrainingDiverged
from scalenet_jax.jax_utils import print0
from scalenet_jax.train import checkpoint as ckpt_lib
from scalenet_jax.train import distributed, optim
from scalenet_jax.train import metrics as metrics_lib
from scalenet_jax.train import sharding as sh
from scalenet_jax.train import step as step_lib
from scalenet_jax.train import workdir_lock


@dataclasses.dataclass
class Task:
  """What a `Loop` trains (everything model-, data- and paper-specific).

  Attributes:
    apply_fn: the step contract of `train/step.py` (`flax_apply_fn(module)`).
    abstract_variables: {'params': ..., other collections}: `jax.ShapeDtypeStruct` leaves.
    batches: `batches(start_step)` -> iterator of this host's step batches from `start_step` on.
    init_fn: `init_fn(rng) -> variables`, traced and run sharded on the devices (a fresh random init).
    initial_variables: `() -> variables` as host arrays (pretrained, expanded or host-built); used instead
      of `init_fn` on a fresh start. One of the two is required.
    tag: mixed into the checkpoint fingerprint, so a workdir of another task/model is refused.
    trainable_mask: bool pytree like the params (leaves may be bool arrays over a stacked leaf's rows);
      frozen leaves and rows get no update and hold no optimizer state. None = everything trains.
    batch_transform: `batch_transform(rng, batch) -> batch` traced inside the train step (Mixup / CutMix),
      or None.
    compute_dtype: dtype of the forward / backward pass (params stay float32 masters).
    use_ema: keep an EMA of the params (`config.ema_decay`) and evaluate it.
    eval_batches: `() -> iterator` of eval step batches with 'mask' (periodic and final evaluation: the
      objective's metrics over every real example / token), or None.
    export: `export(state) -> dict` run at the end of training (its dict joins the run's info), or None.
    label: shown in progress lines.
    objective: what the step optimises and evaluates (`train/objectives.py`); None = classification with
      `config.label_smoothing`.
    meta: extra JSON saved with every checkpoint.
    input_specs: `input_specs(n) -> {name: (model inputs, model_kwargs or None)}` for a global batch of n,
      as `jax.ShapeDtypeStruct`s: one entry per program training compiles ('' for one; the NAS supernet
      has one per resolution). The objective adds the labels (`batch_spec`). What `--mode compile`
      lowers (`scalenet_jax.tpu_check`); None = not compilable ahead of time.
  """

  apply_fn: Callable
  abstract_variables: dict
  batches: Callable[[int], Iterator[dict]]
  init_fn: Optional[Callable[[jax.Array], dict]] = None
  initial_variables: Optional[Callable[[], dict]] = None
  tag: str = ""
  trainable_mask: Any = None
  batch_transform: Optional[Callable] = None
  compute_dtype: Any = jnp.float32
  use_ema: bool = False
  eval_batches: Optional[Callable[[], Iterator[dict]]] = None
  export: Optional[Callable[[step_lib.TrainState], dict]] = None
  label: str = ""
  objective: Any = None
  meta: dict = dataclasses.field(default_factory=dict)  # extra JSON saved with every checkpoint
  input_specs: Optional[Callable[[int], dict]] = None


def objective_of(config, task: Task):
  """What the task's step optimises: its own objective, else classification with the config's smoothing."""
  return step_lib.Classification(config.label_smoothing) if task.objective is None else task.objective


def make_optimizer(config, task: Task):
  """The optimizer of a task's trainable set.

  Args:
    config: a train config (`config.optim`, `config.steps`).
    task: the task (its params and trainable mask).

  Returns:
    `(tx, optim_config)`: the optax transformation and `optimizer_config(config)` (`total_steps` filled).
  """
  c = optimizer_config(config)
  trainable = "all" if task.trainable_mask is None else task.trainable_mask
  return optim.make_optimizer(c, task.abstract_variables["params"], trainable), c


def state_init_fn(task: Task) -> Callable:
  """The on-device init of a task's variables.

  With host-side initial variables it only has to produce the right shapes (zeros): they are put in place
  afterwards.

  Args:
    task: the task.

  Returns:
    `init(rng) -> variables`.

  Raises:
    ValueError: the task has neither `init_fn` nor `initial_variables`.
  """
  if task.init_fn is None and task.initial_variables is None:
    raise ValueError("Task needs init_fn or initial_variables")
  if task.initial_variables is None:
    return task.init_fn
  return lambda _: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), task.abstract_variables)


def train_step(config, task: Task, tx, optim_config: dict, mesh, shardings, compiler_options=None):
  """The jitted train step of a task (`step.make_train_step` with the config's recipe).

  What `Loop.train` runs and `--mode compile` compiles.

  Args:
    config: a train config (`label_smoothing`, `ema_decay`).
    task: the task.
    tx: its optimizer (`make_optimizer`).
    optim_config: the optimizer config of `make_optimizer` (lr schedule, `grad_accum_steps`).
    mesh: the device mesh.
    shardings: the `TrainState` of shardings (`step.create_train_state`).
    compiler_options: XLA options (`jax_utils.compile_options`), or None.

  Returns:
    `step(state, batch) -> (state, metrics)` (see `step.make_train_step`).
  """
  return step_lib.make_train_step(
      task.apply_fn,
      tx,
      mesh,
      shardings,
      trainable_mask=task.trainable_mask,
      lr_fn=optim.make_train_lr_fn(optim_config),
      grad_accum_steps=optim_config["grad_accum_steps"],
      objective=objective_of(config, task),
      ema_decay=config.ema_decay if task.use_ema else None,
      batch_transform=task.batch_transform,
      compute_dtype=task.compute_dtype,
      compiler_options=compiler_options,
  )


def eval_step(config, task: Task, mesh, shardings, compiler_options=None):
  """The jitted eval step of a task (`step.make_eval_step`); arguments as in `train_step`.

  Returns:
    `eval_step(state, batch) -> sums` of the task's objective.
  """
  return step_lib.make_eval_step(
      task.apply_fn,
      mesh,
      shardings,
      compute_dtype=task.compute_dtype,
      use_ema=task.use_ema,
      compiler_options=compiler_options,
      objective=objective_of(config, task),
  )


def check_batch_sizes(config, mesh, task: Task) -> None:
  """Raises `ConfigError` unless the global batches the task's steps split over the mesh's data axis
  divide over it: `batch_size`, and `eval_batch_size` only when the task evaluates (a supernet's run
  does not: its paths are evaluated by `nas.evaluate`)."""
  data_size = mesh.shape["data"]
  for name in ("batch_size",) + (("eval_batch_size",) if task.eval_batches is not None else ()):
    if config[name] % data_size:
      raise ConfigError(f"{name}={config[name]} is not divisible by the {data_size} devices of the mesh's data axis")


def optimizer_config(config) -> dict:
  """`config.optim` with `total_steps` filled from the run's steps when unset."""
  c = config.optim.to_dict()
  if c["total_steps"] is None:
    c["total_steps"] = max(config.steps // config.optim.grad_accum_steps, config.optim.warmup_steps + 1)
  return c


class Loop:
  """Restore-or-init on construction; `train()` runs the remaining steps. See the module docstring.

  Args:
    config: a train config (`config_lib.base_config()` fields: mesh, optimizer, steps, logging, seed).
    workdir: the run's directory (local or gs://): lock, checkpoints, metrics.
    task: what to train.

  Raises:
    WorkdirBusy: a live run holds the workdir.
    ConfigError: batch sizes that do not divide over the mesh.
    CheckpointError: the workdir holds a checkpoint of another model / task.
  """

  def __init__(self, config, workdir, task: Task):
    distributed.maybe_initialize()
    self.config, self.task = config, task
    self.objective = objective_of(config, task)
    self.workdir = paths.path(workdir)
    self.ckpt = None
    # One writer per workdir: taken before anything is written (WorkdirBusy if a live run holds it).
    self.lock = workdir_lock.WorkdirLock(self.workdir).acquire()
    try:
      self._setup(config, task)
    except BaseException:
      self.close()
      raise

  def _setup(self, config, task: Task) -> None:
    self.workdir.mkdir(parents=True, exist_ok=True)

    # ---- Mesh
    self.mesh = sh.make_mesh(config.mesh_data, config.mesh_model)
    check_batch_sizes(config, self.mesh, task)

    # ---- Optimizer and sharded state
    self.tx, self.optim_config = make_optimizer(config, task)
    self.state, self.shardings = step_lib.create_train_state(
        state_init_fn(task),
        self.tx,
        self.mesh,
        jax.random.key(config.seed),
        mode=config.sharding,
        use_ema=task.use_ema,
    )
    digest = ckpt_lib.fingerprint(task.abstract_variables) + task.tag
    self.fingerprint = hashlib.sha256(digest.encode()).hexdigest()[:16]

    # ---- Restore: own checkpoint, else the task's initial variables
    self.ckpt = ckpt_lib.Checkpointer(self.workdir, max_to_keep=config.keep_checkpoints)
    restored = self.ckpt.restore_into(self.state, self.shardings, self.fingerprint)
    if restored is not None:
      self.start, self.state = restored
      print0(f"resumed from {self.workdir} at step {self.start}")
    else:
      self.start = 0
      if task.initial_variables is not None:
        self._set_variables(task.initial_variables())
    self._eval_step = None

  def _set_variables(self, variables: dict) -> None:
    variables = dict(variables)
    if ckpt_lib.fingerprint(variables) != ckpt_lib.fingerprint(self.task.abstract_variables):
      raise ValueError("the task's initial variables do not match its abstract variables")
    params = jax.device_put(variables.pop("params"), self.shardings.params)
    ms = jax.device_put(variables, self.shardings.model_state) if variables else None
    ema = jax.tree.map(jnp.copy, params) if self.task.use_ema else None
    self.state = self.state.replace(params=params, model_state=ms, ema_params=ema)

  # ---- Steps
  @property
  def eval_step(self):
    """The task's jitted eval step, built on first use."""
    if self._eval_step is None:
      options = jax_utils.compile_options(self.config.xla_opt_level)
      self._eval_step = eval_step(self.config, self.task, self.mesh, self.shardings, options)
    return self._eval_step

  def evaluate(self, batches: Optional[Iterator[dict]] = None) -> dict:
    """The objective's metrics of the current params over `batches`.

    Padded examples / tokens (mask 0) are excluded.

    Args:
      batches: host step batches with 'mask'; None = the task's eval batches.

    Returns:
      `objective.metrics` of the summed batches: top-1 / top-5 / mean loss, or next-token loss and
      perplexity; {} when `batches` is None and the task has no eval batches.
    """
    if batches is None:
      if self.task.eval_batches is None:
        return {}
      batches = self.task.eval_batches()
    sums = None
    for b in batches:
      out = self.eval_step(self.state, sh.make_global_batch(b, self.mesh))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    return self.objective.metrics(jax.device_get(sums))

  def _train_step(self):
    options = jax_utils.compile_options(self.config.xla_opt_level)
    return train_step(self.config, self.task, self.tx, self.optim_config, self.mesh, self.shardings, options)

  def save(self, step: int) -> None:
    """Checks the workdir lock, then saves the state at `step` (forced, async)."""
    self.lock.check()  # a lease taken over by another run: stop before writing
    self.ckpt.save(step, self.state, {"fingerprint": self.fingerprint, **self.task.meta}, force=True)

  # ---- Loop
  def train(self) -> dict:
    """Trains from `self.start` to `config.steps`, then evaluates and exports.

    Returns:
      The run's info: workdir, start step, steps, compile / per-step / training seconds, the final
      evaluation's metrics and the export's dict.

    Raises:
      TrainingDiverged: the loss became NaN / inf (found at the next log or checkpoint step); the last good
        checkpoint stays.
      WorkdirBusy: another run took the workdir's lease over.
    """
    c = self.config
    info = {"workdir": str(self.workdir), "start_step": self.start, "steps": c.steps}
    writer = metrics_lib.Writer(self.workdir)
    progress = metrics_lib.Progress(c.steps, self.task.label)
    first_bad = jnp.asarray(-1, jnp.int32)  # device-side: first step with a non-finite loss
    t_start, t_loop, timed_steps, last_good = time.perf_counter(), None, 0, self.start
    trained = False
    try:
      if c.steps > self.start:
        train_step = self._train_step()
        batches = self.task.batches(self.start)
        for step in range(self.start, c.steps):
          batch = sh.make_global_batch(next(batches), self.mesh)
          t0 = time.perf_counter()
          self.state, m = train_step(self.state, batch)
          first_bad = jnp.where((first_bad < 0) & ~m["is_finite"], step + 1, first_bad)
          if step == self.start:
            jax.block_until_ready(m)
            info["compile_sec"] = time.perf_counter() - t0
            t_loop, timed_steps = time.perf_counter(), 0
          else:
            timed_steps += 1
          done = step + 1
          is_log = done % c.log_every == 0 or done == c.steps
          is_ckpt = bool(c.ckpt_every) and done % c.ckpt_every == 0
          if (is_log or is_ckpt) and int(first_bad) >= 0:
            raise TrainingDiverged(
                f"loss became NaN/inf at step {int(first_bad)}; stopped, last good checkpoint is step "
                f"{last_good} in {self.workdir}"
            )
          if is_log:
            logged = {k: float(v) for k, v in jax.device_get(m).items()}
            rate = timed_steps / (time.perf_counter() - t_loop) if timed_steps else 0.0
            logged.update(steps_per_sec=rate, images_per_sec=rate * c.batch_size)
            writer.write(done, logged)
            progress(done, logged)
          if is_ckpt:
            self.save(done)
            last_good = done
          if c.eval_every and done % c.eval_every == 0 and done != c.steps and self.task.eval_batches:
            ev = self.evaluate()
            writer.write(done, ev)
            print0(f"  eval @ {done}: " + " ".join(f"{k} {v:.4f}" for k, v in ev.items() if isinstance(v, float)))
        jax.block_until_ready(self.state)
        if timed_steps:
          info["sec_per_step"] = (time.perf_counter() - t_loop) / timed_steps
        if last_good != c.steps:
          self.save(c.steps)
      info["train_sec"] = time.perf_counter() - t_start
      ev = self.evaluate()
      if ev:
        writer.write(c.steps, ev)
        info.update(ev)
      trained = True
    finally:
      self._close_checkpoints()
      writer.close()
      if not trained:
        self.lock.release()  # nothing more is written
    try:
      if self.task.export is not None:
        info.update(self.task.export(self.state))
    finally:
      self.close()  # the export is written under the lock too
    return info

  def _close_checkpoints(self) -> None:
    if self.ckpt is not None:
      self.ckpt.close()
      self.ckpt = None

  def close(self) -> None:
    """Waits for the last checkpoint write, then releases the workdir (idempotent)."""
    try:
      self._close_checkpoints()
    finally:
      self.lock.release()
