"""Time `jax.vmap` over P supernet paths vs a Python loop over the same paths (same masks, same model).

    /work/main/.venv/bin/python benchmarks/nas_vmap.py --space fmnist --paths 16 --batch 32 --repeats 3

Both sides are jitted and warmed up first (compile time excluded); all paths share one resolution.
Prints per-call times and the ratio loop / vmap.
"""

import argparse
import time

import common  # noqa: I001  (puts the repo root on sys.path, configures the runtime before jax starts)

import jax
import jax.numpy as jnp
import numpy as np

from scalenet_jax.nas.sampling import sample_path
from scalenet_jax.nas.space import Scaling, apply_scaling, get_space
from scalenet_jax.nas.supernet import SuperNet, init_supernet, path_arrays, stack_paths


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--space", default="fmnist")
  ap.add_argument("--paths", type=int, default=16)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  space = get_space(args.space)
  r = space.base_resolution
  model = SuperNet(space)
  params = init_supernet(model, seed=0)
  pairs = [sample_path(space, "hss_uniform", seed=0, step=i) for i in range(args.paths)]
  paths = [path_arrays(apply_scaling(a, Scaling(S.d, S.w, r), space), space) for a, S in pairs]
  stacked = jax.tree.map(jnp.asarray, stack_paths(paths))
  paths = [jax.tree.map(jnp.asarray, p) for p in paths]
  x = jnp.asarray(np.random.default_rng(0).normal(size=(args.batch, r, r, space.in_channels)), jnp.float32)

  def fwd(p, x, path):
    return model.apply({"params": p}, x, path=path, train=False)

  single = jax.jit(fwd)
  batched = jax.jit(jax.vmap(fwd, in_axes=(None, None, 0)))
  t = time.perf_counter()
  single(params, x, paths[0]).block_until_ready()
  c1 = time.perf_counter() - t
  t = time.perf_counter()
  batched(params, x, stacked).block_until_ready()
  c2 = time.perf_counter() - t
  ref = np.stack([np.asarray(single(params, x, p)) for p in paths])
  np.testing.assert_allclose(np.asarray(batched(params, x, stacked)), ref, atol=1e-4, rtol=1e-4)

  def timeit(fn):
    best = np.inf
    for _ in range(args.repeats):
      t = time.perf_counter()
      fn()
      best = min(best, time.perf_counter() - t)
    return best

  t_loop = timeit(lambda: [single(params, x, p).block_until_ready() for p in paths])
  t_vmap = timeit(lambda: batched(params, x, stacked).block_until_ready())
  print(f"device={jax.devices()[0].platform} space={space.name} paths={args.paths} batch={args.batch} r={r}")
  print(f"compile: single {c1:.1f}s, vmap {c2:.1f}s")
  print(f"python loop over {args.paths} paths: {t_loop * 1e3:.1f} ms")
  print(f"vmap over {args.paths} paths:        {t_vmap * 1e3:.1f} ms")
  print(f"ratio loop / vmap: {t_loop / t_vmap:.2f}x")


if __name__ == "__main__":
  main()
