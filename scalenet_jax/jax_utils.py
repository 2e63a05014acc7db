"""Small JAX helpers shared across the package."""

import jax


def run_once(fn, *args, **jit_kwargs):
  """`jax.jit(fn, **jit_kwargs)(*args)` for code that runs once (inits), compiled cheaply.

  On CPU, XLA's backend optimisations cost ~5x more compile time than they save on a single run.
  """
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
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
