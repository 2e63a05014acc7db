"""Compile time of forward+backward vs depth: scanned block stack (the library) vs the same stack unrolled.

    /work/main/.venv/bin/python benchmarks/compile_depth.py --depths 12,24,48 --repeats 2

The model is a ViT of the micro width (28x28x1 images, patch 4, width 64, 4 heads, 10 classes) with
`depth` plain blocks; an extra row compiles ScaleNet 2x of the 12-layer model (24 blocks over 12 shared
core layers, adapters r=16). Only shapes are used (no params are materialised); each timing is
`jit(value_and_grad(loss)).lower(...).compile()` after `jax.clear_caches()`, best of `--repeats`.
With `nn.scan` the compiled program holds one block whatever the depth, so compile time should stay
about flat; unrolled, it grows with depth.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from scalenet_jax.grow import expand
from scalenet_jax.grow.spec import ExpansionSpec
from scalenet_jax.models import registry

MODEL = "vit_micro_patch4_28"


def compile_seconds(model, batch, repeats):
  """(lower seconds, compile seconds) of forward+backward of `model`, best of `repeats`."""
  cfg = model.config
  params = model.abstract_params()
  x = jax.ShapeDtypeStruct((batch, cfg.img_size, cfg.img_size, cfg.in_chans), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)

  def loss(p, x, y):
    logits = model.apply({"params": p}, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

  best = (np.inf, np.inf)
  for _ in range(repeats):
    jax.clear_caches()
    t0 = time.perf_counter()
    lowered = jax.jit(jax.value_and_grad(loss)).lower(params, x, y)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    if t2 - t0 < sum(best):
      best = (t1 - t0, t2 - t1)
  return best


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--depths", default="12,24,48")
  ap.add_argument("--unroll-depths", default="12,24,48", help="depths also compiled unrolled ('' = none)")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=2)
  args = ap.parse_args()
  depths = [int(d) for d in args.depths.split(",")]
  unroll_depths = [int(d) for d in args.unroll_depths.split(",") if d]

  print(
      f"device={jax.devices()[0].platform} jax={jax.__version__} model={MODEL} (width 64) batch={args.batch}"
      f" repeats={args.repeats}"
  )
  print(f"{'variant':<34}{'depth':>6}{'lower s':>10}{'compile s':>11}{'total s':>10}")
  totals = {}
  for unroll in (False, True):
    for depth in (unroll_depths if unroll else depths):
      model = registry.create_model(MODEL, arch=dict(depth=depth), unroll=unroll)
      lo, co = compile_seconds(model, args.batch, args.repeats)
      totals[(unroll, depth)] = lo + co
      name = "unrolled (for contrast)" if unroll else "scan (library default)"
      print(f"{name:<34}{depth:>6}{lo:>10.2f}{co:>11.2f}{lo + co:>10.2f}", flush=True)
  base = registry.create_model(MODEL, arch=dict(depth=12))
  grown = expand.expanded_model(base, ExpansionSpec(mapping="interpolate", reuse=2, adjust="adapter"))
  lo, co = compile_seconds(grown, args.batch, args.repeats)
  print(f"{'ScaleNet 2x of 12 (scan, shared)':<34}{24:>6}{lo:>10.2f}{co:>11.2f}{lo + co:>10.2f}")
  for unroll in (False, True):
    ds = unroll_depths if unroll else depths
    if len(ds) > 1:
      name = "unrolled" if unroll else "scan"
      print(
          f"{name}: total compile time depth {ds[-1]} / depth {ds[0]} = "
          f"{totals[(unroll, ds[-1])] / totals[(unroll, ds[0])]:.2f}"
      )


if __name__ == "__main__":
  main()
