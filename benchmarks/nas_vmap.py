"""Paths/s of the batched `PathEvaluator` vs its sequential reference on the same paths and batch.

    /work/main/.venv/bin/python benchmarks/nas_vmap.py --space fmnist --paths 16 --batch 32 --repeats 5

Variants, all on one evaluation batch of random images and the same supernet parameters, compiled
and warmed up first (compile time printed apart), timed interleaved (repeat i runs every variant
before repeat i + 1 starts, so load drift hits all of them) and reported as the median and the best
repeat (on a shared machine the median is the number to quote; ratios use it):

* `sequential`: the reference, one path per call at full supernet width (`evaluate_sequential`);
* `sequential+unrolled`: the same loop with the fused depthwise sum (isolates that factor);
* `vmap`: vmap over paths at full width with the tap-loop depthwise (the previous batched evaluator);
* `batched-vmap`: width/depth buckets, fused depthwise, vmap over each chunk;
* `batched`: the default `PathEvaluator` on this backend (buckets, fused depthwise, `batching='auto'`:
  a loop over the chunk's paths inside each compiled call on CPU).

All paths run at `--res` (default: the space's base resolution) unless `--own-res`. Prints the
machine (CPU model, cores, load before and after), versions, flags, paths/s, the ratios to the
reference, and checks that every variant gives the same accuracies.
"""

import argparse
import os
import platform
import time

import common  # noqa: I001  (puts the repo root on sys.path, configures the runtime before jax starts)

import flax
import jax
import numpy as np

from scalenet_jax.nas.evaluate import PathEvaluator
from scalenet_jax.nas.sampling import sample_path
from scalenet_jax.nas.space import Scaling, get_space
from scalenet_jax.nas.supernet import SuperNet, bucket_of, init_supernet


def variants(space, params, batches, vmap_size):
  """{name: (evaluate(pairs) callable)} of the variants in the module docstring."""
  ev = lambda model, **kw: PathEvaluator(model, params, space, batches, vmap_size=vmap_size, **kw)
  ref = ev(SuperNet(space))
  unrolled = ev(SuperNet(space, depthwise="unrolled"))
  return {
      "sequential": ref.evaluate_sequential,
      "sequential+unrolled": unrolled.evaluate_sequential,
      "vmap": ev(SuperNet(space), buckets=False, depthwise="loop", batching="vmap"),
      "batched-vmap": ev(SuperNet(space), batching="vmap"),
      "batched": ref,
  }


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--space", default="fmnist")
  ap.add_argument("--paths", type=int, default=16)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--vmap-size", type=int, default=16)
  ap.add_argument("--res", type=int, default=None, help="resolution of every path (default: the base one)")
  ap.add_argument("--own-res", action="store_true", help="each path at its own sampled resolution")
  ap.add_argument("--only", default="", help="comma-separated subset of variants")
  args = ap.parse_args()
  load0 = os.getloadavg()
  space = get_space(args.space)
  r = args.res or space.base_resolution
  pairs = [sample_path(space, "hss_uniform", seed=0, step=i) for i in range(args.paths)]
  if not args.own_res:
    pairs = [(a, Scaling(S.d, S.w, r)) for a, S in pairs]
  params = init_supernet(SuperNet(space), seed=0)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(args.batch, r, r, space.in_channels)).astype(np.float32)
  batches = [(images, rng.integers(0, space.num_classes, size=args.batch))]
  todo = variants(space, params, batches, args.vmap_size)
  if args.only:
    todo = {k: v for k, v in todo.items() if k in args.only.split(",")}

  compile_s, accs = {}, {}
  for name, fn in todo.items():
    t = time.perf_counter()
    accs[name] = fn(pairs)
    compile_s[name] = time.perf_counter() - t
  times = {name: [] for name in todo}
  for _ in range(args.repeats):
    for name, fn in todo.items():
      t = time.perf_counter()
      fn(pairs)
      times[name].append(time.perf_counter() - t)
  load1 = os.getloadavg()
  med = {name: float(np.median(v)) for name, v in times.items()}

  print(f"machine: {common.cpu_model()}, {os.cpu_count()} cores, load average before {load0}, after {load1}")
  print(
      f"versions: jax {jax.__version__}, jaxlib {jax.lib.__version__}, flax {flax.__version__}, "
      f"numpy {np.__version__}, python {platform.python_version()}, backend {jax.devices()[0].platform}"
  )
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"flags: {vars(args)}")
  print(
      f"space {space.name} (coupling {space.coupling}), {len(pairs)} paths, batch {args.batch}, "
      f"resolutions {sorted({S.r for _, S in pairs})}, buckets {[bucket_of(S, space) for _, S in pairs]}"
  )
  ref = "sequential" if "sequential" in med else next(iter(med))
  head = f"{'variant':22s} {'first call s':>12s} {'median s':>9s} {'paths/s':>8s} {'best paths/s':>12s}"
  print(f"{head} {'vs ' + ref + ' (median)':>24s}")
  for name in todo:
    print(
        f"{name:22s} {compile_s[name]:12.1f} {med[name]:9.3f} {len(pairs) / med[name]:8.2f} "
        f"{len(pairs) / min(times[name]):12.2f} {med[ref] / med[name]:23.2f}x"
    )
  same = all(np.allclose(a, accs[ref], atol=1e-12) for a in accs.values())
  print(f"accuracies identical across variants: {same}")
  if not same:
    raise SystemExit("variants disagree on accuracies")


if __name__ == "__main__":
  main()
