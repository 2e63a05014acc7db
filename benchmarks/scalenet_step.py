"""ScaleNet Rx train step (shared frozen core, adapters + LN + head trainable) vs the same-depth model trained in full.

    /work/main/.venv/bin/python benchmarks/scalenet_step.py [--quick] [--rss] [--model deit_small_patch16_224]

ScaleNet: `grow.expand(pretrained, model, ExpansionSpec(kind='scalenet', reuse=R, trainable='adjust_ln_head'))`
(pretrained = a fresh init; values do not change the cost), trained through `make_train_step` with the
expansion's trainable mask (frozen core: no weight gradients, no Adam state). Full: an independent model
with the expanded depth (R x 12 = 24 layers for DeiT), every parameter trainable. Same batch, fp32, AdamW.

Also printed: the MACs of each step's program (`counting.jaxpr_macs` of the jitted step: the work it asks
for, independent of machine load), so the time ratio can be read against the arithmetic ratio.
Memory: XLA's compiled memory analysis of each step (peak = arguments + outputs - aliased + temporaries;
the state is donated, so outputs alias it). `--rss` also measures each variant's peak process RSS in its
own subprocess (costs one more compilation per variant).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import common  # noqa: I001  (puts the repo root on sys.path)

import jax

from scalenet_jax.grow import expand as grow
from scalenet_jax.grow.spec import ExpansionSpec
from scalenet_jax.models import registry

FULL = dict(batch=8, steps=4, warmup=1)
QUICK = dict(batch=4, steps=2, warmup=1)
VARIANTS = ("scalenet", "full")


def parse_args(argv=None):
  p = common.base_parser(__doc__)
  p.add_argument("--model", default="deit_small_patch16_224", help="plain registry model to expand")
  p.add_argument("--img-size", type=int, default=None, help="override the model's input size")
  p.add_argument("--reuse", type=int, default=2, help="ScaleNet reuse times R")
  p.add_argument("--rank", type=int, default=16, help="adapter rank")
  p.add_argument("--rss", action="store_true", help="also measure peak RSS of each variant in a subprocess")
  p.add_argument(
      "--variant",
      choices=("both",) + VARIANTS,
      default="both",
      help="(internal, used by --rss) build and run only one variant",
  )
  return common.apply_quick(p.parse_args(argv), FULL, QUICK)


def build(variant: str, args) -> common.JaxTrainStep:
  """The train step of one variant (ScaleNet with expanded pretrained weights, or the full deep model)."""
  base = registry.create_model(args.model, {"img_size": args.img_size} if args.img_size else {})
  spec = ExpansionSpec(kind="scalenet", reuse=args.reuse, rank=args.rank, trainable="adjust_ln_head")
  scalenet = grow.expanded_model(base, spec)
  if variant == "full":
    return common.JaxTrainStep(base.with_plain_depths(scalenet.depths), args.batch)
  bench = common.JaxTrainStep(scalenet, args.batch, trainable=grow.trainable_patterns(spec))
  # The state's fresh init supplies the new params (adapters with B = 0), as the trainer does.
  _, params = grow.expand(base.init_params(seed=1), base, spec, fresh=jax.device_get(bench.state.params))
  bench.load_params(params)
  return bench


def rss_of(variant: str, args) -> int:
  """Peak RSS (bytes) of a fresh process that builds `variant` and runs one step."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "rss.json")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--variant",
        variant,
        "--batch",
        str(args.batch),
        "--steps",
        "1",
        "--warmup",
        "0",
        "--model",
        args.model,
        "--reuse",
        str(args.reuse),
        "--rank",
        str(args.rank),
        "--json",
        out,
    ]
    if args.img_size:
      cmd += ["--img-size", str(args.img_size)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
      return json.load(f)["peak_rss"]


def describe(name: str, bench: common.JaxTrainStep, compile_s: float) -> dict:
  depth = sum(bench.model.depths)
  total, trainable = bench.num_params(), bench.num_params(trainable_only=True)
  mem, macs = bench.memory(), bench.step_macs()
  print(
      f"{name:9s} depth {depth}, params {total / 1e6:.1f}M ({trainable / 1e6:.2f}M trainable), "
      f"step {macs / bench.batch_size / 1e9:.2f} GMACs/image, compile+first step {compile_s:.1f}s"
  )
  print(
      f"{'':9s} compiled memory: peak {common.mib(mem['peak'])} (temp {common.mib(mem['temp'])}, "
      f"args {common.mib(mem['argument'])}, out {common.mib(mem['output'])}, alias {common.mib(mem['alias'])})"
  )
  return dict(depth=depth, params=total, trainable_params=trainable, compile_s=compile_s, memory=mem, step_macs=macs)


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.variant != "both":  # subprocess of --rss: build, one step, report this process's peak RSS
    bench = build(args.variant, args)
    bench.compile_seconds()
    common.write_json(args.json, dict(peak_rss=common.peak_rss_bytes()))
    return {}
  info = common.print_header(f"ScaleNet {args.reuse}x step vs the same-depth model trained in full", args)
  benches, out = {}, dict(machine=info, model=args.model, reuse=args.reuse, batch=args.batch)
  for v in VARIANTS:
    benches[v] = build(v, args)
    compile_s = benches[v].compile_seconds()
    out[v] = describe(v, benches[v], compile_s)
  t = common.interleaved({v: b.run for v, b in benches.items()}, warmup=args.warmup, iters=args.steps)
  for v in VARIANTS:
    out[v]["step_s"] = t[v].median
    print(f"{v:9s} step: {t[v].summary()} -> {args.batch / t[v].median:.2f} images/s")
  out["time_ratio"] = t["scalenet"].median / t["full"].median
  out["memory_ratio"] = out["scalenet"]["memory"]["peak"] / out["full"]["memory"]["peak"]
  out["macs_ratio"] = out["scalenet"]["step_macs"] / out["full"]["step_macs"]
  print(
      f"step time ratio scalenet/full: {out['time_ratio']:.2f} (target <= 0.76); "
      f"step MACs ratio (load-independent): {out['macs_ratio']:.2f}"
  )
  print(f"compiled peak memory ratio scalenet/full: {out['memory_ratio']:.2f} (target <= 0.70)")
  if args.rss:
    for v in VARIANTS:
      out[v]["peak_rss"] = rss_of(v, args)
    print(
        f"peak RSS (own process, one step): scalenet {common.mib(out['scalenet']['peak_rss'])}, "
        f"full {common.mib(out['full']['peak_rss'])}"
    )
  common.write_json(args.json, out)
  return out


if __name__ == "__main__":
  main()
