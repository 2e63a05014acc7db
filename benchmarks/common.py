"""Shared helpers of the benchmark scripts: flags, machine info, timing, matmul peak, memory, a JAX train step.

Timing protocol (every script): compile and warm up first, then time each call separately (blocking on
its outputs) and report the **median**; the machine may be shared, so medians are far more stable than
means, and `interleaved` alternates the contenders call by call so a burst of foreign load hits both.

Runtime: importing this module calls `jax_utils.configure_cpu()` (the project's default XLA:CPU flags and
allocator policy, as every entry point does; a script is re-run once with glibc's huge-page tunable) before
jax starts; the header of every script prints what that set, with the CPU, core count, library versions,
torch threads and the load average.

Each script accepts `--json PATH` and writes its numbers there; `run_all.py` collects those files.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

# Make `python benchmarks/<name>.py` work from a checkout without installing the package.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from scalenet_jax import jax_utils  # noqa: E402  (after the sys.path fix)


def _main_is_a_benchmark_script() -> bool:
  main = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
  return os.path.dirname(main) == os.path.dirname(os.path.abspath(__file__))


# Before jax initialises a backend (the scripts import jax only after this module). Only a benchmark run as
# a script may be re-run with the huge-page tunable; an importer (a test, run_all's renderer) is left alone.
RUNTIME = jax_utils.configure_cpu(huge_pages=_main_is_a_benchmark_script())


# ----------------------------------------------------------------------------------------------
# Flags, machine info, output
# ----------------------------------------------------------------------------------------------
def base_parser(doc: str) -> argparse.ArgumentParser:
  """Parser with the flags every benchmark shares (`--quick`, `--steps`, `--warmup`, `--batch`, `--json`).

  Scripts set their own defaults with `parser.set_defaults` and apply `--quick` through `apply_quick`.
  """
  p = argparse.ArgumentParser(
      description=doc.strip().splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc
  )
  p.add_argument("--quick", action="store_true", help="short run (fewer timed steps, smaller batch)")
  p.add_argument("--steps", type=int, default=None, help="timed iterations (median is reported)")
  p.add_argument("--warmup", type=int, default=None, help="untimed iterations after compilation")
  p.add_argument("--batch", type=int, default=None, help="images per train step")
  p.add_argument("--json", default=None, help="also write the results to this JSON file")
  return p


def apply_quick(args: argparse.Namespace, full: Mapping[str, Any], quick: Mapping[str, Any]) -> argparse.Namespace:
  """Fill every flag the user left at None from the `quick` or `full` defaults."""
  defaults = quick if args.quick else full
  for key, value in defaults.items():
    if getattr(args, key, None) is None:
      setattr(args, key, value)
  for key in ("steps", "batch"):
    if getattr(args, key) < 1:
      raise ValueError(f"--{key} must be >= 1, got {getattr(args, key)}")
  if args.warmup < 0:
    raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
  return args


def load_average() -> tuple[float, float, float]:
  """1/5/15-minute load averages (zeros where the OS does not report them)."""
  try:
    return os.getloadavg()
  except OSError:
    return (0.0, 0.0, 0.0)


cpu_model = jax_utils.cpu_model  # the run records' CPU name, shared with the package's reports


def num_cores() -> int:
  """Cores this process may run on (the affinity mask, not the host's total)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _version(module: str) -> str | None:
  try:
    return __import__(module).__version__
  except ImportError:
    return None


def machine_info() -> dict:
  """What a reader needs to compare numbers across machines: CPU, cores, versions, flags, load."""
  import jax
  import jaxlib

  info = dict(
      jax_utils.machine(),  # CPU, python, jax, flax, optax, backend: the fields the package's reports name
      cores=num_cores(),
      jaxlib=jaxlib.__version__,
      numpy=np.__version__,
      devices=len(jax.devices()),
      xla_flags=os.environ.get("XLA_FLAGS", ""),
      allocator=RUNTIME["allocator"],
      date=datetime.datetime.now().isoformat(timespec="seconds"),
      loadavg=" ".join(f"{x:.2f}" for x in load_average()),
  )
  try:
    import torch

    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), timm=_version("timm"))
    info["torch_flags"] = (
        f"mkldnn={torch.backends.mkldnn.is_available()} mkl={torch.backends.mkl.is_available()} "
        f"capability={torch.backends.cpu.get_cpu_capability()} interop_threads={torch.get_num_interop_threads()}"
    )
  except ImportError:
    info.update(torch=None, torch_threads=None, timm=None, torch_flags=None)
  return info


def machine_lines(info: Mapping[str, Any]) -> list[str]:
  """The machine / library / flag lines printed by every script and written into RESULTS.md."""
  return [
      f"machine: {info['cpu']} x{info['cores']} cores, load average {info['loadavg']} ({info['date']})",
      f"libraries: python {info['python']}, jax {info['jax']} / jaxlib {info['jaxlib']} ({info['backend']}), "
      f"flax {info['flax']}, optax {info['optax']}, numpy {info['numpy']}, torch {info['torch']}, timm {info['timm']}",
      f"XLA_FLAGS: {info['xla_flags'] or '(none)'}; allocator: {info['allocator']}",
      f"torch: {info['torch_threads']} intra-op threads, {info['torch_flags']}",
  ]


def print_header(title: str, args: argparse.Namespace) -> dict:
  """Print the title, machine/library/flag lines (load average included: the numbers are only as good as
  it) and the script's flags; returns the machine info (stored in every --json)."""
  info = machine_info()
  flags = {k: v for k, v in vars(args).items() if k != "json"}
  print(f"== {title}")
  for line in machine_lines(info):
    print(line)
  print(f"flags: {flags}")
  return info


def write_json(path: str | None, results: dict) -> None:
  """Write `results` to `path` (no-op when None)."""
  if path:
    with open(path, "w") as f:
      json.dump(results, f, indent=2, default=float)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Timing:
  """Per-call wall times in seconds."""

  samples: list[float]

  @property
  def median(self) -> float:
    return statistics.median(self.samples)

  @property
  def min(self) -> float:
    return min(self.samples)

  def summary(self) -> str:
    s = sorted(self.samples)
    return f"median {self.median * 1e3:.1f} ms (min {s[0] * 1e3:.1f}, max {s[-1] * 1e3:.1f}, n={len(s)})"


def time_calls(fn: Callable[[], Any], *, warmup: int, iters: int) -> Timing:
  """Run `fn` (which must block until its work is done) `warmup` times untimed, then time `iters` calls."""
  return interleaved({"_": fn}, warmup=warmup, iters=iters)["_"]


def interleaved(fns: Mapping[str, Callable[[], Any]], *, warmup: int, iters: int, block: int = 1) -> dict[str, Timing]:
  """Time several blocking callables in turn, `block` consecutive calls each (A B A B ... for block=1), so
  load bursts hit all of them. A block > 1 keeps one runtime's idle spinning threads (OpenMP, Eigen) from
  taxing only the other's first call; with the median, that call then does not count."""
  if iters < 1 or block < 1:
    raise ValueError(f"iters and block must be >= 1, got iters={iters}, block={block}")
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  samples = {name: [] for name in fns}
  while any(len(s) < iters for s in samples.values()):
    for name, fn in fns.items():
      for _ in range(min(block, iters - len(samples[name]))):
        t = time.perf_counter()
        fn()
        samples[name].append(time.perf_counter() - t)
  return {name: Timing(s) for name, s in samples.items()}


# ----------------------------------------------------------------------------------------------
# Matmul peak (the MFU denominator)
# ----------------------------------------------------------------------------------------------
# XLA:CPU matmul paths besides this process's default, measured per program (`compiler_options`), so the
# MFU denominator is the fastest matmul any of them reaches here.
JAX_MATMUL_VARIANTS = {
    "jax_onednn": {"xla_cpu_experimental_onednn_custom_call": True},
    "jax_xnn_greedy": {"xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"},
}


def matmul_peak_jax(n: int = 2048, iters: int = 5, options: Mapping[str, Any] | None = None) -> float:
  """Achieved fp32 FLOP/s of a jitted n x n x n `jnp.dot` (2 n^3 FLOPs per product), median of `iters`;
  `options`: XLA compiler options of this one program."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot).lower(a, b).compile(compiler_options=dict(options) if options else None)
  t = time_calls(lambda: dot(a, b).block_until_ready(), warmup=1, iters=iters)
  return 2.0 * n**3 / t.median


def matmul_peak_numpy(n: int = 2048, iters: int = 5) -> float:
  """Achieved fp32 FLOP/s of `numpy.dot` (whatever BLAS numpy links), median of `iters`."""
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), dtype=np.float32)
  b = rng.standard_normal((n, n), dtype=np.float32)
  t = time_calls(lambda: np.dot(a, b), warmup=1, iters=iters)
  return 2.0 * n**3 / t.median


def matmul_peak_torch(n: int = 2048, iters: int = 5) -> float | None:
  """Achieved fp32 FLOP/s of `torch.mm` (MKL) at torch's current thread count; None without torch."""
  try:
    import torch
  except ImportError:
    return None
  a, b = torch.randn(n, n), torch.randn(n, n)
  t = time_calls(lambda: torch.mm(a, b), warmup=1, iters=iters)
  return 2.0 * n**3 / t.median


def matmul_peaks(n: int = 2048, iters: int = 5) -> dict[str, float]:
  """fp32 matmul FLOP/s of jax (this process's XLA flags, and `JAX_MATMUL_VARIANTS`), numpy and torch, and
  `best` of them: the MFU denominator, measured in the same run as the train steps it divides."""
  peaks = dict(jax=matmul_peak_jax(n, iters))
  for name, options in JAX_MATMUL_VARIANTS.items():
    peaks[name] = matmul_peak_jax(n, iters, options)
  peaks["numpy"] = matmul_peak_numpy(n, iters)
  torch_peak = matmul_peak_torch(n, iters)
  if torch_peak is not None:
    peaks["torch"] = torch_peak
  peaks["best"] = max(peaks.values())
  return peaks


def peaks_line(peaks: Mapping[str, float], n: int = 2048) -> str:
  parts = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peaks.items() if k != "best")
  return f"fp32 matmul ({n}^3) GFLOP/s: {parts}; best {peaks['best'] / 1e9:.1f}"


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------
def minor_faults() -> int:
  """Minor page faults of this process so far (first touches of freshly mapped memory)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_rss_bytes() -> int:
  """This process's peak resident set size (VmHWM), in bytes."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("VmHWM not found in /proc/self/status")


def compiled_memory(compiled) -> dict[str, int]:
  """XLA's memory analysis of a compiled program (`jax.stages.Compiled`) in bytes: temp, argument,
  output, alias and their peak.

  peak = argument + output - alias + temp: the live buffers of one call (donated inputs alias outputs).
  """
  ma = compiled.memory_analysis()
  if ma is None:
    raise RuntimeError("this backend gives no compiled memory analysis")
  out = dict(
      temp=ma.temp_size_in_bytes,
      argument=ma.argument_size_in_bytes,
      output=ma.output_size_in_bytes,
      alias=ma.alias_size_in_bytes,
  )
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def mib(n: float) -> str:
  return f"{n / 2 ** 20:.0f} MiB"


# ----------------------------------------------------------------------------------------------
# The scalenet_jax train step, ready to time
# ----------------------------------------------------------------------------------------------
class JaxTrainStep:
  """One model's sharded train state + jitted step (`step.make_train_step`) on a 1-device mesh.

  `trainable` (param-path regexes) freezes everything else, as the expansion recipes do; `params`
  replaces the fresh init (e.g. expanded weights); `compiler_options` are XLA options of this one program. The batch is random and device-resident unless a
  different one is passed to `run`.
  """

  def __init__(
      self,
      model,
      batch_size: int,
      *,
      trainable: Sequence[str] | None = None,
      params=None,
      seed: int = 0,
      compiler_options: Mapping[str, Any] | None = None,
  ):
    import jax
    import jax.numpy as jnp
    from scalenet_jax.train import optim
    from scalenet_jax.train import sharding as sh
    from scalenet_jax.train import step as step_lib

    self.model, self.batch_size = model, batch_size
    self.mesh = sh.make_mesh(devices=jax.devices()[:1])
    abstract = model.abstract_params()
    patterns = "all" if trainable is None else list(trainable)
    tx = optim.make_optimizer(dict(name="adamw", total_steps=10_000, warmup_steps=10), abstract, patterns)
    self.mask = None if trainable is None else optim.trainable_mask(abstract, patterns)
    cfg = model.config
    dummy = jnp.zeros((1, cfg.img_size, cfg.img_size, cfg.in_chans), jnp.float32)
    self.state, self.shardings = step_lib.create_train_state(
        lambda r: model.init(r, dummy), tx, self.mesh, jax.random.key(seed)
    )
    if params is not None:
      self.load_params(params)
    self.step = step_lib.make_train_step(
        step_lib.flax_apply_fn(model),
        tx,
        self.mesh,
        self.shardings,
        trainable_mask=self.mask,
        compiler_options=dict(compiler_options) if compiler_options else None,
    )
    rng = np.random.default_rng(seed)
    host = {
        "images": rng.standard_normal((batch_size, cfg.img_size, cfg.img_size, cfg.in_chans), np.float32),
        "labels": rng.integers(0, cfg.num_classes, batch_size).astype(np.int32),
    }
    self.batch = sh.make_global_batch(host, self.mesh)
    self._aot = None  # _compiled()

  def load_params(self, params) -> None:
    """Replace the params (e.g. by expanded weights); the fresh Adam moments stay valid (zeros)."""
    import jax

    self.state = self.state.replace(params=jax.device_put(params, self.shardings.params))

  def run(self, batch=None) -> None:
    """One train step on `batch` (default: the resident one), blocking until it is done."""
    import jax

    self.state, metrics = self.step(self.state, self.batch if batch is None else batch)
    jax.block_until_ready((self.state, metrics))

  def compile_seconds(self) -> float:
    """Run the first step (compiling it) and return its wall time."""
    t = time.perf_counter()
    self.run()
    return time.perf_counter() - t

  def _jitted(self):
    """The jax.jit object behind the step (make_train_step builds it on the first call)."""
    if not self.step.jitted:
      raise RuntimeError("run the step once (compile_seconds) before analysing its program")
    return next(iter(self.step.jitted.values()))

  def _compiled(self):
    """The step's program compiled ahead of time, once: `jit(...).lower().compile()` does not share the
    jit call's executable cache, so the analyses below share this one extra compile."""
    if self._aot is None:
      self._aot = self._jitted().lower(self.state, self.batch).compile()
    return self._aot

  def hlo_text(self) -> str:
    """The compiled step's optimized HLO (call after the first step, which builds the jitted program)."""
    return self._compiled().as_text()

  def memory(self) -> dict[str, int]:
    """Compiled memory analysis of the step (call after the first step, which builds the jitted program)."""
    return compiled_memory(self._compiled())

  def step_macs(self) -> int:
    """Multiply-adds one train step's program asks for (`counting.jaxpr_macs` of the step's jaxpr: forward,
    backward and optimizer, scan bodies times their length; frozen weights get no weight-gradient
    products). Load-independent, so it shows what a time ratio should approach."""
    import jax
    from scalenet_jax import counting

    return counting.jaxpr_macs(jax.make_jaxpr(self._jitted())(self.state, self.batch).jaxpr)

  def num_params(self, trainable_only: bool = False) -> int:
    import jax

    leaves = jax.tree.leaves(self.state.params)
    if not trainable_only or self.mask is None:
      return int(sum(x.size for x in leaves))
    return int(sum(x.size for x, m in zip(leaves, jax.tree.leaves(self.mask)) if m))


def forward_macs(model) -> int:
  """Forward multiply-adds per image (`counting.model_flops`: 1 MAC counted as 1 FLOP)."""
  from scalenet_jax import counting

  return counting.model_flops(model, model.abstract_params())
