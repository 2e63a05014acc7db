"""Small JAX helpers shared across the package, and the one place where the CPU runtime is configured.

`configure_cpu()` is called by the entry points (`main`, `demo`, `reproduce`, the analysis CLI and the
benchmarks) before jax starts its backend: it sets this project's default XLA:CPU flags (`CPU_XLA_FLAGS`)
and keeps freed memory in the allocator. `compile_options(level)` is the per-program option dict the train
and eval steps hand to XLA. Why each setting, and what it buys: docs/performance.md.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from typing import Mapping

import jax

# Default XLA:CPU flags for this project's programs (a flag already in $XLA_FLAGS wins).
CPU_XLA_FLAGS: Mapping[str, str] = {
    # Only matmuls go to YNNPACK; elementwise ops and reductions stay in XLA's own fused loops. YNN's
    # elementwise/reduce fusions take every broadcast operand (LayerNorm gains, softmax sums) as a
    # materialised full-size array.
    "xla_cpu_experimental_ynn_fusion_type": "dot",
}

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def _accelerator_plugin_installed() -> bool:
  """Whether a GPU/TPU jax plugin is installed (then the train step's buffers do not live in host malloc)."""
  names = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")
  return any(importlib.util.find_spec(n) is not None for n in names)


def keep_freed_memory() -> bool:
  """Make glibc malloc keep and reuse freed memory instead of returning it to the kernel (Linux only).

  Why: XLA:CPU allocates each program's temporary buffer per call (DeiT-S train step at batch 16: 2.2 GB)
  and frees it afterwards. glibc serves such sizes with a fresh mmap, so every step page-faults its whole
  working set again (565k faults, ~1.4 s of kernel time per DeiT-S step; 47k per micro-ViT step). With
  one arena and no mmap, the freed block stays in the heap and the next step reuses it. Must run before
  the process starts threads (each thread otherwise gets its own arena, which always mmaps large blocks).
  The cost: the process keeps its peak heap (it does not shrink between steps).
  Returns whether the settings were applied.
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  if not hasattr(libc, "mallopt"):
    return False
  ok = libc.mallopt(_M_ARENA_MAX, 1) and libc.mallopt(_M_MMAP_MAX, 0)
  return bool(ok and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def _merge_xla_flags(current: str, defaults: Mapping[str, str]) -> str:
  given = {f.split("=", 1)[0].lstrip("-") for f in current.split()}
  extra = [f"--{k}={v}" for k, v in defaults.items() if k not in given]
  return " ".join([current.strip(), *extra]).strip()


def configure_cpu(xla_flags: Mapping[str, str] | None = None, allocator: bool = True) -> dict:
  """Set the project's XLA:CPU defaults (`CPU_XLA_FLAGS`, or `xla_flags`) and the allocator policy.

  Call once, first thing in a program, before jax initialises a backend (flags are read then); a later
  call changes nothing and says so. Flags already in $XLA_FLAGS are kept as given. The allocator policy
  (`keep_freed_memory`) is skipped where a GPU/TPU plugin is installed or `allocator` is False.
  Returns what was configured (`xla_flags`: the resulting $XLA_FLAGS, `allocator`: applied or not).
  """
  from jax._src import xla_bridge

  if xla_bridge.backends_are_initialized():
    return dict(xla_flags=os.environ.get("XLA_FLAGS", ""), allocator=False, late=True)
  flags = _merge_xla_flags(os.environ.get("XLA_FLAGS", ""), CPU_XLA_FLAGS if xla_flags is None else xla_flags)
  os.environ["XLA_FLAGS"] = flags
  applied = allocator and not _accelerator_plugin_installed() and keep_freed_memory()
  return dict(xla_flags=flags, allocator=applied, late=False)


def compile_options(opt_level: int = -1) -> dict | None:
  """Per-program XLA options of a train/eval step: `opt_level` >= 0 sets XLA's backend optimisation level
  (1 compiles a CPU step ~3x faster, for short runs), -1 keeps XLA's default (None: no options)."""
  return {"xla_backend_optimization_level": opt_level} if opt_level >= 0 else None


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
