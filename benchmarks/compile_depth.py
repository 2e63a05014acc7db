"""Compile time of forward+backward vs depth: scanned block stack vs the same stack unrolled, and the default.

    /work/main/.venv/bin/python benchmarks/compile_depth.py [--quick] --depths 12,24,48 --repeats 2

The model is a ViT of the micro width (28x28x1 images, patch 4, width 64, 4 heads, 10 classes) with
`depth` plain blocks; an extra row compiles ScaleNet 2x of the 12-layer model (24 blocks over 12 shared
core layers, adapters r=16). Only shapes are used (no params are materialised); each timing is
`jit(value_and_grad(loss)).lower(...).compile()` after `jax.clear_caches()`, best of `--repeats`.
With `nn.scan` the compiled program holds one block whatever the depth, so compile time should stay
about flat (target: 24 vs 12 layers <= 1.15x); unrolled, it grows with depth. The library default
(`stack.unroll_segment`) unrolls stacks of at most `stack.UNROLL_MAX_BLOCKS` blocks and scans deeper ones.
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: I001  (puts the repo root on sys.path, configures the runtime before jax starts)

import jax
import jax.numpy as jnp
import numpy as np

from scalenet_jax.grow import expand
from scalenet_jax.grow.spec import ExpansionSpec
from scalenet_jax.models import registry
from scalenet_jax.models import stack as stack_lib

MODEL = "vit_micro_patch4_28"
MODES = {"scan": False, "unrolled": True, "default": None}


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


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="depths 12,24, one repeat")
  ap.add_argument("--depths", default=None, help="scanned depths (default 12,24,48; quick 12,24)")
  ap.add_argument("--unroll-depths", default=None, help="depths also compiled unrolled ('' = none)")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=None, help="best of (default 2; quick 1)")
  ap.add_argument("--json", default=None, help="also write the results to this JSON file")
  args = ap.parse_args(argv)
  if args.depths is None:
    args.depths = "12,24" if args.quick else "12,24,48"
  if args.unroll_depths is None:
    args.unroll_depths = "12,24" if args.quick else "12,24,48"
  if args.repeats is None:
    args.repeats = 1 if args.quick else 2
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  info = common.print_header("compile time of forward+backward vs depth", args)
  depths = [int(d) for d in args.depths.split(",")]
  unroll_depths = [int(d) for d in args.unroll_depths.split(",") if d]
  print(
      f"model={MODEL} (width 64) batch={args.batch} repeats={args.repeats}; default policy: unroll stacks of "
      f"<= {stack_lib.UNROLL_MAX_BLOCKS} blocks"
  )
  print(f"{'variant':<34}{'depth':>6}{'lower s':>10}{'compile s':>11}{'total s':>10}")
  rows = []
  for mode, unroll in MODES.items():
    for depth in unroll_depths if mode == "unrolled" else depths:
      model = registry.create_model(MODEL, arch=dict(depth=depth), unroll=unroll)
      lo, co = compile_seconds(model, args.batch, args.repeats)
      rows.append(dict(mode=mode, depth=depth, lower_s=lo, compile_s=co, total_s=lo + co))
      label = {"scan": "scan (forced)", "unrolled": "unrolled (forced)", "default": "library default"}[mode]
      if mode == "default":
        label += " (unrolled)" if stack_lib.unroll_segment(depth) else " (scan)"
      print(f"{label:<34}{depth:>6}{lo:>10.2f}{co:>11.2f}{lo + co:>10.2f}", flush=True)
  base = registry.create_model(MODEL, arch=dict(depth=12))
  grown = expand.expanded_model(base, ExpansionSpec(mapping="interpolate", reuse=2, adjust="adapter"))
  lo, co = compile_seconds(grown, args.batch, args.repeats)
  rows.append(dict(mode="scalenet2x", depth=24, lower_s=lo, compile_s=co, total_s=lo + co))
  print(f"{'ScaleNet 2x of 12 (default: scan)':<34}{24:>6}{lo:>10.2f}{co:>11.2f}{lo + co:>10.2f}")
  totals = {(r["mode"], r["depth"]): r["total_s"] for r in rows}
  ratios = {}
  for mode in MODES:
    ds = unroll_depths if mode == "unrolled" else depths
    if 12 in ds and 24 in ds:
      ratios[mode] = totals[(mode, 24)] / totals[(mode, 12)]
      target = " (target <= 1.15)" if mode == "scan" else ""
      print(f"{mode}: total compile time depth 24 / depth 12 = {ratios[mode]:.2f}{target}")
  out = dict(machine=info, model=MODEL, batch=args.batch, rows=rows, ratio_24_12=ratios)
  common.write_json(args.json, out)
  return out


if __name__ == "__main__":
  main()
