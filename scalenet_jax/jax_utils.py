"""Small JAX helpers shared across the package, and the one place where the CPU runtime is configured.

`configure_cpu()` is called first thing by the entry points (`main`, `demo`, `reproduce`, the analysis CLI
and the benchmark scripts), before jax starts its backend: it sets this project's default XLA:CPU flags
(`CPU_XLA_FLAGS`, currently none: XLA's own were measured best) and, once, re-runs the program with glibc's
transparent-huge-page tunable (`HUGE_PAGES_TUNABLE`), so the per-call temporary buffer of a compiled step
is faulted in 2 MiB pages instead of 4 KiB ones. `compile_options(level)` is the per-program option dict
the train and eval steps hand to XLA. Why each setting, and what it buys: docs/performance.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import sys
from typing import Mapping

import jax

# Default XLA:CPU flags for this project's programs (a flag already in $XLA_FLAGS wins). Empty on purpose:
# on the train steps of the micro ViT and DeiT-S, XLA's defaults (YNNPACK dots with fused epilogues) ran as
# fast as or faster than every alternative tried, and wrote fewer bytes: YNN restricted to dots (+36% ops,
# +17% bytes on DeiT-S), Eigen dots, oneDNN custom calls, XNN greedy graph fusion, 512-bit vectors for
# XLA's own loops (benchmarks/xla_flags.py measures them all side by side; docs/performance.md).
CPU_XLA_FLAGS: Mapping[str, str] = {}

# XLA:CPU allocates a compiled program's temporary buffer on every call (DeiT-S train step, batch 16:
# 1.5 GiB) and frees it afterwards; glibc maps such blocks fresh each time, so every step page-faults its
# whole working set again (~420k faults, ~1 s of kernel time per DeiT-S step). With this tunable glibc asks
# for transparent huge pages on those mappings: ~30x fewer faults, the memory still returned after each call.
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
_REEXEC_ENV = "SCALENET_RUNTIME_REEXEC"  # set in the re-run program: never re-run twice


def _accelerator_plugin_installed() -> bool:
  """Whether this process's jax runs on a GPU/TPU plugin (then the train step's buffers do not live in host
  malloc). libtpu counts only on a TPU VM (its /dev/accel* or /dev/vfio devices): elsewhere it is there to
  compile for TPU topologies (`--mode compile`) and jax runs on the CPU. JAX_PLATFORMS=cpu rules all out."""
  if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
    return False
  names = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")
  if any(importlib.util.find_spec(n) is not None for n in names):
    return True
  on_tpu_vm = os.path.exists("/dev/vfio") or any(n.startswith("accel") for n in os.listdir("/dev"))
  return on_tpu_vm and importlib.util.find_spec("libtpu") is not None


def cpu_unless_accelerator() -> None:
  """Keep jax on the CPU where libtpu is installed but there is no TPU (nor a GPU plugin): there libtpu is
  for compiling TPU programs (`--mode compile`), and jax would otherwise probe for a TPU VM first, print
  libtpu's errors and take its one-process lock. Call before jax initialises a backend; an explicit
  JAX_PLATFORMS wins."""
  if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None or _accelerator_plugin_installed():
    return
  os.environ["JAX_PLATFORMS"] = "cpu"
  jax.config.update("jax_platforms", "cpu")


def _thp_mode() -> str:
  """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'; '' if unknown)."""
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      text = f.read()
  except OSError:
    return ""
  return text[text.find("[") + 1 : text.find("]")] if "[" in text else ""


def huge_pages_active() -> bool:
  """Whether this process's malloc gets transparent huge pages for large blocks."""
  return _thp_mode() == "always" or (HUGE_PAGES_TUNABLE in os.environ.get("GLIBC_TUNABLES", "") and bool(_thp_mode()))


def exec_with_huge_pages() -> None:
  """Re-run this program (same interpreter and command line) with `HUGE_PAGES_TUNABLE` in $GLIBC_TUNABLES.

  glibc reads its tunables only at process start, hence the re-run; call it before any real work. It does
  nothing where it cannot help or was done already: not Linux, the kernel's THP mode is not 'madvise'
  ('always' already covers malloc, 'never' cannot), a GPU/TPU plugin is installed, the tunable is set, or
  this is the re-run itself. Set SCALENET_RUNTIME_REEXEC=0 to opt out.
  """
  if not sys.platform.startswith("linux") or _thp_mode() != "madvise" or _accelerator_plugin_installed():
    return
  if HUGE_PAGES_TUNABLE in os.environ.get("GLIBC_TUNABLES", "") or os.environ.get(_REEXEC_ENV):
    return
  tunables = ":".join(t for t in (os.environ.get("GLIBC_TUNABLES", ""), HUGE_PAGES_TUNABLE) if t)
  env = dict(os.environ, GLIBC_TUNABLES=tunables, **{_REEXEC_ENV: "1"})
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, list(sys.orig_argv), env)
  except OSError:  # e.g. an embedded interpreter: run on without
    return


def _merge_xla_flags(current: str, defaults: Mapping[str, str]) -> str:
  given = {f.split("=", 1)[0].lstrip("-") for f in current.split()}
  extra = [f"--{k}={v}" for k, v in defaults.items() if k not in given]
  return " ".join([current.strip(), *extra]).strip()


def configure_cpu(xla_flags: Mapping[str, str] | None = None, huge_pages: bool = True) -> dict:
  """Set the project's XLA:CPU defaults (`CPU_XLA_FLAGS`, or `xla_flags`) and the allocator policy.

  Call once, first thing in a program's `__main__`, before jax initialises a backend (flags are read
  then). With `huge_pages` the program may be re-run once with glibc's huge-page tunable
  (`exec_with_huge_pages`); pass False where re-running is not wanted (a library or test importing this).
  Later calls change nothing and return the first call's result. Flags already in $XLA_FLAGS are kept.
  Returns what was configured: `xla_flags` (the resulting $XLA_FLAGS) and `allocator` (a description).
  """
  from jax._src import xla_bridge

  global _CONFIGURED
  if _CONFIGURED is not None:  # the first call decides (e.g. a script that asked for XLA's own defaults)
    return _CONFIGURED
  if xla_bridge.backends_are_initialized():
    return dict(xla_flags=os.environ.get("XLA_FLAGS", ""), allocator=allocator_policy(), late=True)
  if huge_pages:
    exec_with_huge_pages()
  cpu_unless_accelerator()
  flags = _merge_xla_flags(os.environ.get("XLA_FLAGS", ""), CPU_XLA_FLAGS if xla_flags is None else xla_flags)
  os.environ["XLA_FLAGS"] = flags
  _CONFIGURED = dict(xla_flags=flags, allocator=allocator_policy(), late=False)
  return _CONFIGURED


def allocator_policy() -> str:
  """A one-line description of how this process's malloc serves large blocks (printed by the benchmarks)."""
  if huge_pages_active():
    return f"transparent huge pages (GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')}; THP {_thp_mode()})"
  return f"glibc default (4 KiB pages; THP {_thp_mode() or 'unknown'})"


_CONFIGURED: dict | None = None


def machine() -> dict:
  """What a measured report names: CPU model, cores, backend and the versions of the libraries."""
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  return {
      "cpu": cpu_model(),
      "cores": os.cpu_count(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "flax": flax.__version__,
      "optax": optax.__version__,
      "backend": jax.default_backend(),
  }


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
  """CPU model name from `cpuinfo` with its family and model numbers (falls back to
  `platform.processor()`), for run records. Virtual machines often name only the vendor line ("AMD
  EPYC"); the numbers tell its generations apart, which run at very different speeds (one 2-core
  "AMD EPYC" trained a study's Swin at 6.2 steps/s, family 25 model 17 at 3.7)."""
  fields = {}
  try:
    with open(cpuinfo) as f:
      for line in f:
        if not line.strip():  # the first processor's block is enough
          break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  name = fields.get("model name") or platform.processor() or "unknown"
  if "cpu family" in fields and "model" in fields:
    name += f" (family {fields['cpu family']}, model {fields['model']})"
  return name


def compile_options(opt_level: int = -1) -> dict | None:
  """Per-program XLA options of a train/eval step: `opt_level` >= 0 sets XLA's backend optimisation level
  (1 compiles a CPU step ~3x faster, for short runs), -1 keeps XLA's default (None: no options)."""
  return {"xla_backend_optimization_level": opt_level} if opt_level >= 0 else None


@contextlib.contextmanager
def shared_compiled_programs(directory: str, min_compile_secs: float = 0.5):
  """Within the block, keeps compiled programs in JAX's persistent compilation cache under `directory`,
  unless the user configured a cache (`JAX_COMPILATION_CACHE_DIR`), which is used as it is.

  The runs of a study compile the same programs again and again (the seeds of an arm; baselines of one
  architecture and trainable set), each in a fresh `jax.jit`: with the cache, every later run, in this
  process or the next chunk's, loads them instead. The key is the program and the compile options, so a
  loaded program is the one that would have been compiled. The previous settings come back on exit.

  Args:
    directory: a local directory (created) for the cache.
    min_compile_secs: programs that compile faster are not kept (loading them would not be faster).

  Yields:
    Nothing.
  """
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top

  if jax.config.jax_compilation_cache_dir:
    yield
    return
  min_secs = jax.config.jax_persistent_cache_min_compile_time_secs
  os.makedirs(directory, exist_ok=True)
  compilation_cache.set_cache_dir(directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)
  compilation_cache.reset_cache()  # a process that compiled before (without a cache) checks it again
  try:
    yield
  finally:
    compilation_cache.set_cache_dir(None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_secs)
    compilation_cache.reset_cache()


def run_once(fn, *args, **jit_kwargs):
  """`jax.jit(fn, **jit_kwargs)(*args)` for code that runs once (inits), compiled cheaply.

  On CPU, XLA's backend optimisations cost ~5x more compile time than they save on a single run.
  """
  options = compile_options(0) if jax.default_backend() == "cpu" else None
  return jax.jit(fn, **jit_kwargs).lower(*args).compile(compiler_options=options)(*args)


def print0(msg: str) -> None:
  """A progress line on stdout, from the first process only (multi-host runs print once)."""
  if jax.process_index() == 0:
    print(msg, flush=True)


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
