r"""`--mode compile`: a config's real train (and eval) step compiled for a named TPU slice, on any host.

    python -m scalenet_jax.main --config configs/deit_base_2x.py --mode compile --topology v5e:2x2 \
        [--config.sharding=fsdp --config.model.dtype=bfloat16 --config.model.remat=True ...]

JAX compiles for a TPU topology without the hardware (`jax.experimental.topologies`, with `libtpu`
installed: `pip install scalenet_jax[tpu]`). This builds what `Loop` trains — the config's model,
trainable set, optimizer, state sharding, train step (and eval step when the run evaluates) — as
abstract arrays on the slice's devices, lowers and compiles it, and reports per device:

* memory: parameter, optimizer-state and batch bytes (from the shardings), the compiled program's
  arguments, outputs (less what the donated state aliases) and temporaries; their total against the
  chip's HBM (`CHIPS`, Google Cloud's published figures);
* FLOPs per step: the matmul / conv FLOPs of the traced step (forward, backward and every block of a
  scanned stack: `counting.macs` over the step's jaxpr; elementwise ops not counted), and XLA's own
  count of the compiled program (which counts a while loop's body once: low for scanned stacks);
* a roofline step time, a lower bound: max(FLOPs / peak bf16 FLOP/s, bytes accessed / HBM bandwidth).
  On TPU a float32 matmul at JAX's default precision runs as bf16 passes, so the peak is the bf16 one
  for both compute dtypes; bytes accessed are XLA's (also counted once per loop body);
* images/s (tokens/s for a decoder LM) and MFU at that bound (step FLOPs / (bound x peak x devices)).

The last line is one JSON object. The step that does not fit is a `DoesNotFit` error (one line naming
what would make it fit, exit 2). Topologies: `generation:AxB[xC]` as `jax.experimental.topologies`
takes them (v4:2x2x1, v5e:2x2, v5p:2x2x1, v6e:2x2), or a Cloud accelerator type (v4-8, v5e-8,
v5litepod-16, v5p-8, v6e-4), translated to the slice's chip grid.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import jax
import numpy as np

from scalenet_jax import config_lib, counting
from scalenet_jax.errors import ConfigError, UserError
from scalenet_jax.train import loop as loop_lib
from scalenet_jax.train import sharding as sh
from scalenet_jax.train import step as step_lib

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One JAX device of a TPU generation (a chip; v4 and v5p as megacore: both TensorCores of a chip).

  Figures from Google Cloud's system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p,
  /v6e), as published there: peak compute per chip (bf16), HBM capacity and bandwidth per chip."""

  generation: str
  hbm_bytes: int
  peak_flops: float  # bf16 FLOP/s
  hbm_bandwidth: float  # bytes/s
  cores_per_chip: int  # TensorCores per chip: the unit of an accelerator type's count (v4-8 = 4 chips)
  torus_dims: int  # 3 (v4, v5p) or 2 (v5e, v6e)
  topology_kwargs: tuple = ()  # for `topologies.get_topology_desc`


CHIPS = {
    "v4": Chip("v4", 32 * GiB, 275e12, 1200e9, 2, 3, (("chip_config_name", "megacore"),)),
    "v5e": Chip("v5e", 16 * GiB, 197e12, 819e9, 1, 2),
    "v5p": Chip("v5p", 95 * 10**9, 459e12, 2765e9, 2, 3),
    "v6e": Chip("v6e", 32 * 10**9, 918e12, 1640e9, 1, 2),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e"}
# Chip grids of the slice sizes Cloud sells (chips -> AxB[xC]), per torus dimensionality.
_GRIDS = {
    2: {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
    3: {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8", 512: "8x8x8"},
}


class DoesNotFit(UserError):
  """The step needs more memory per device than the chip has."""


def parse_topology(name: str) -> tuple[Chip, str]:
  """(chip, `generation:AxB[xC]`) of a topology name or a Cloud accelerator type."""
  m = re.fullmatch(r"(v\d+[a-z]*)(?::(\d+(?:x\d+)+)|-(\d+))", name.strip())
  gen = m and _ALIASES.get(m.group(1), m.group(1))
  if not m or gen not in CHIPS:
    raise ConfigError(
        f"unknown TPU topology {name!r}: use generation:AxB[xC] (e.g. v5e:2x2, v4:2x2x1) or an accelerator "
        f"type (e.g. v5e-8, v4-8) with generation one of {sorted(CHIPS)}"
    )
  chip = CHIPS[gen]
  if m.group(2):
    grid = m.group(2)
    if grid.count("x") + 1 != chip.torus_dims:
      raise ConfigError(f"TPU {gen} slices are {chip.torus_dims}-D (e.g. {_GRIDS[chip.torus_dims][4]}), got {grid!r}")
    return chip, f"{gen}:{grid}"
  cores = int(m.group(3))
  grid = _GRIDS[chip.torus_dims].get(cores // chip.cores_per_chip) if cores % chip.cores_per_chip == 0 else None
  if grid is None:
    raise ConfigError(
        f"no known chip grid for {name!r} (counts: {[n * chip.cores_per_chip for n in _GRIDS[chip.torus_dims]]})"
    )
  return chip, f"{gen}:{grid}"


def topology_devices(chip: Chip, topology: str) -> list:
  """The slice's devices for compiling (no hardware). Runs this process on the CPU backend and quiets
  libtpu's probing for a TPU VM it is not on."""
  try:
    import libtpu  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ConfigError("--mode compile needs libtpu: pip install 'scalenet_jax[tpu]'") from e
  # Without these libtpu looks for a TPU VM's metadata and prints errors about TPU_WORKER_HOSTNAMES;
  # ALLOW_MULTIPLE_LIBTPU_LOAD: several compile checks may run side by side (no TPU is opened).
  for key, value in (
      ("TPU_WORKER_HOSTNAMES", "localhost"),
      ("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
      ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
  ):
    os.environ.setdefault(key, value)
  jax.config.update("jax_platforms", "cpu")
  # A persistent cache (the tests keep one) cannot load compile-only TPU programs: it would only warn. A
  # process that compiled before has already decided to use it: reset, so the next compile checks again.
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  return list(topologies.get_topology_desc(topology, "tpu", **dict(chip.topology_kwargs)).devices)


# ---------------------------------------------------------------------------------------------- Task
def loop_config_and_task(config):
  """(the loop's config, the `Task` its pipeline trains) of a run config, without opening any data."""
  config = config_lib.resolve(config)
  name = config.get("pipeline", "train")
  if name == "train":
    from scalenet_jax import trainer  # pylint: disable=g-import-not-at-top

    return config, trainer.make_task(config, None, "compile")[0]
  if name == "lm":
    from scalenet_jax import lm_trainer  # pylint: disable=g-import-not-at-top

    return config, lm_trainer.make_task(config, None, "compile")[0]
  if name == "segment":
    from scalenet_jax import segmenter  # pylint: disable=g-import-not-at-top

    config = segmenter.resolve(config)
    return config, segmenter.make_task(config, None, "compile")[0]
  if name in ("nas_supernet", "nas_search"):
    from scalenet_jax.nas import train_supernet  # pylint: disable=g-import-not-at-top

    sn = config if name == "nas_supernet" else config.supernet
    return sn, train_supernet.supernet_task(sn, source=None, platform="tpu")
  raise ConfigError(
      f"--mode compile supports the pipelines train, lm, segment, nas_supernet and nas_search, not {name!r}"
  )


# ---------------------------------------------------------------------------------------------- Check
def _per_device_bytes(tree, shardings) -> int:
  """Bytes one device holds of `tree` (abstract arrays) under `shardings`."""
  leaves, sh_leaves = jax.tree.leaves(tree), jax.tree.leaves(shardings)
  return sum(math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x, s in zip(leaves, sh_leaves))


def _with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0))}


# The TPU compiler refuses a program whose buffers exceed HBM, e.g. "RESOURCE_EXHAUSTED: Ran out of memory
# on HBM, the total memory required for HLO temporaries (33.42G) exceeds available HBM (15.75G)" (G = GiB).
_OOM_TEMPS = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\)")


def _out_of_memory(error: Exception, arguments: int) -> dict:
  """The record of a program the compiler refused for want of HBM: our count of its arguments plus the
  temporaries the compiler names (when it names them); no costs."""
  m = _OOM_TEMPS.search(str(error))
  temps = int(float(m[1]) * 1024 ** ("KMGT".index(m[2]) + 1)) if m else 0
  message = " ".join(str(error).split())
  message = message[message.find("RESOURCE_EXHAUSTED") :][:300]
  return {
      "out_of_memory": message,
      "argument_bytes": arguments,
      "temp_bytes": temps,
      "bytes_per_device": arguments + temps,
  }


def _program(step, state, batch, n_devices: int, arguments: int) -> dict:
  """Compile `step` for (state, batch); per-device memory (XLA's memory analysis) and costs. `arguments`:
  our count of the state and batch bytes per device, for a program the compiler refuses (out of HBM)."""
  traced = step.trace(state, batch)  # one trace serves the FLOP count and the compile
  try:
    compiled = traced.lower().compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return _out_of_memory(e, arguments)
  mem = compiled.memory_analysis()
  # The donated state's outputs alias its arguments: counted once.
  total = (
      mem.argument_size_in_bytes
      + mem.output_size_in_bytes
      - mem.alias_size_in_bytes
      + mem.temp_size_in_bytes
      + mem.generated_code_size_in_bytes
  )
  xla = _cost(compiled)
  step_flops = 2 * counting.jaxpr_macs(traced.jaxpr.jaxpr) / n_devices
  return {
      "argument_bytes": int(mem.argument_size_in_bytes),
      "output_bytes": int(mem.output_size_in_bytes - mem.alias_size_in_bytes),
      "temp_bytes": int(mem.temp_size_in_bytes),
      "code_bytes": int(mem.generated_code_size_in_bytes),
      "bytes_per_device": int(total),
      "flops_per_step": step_flops,
      "xla_flops_per_step": xla["flops"],
      "xla_bytes_accessed": xla["bytes"],
  }


def _roofline(p: dict, chip: Chip, examples: int, per_example: int) -> dict:
  compute_s = max(p["flops_per_step"], p["xla_flops_per_step"]) / chip.peak_flops
  memory_s = p["xla_bytes_accessed"] / chip.hbm_bandwidth
  bound = max(compute_s, memory_s)
  return {
      "compute_seconds": compute_s,
      "memory_seconds": memory_s,
      "step_seconds_bound": bound,
      "bound_by": "compute" if compute_s >= memory_s else "HBM bandwidth",
      "items_per_second": examples * per_example / bound if bound else float("inf"),
      "mfu_at_bound": p["flops_per_step"] / (bound * chip.peak_flops) if bound else 0.0,
  }


_BOUND_KEYS = ("flops_per_step", "step_seconds_bound", "items_per_second", "mfu_at_bound")


def _advice(config, p: dict, state_bytes: int, hbm: int) -> str:
  """What would make a step that needs `p['bytes_per_device']` fit: the levers in order of what they save."""
  tips = []
  if config.sharding != "fsdp" and state_bytes > 0.1 * hbm:
    tips.append("--config.sharding=fsdp (splits params and optimizer state over the data axis)")
  model = config.get("model")
  if model is not None and "remat" in model and not model.remat and p.get("temp_bytes", 0) > 0.2 * hbm:
    tips.append("--config.model.remat=True (recomputes activations in the backward pass)")
  if model is not None and "dtype" in model and model.dtype == "float32":
    tips.append("--config.model.dtype=bfloat16")
  tips.append(f"a smaller batch per device (--config.batch_size={max(config.batch_size // 2, 1)}) or a larger slice")
  return "; or ".join(tips)


def check(config, topology: str, name: str | None = None) -> dict:
  """Compile `config`'s train (and eval) step for `topology`; the report as a dict (see the module
  docstring). Raises `DoesNotFit` (after nothing was run) when a step needs more than the chip's HBM."""
  chip, topo = parse_topology(topology)
  devices = topology_devices(chip, topo)
  cfg, task = loop_config_and_task(config)
  if task.input_specs is None:
    raise ConfigError(f"the task {task.tag!r} has no input specs: it cannot be compiled ahead of time")
  mesh = sh.make_mesh(cfg.mesh_data, cfg.mesh_model, devices)
  loop_lib.check_batch_sizes(cfg, mesh, task)
  n = len(devices)
  tx, optim_config = loop_lib.make_optimizer(cfg, task)
  abstract = step_lib.abstract_train_state(loop_lib.state_init_fn(task), tx, use_ema=task.use_ema)
  shardings = sh.param_shardings(abstract, mesh, cfg.sharding)
  state = _with_shardings(abstract, shardings)
  objective = loop_lib.objective_of(cfg, task)
  # The project's CPU compile options do not apply to a TPU program: XLA's TPU defaults.
  train_step = loop_lib.train_step(cfg, task, tx, optim_config, mesh, shardings)
  eval_step = loop_lib.eval_step(cfg, task, mesh, shardings) if task.eval_batches is not None else None
  params_bytes = _per_device_bytes(abstract.params, shardings.params)
  opt_bytes = _per_device_bytes(abstract.opt_state, shardings.opt_state)
  state_bytes = _per_device_bytes(abstract, shardings)

  def batch_of(inputs, kwargs, for_eval):
    b = objective.batch_spec(inputs, eval=for_eval)
    if kwargs is not None:
      b[sh.MODEL_KWARGS] = kwargs
    return _with_shardings(b, sh.batch_shardings(b, mesh))

  programs, specs, eval_specs = {}, task.input_specs(cfg.batch_size), task.input_specs(cfg.eval_batch_size)
  first = next(iter(specs.values()))[0]
  per_example = first.shape[1] if objective.inputs == "tokens" else 1  # a decoder's tokens per sequence
  # A train state larger than the chip cannot fit whatever the program: say so without compiling.
  for variant, (inputs, kwargs) in (specs if state_bytes <= chip.hbm_bytes else {}).items():
    batch = batch_of(inputs, kwargs, False)
    batch_bytes = _per_device_bytes(batch, jax.tree.map(lambda x: x.sharding, batch))
    p = _program(train_step, state, batch, n, state_bytes + batch_bytes)
    p["batch_bytes"] = batch_bytes
    if "out_of_memory" not in p:
      p.update(_roofline(p, chip, cfg.batch_size, per_example))
    programs[f"train{variant}"] = p
    if eval_step is not None:
      eval_batch = batch_of(eval_specs[variant][0], kwargs, True)
      eval_bytes = _per_device_bytes(eval_batch, jax.tree.map(lambda x: x.sharding, eval_batch))
      programs[f"eval{variant}"] = _program(eval_step, state, eval_batch, n, state_bytes + eval_bytes)
  worst = max(programs.values(), key=lambda p: p["bytes_per_device"], default={"bytes_per_device": state_bytes})
  trains = [p for k, p in programs.items() if k.startswith("train") and "step_seconds_bound" in p]
  t = max(trains, key=lambda p: p["step_seconds_bound"], default=dict.fromkeys(_BOUND_KEYS))
  report = {
      "config": name or task.tag,
      "topology": topo,
      "devices": n,
      "device_kind": devices[0].device_kind,
      "libtpu": _libtpu_version(),
      "jax": jax.__version__,
      "sharding": cfg.sharding,
      "compute_dtype": str(np.dtype(task.compute_dtype)),
      "batch_size": cfg.batch_size,
      "params_bytes_per_device": params_bytes,
      "optimizer_bytes_per_device": opt_bytes,
      "state_bytes_per_device": state_bytes,
      "bytes_per_device": worst["bytes_per_device"],
      "hbm_bytes_per_device": chip.hbm_bytes,
      "fits": bool(programs) and all(p["bytes_per_device"] <= chip.hbm_bytes for p in programs.values()),
      "flops_per_step": t["flops_per_step"],
      "step_seconds_bound": t["step_seconds_bound"],
      "items_per_second_bound": t["items_per_second"],
      "compiled": bool(programs),
      "item": "tokens" if per_example > 1 else "images",
      "mfu_at_bound": t["mfu_at_bound"],
      "peak_flops_per_device": chip.peak_flops,
      "hbm_bandwidth": chip.hbm_bandwidth,
      "programs": programs,
  }
  if not report["fits"]:
    report["advice"] = _advice(cfg, worst, state_bytes, chip.hbm_bytes)
  return report


def _libtpu_version() -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top

  try:
    return metadata.version("libtpu")
  except metadata.PackageNotFoundError:
    return "?"


def _gib(b: float) -> str:
  return f"{b / GiB:.2f} GiB" if b >= GiB / 10 else f"{b / 2**20:.1f} MiB"


def render(r: dict) -> str:
  """The human report (per device) and, last, the JSON line (without the per-program details)."""
  L = [
      f"{r['config']} on {r['topology']} ({r['devices']} x {r['device_kind']}; libtpu {r['libtpu']}, jax {r['jax']}), "
      f"sharding {r['sharding']}, compute {r['compute_dtype']}, global batch {r['batch_size']}",
      f"  per device: params {_gib(r['params_bytes_per_device'])}, optimizer state "
      f"{_gib(r['optimizer_bytes_per_device'])}, whole train state {_gib(r['state_bytes_per_device'])}",
  ]
  for name, p in r["programs"].items():
    if "out_of_memory" in p:
      L.append(f"  {name:<12s} refused by the compiler, >= {_gib(p['bytes_per_device'])} needed: {p['out_of_memory']}")
      continue
    line = (
        f"  {name:<12s} arguments {_gib(p['argument_bytes'])} + outputs {_gib(p['output_bytes'])} + temporaries "
        f"{_gib(p['temp_bytes'])} + code {_gib(p['code_bytes'])} = {_gib(p['bytes_per_device'])} of "
        f"{_gib(r['hbm_bytes_per_device'])} HBM"
    )
    if "batch_bytes" in p:
      line += f" (batch {_gib(p['batch_bytes'])})"
    L.append(line)
    if "step_seconds_bound" in p:
      L.append(
          f"  {'':<12s} {p['flops_per_step'] / 1e12:.3f} TFLOPs per step per device (XLA's count "
          f"{p['xla_flops_per_step'] / 1e12:.3f}), {p['xla_bytes_accessed'] / GiB:.2f} GiB accessed; step time "
          f">= {p['step_seconds_bound'] * 1e3:.2f} ms (bound by {p['bound_by']}), <= "
          f"{p['items_per_second']:,.0f} {r['item']}/s, MFU at that bound {p['mfu_at_bound']:.0%}"
      )
  if not r["compiled"]:
    L.append(f"  not compiled: the train state alone exceeds the chip's {_gib(r['hbm_bytes_per_device'])} HBM")
  L.append(f"  fits: {'yes' if r['fits'] else 'NO'}")
  L.append(json.dumps({k: v for k, v in r.items() if k != "programs"}, sort_keys=True))
  return "\n".join(L)


def run(config, topology: str, name: str | None = None) -> dict:
  """`--mode compile`: print the report; a step that does not fit raises `DoesNotFit` (exit 2). `name`
  labels the report (the config file)."""
  r = check(config, topology, name)
  print(render(r), flush=True)
  if not r["fits"]:
    raise DoesNotFit(
        f"{r['config']} needs {_gib(r['bytes_per_device'])} per device on {r['topology']}, the chip has "
        f"{_gib(r['hbm_bytes_per_device'])}: try {r['advice']}"
    )
  return r
