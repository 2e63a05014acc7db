"""XLA:CPU options ablation: the same train step compiled with each candidate option set, timed interleaved.

    /work/main/.venv/bin/python benchmarks/xla_flags.py [--quick] [--models vit_micro_patch4_28:64,...]

This process starts from XLA's own defaults (`jax_utils.configure_cpu(xla_flags={})`: no project flags;
the allocator policy stays on), and each variant sets its options on its one program
(`compiler_options`), so every variant runs in this process, call by call interleaved (blocks of calls,
medians), under the same load. `project` is `jax_utils.CPU_XLA_FLAGS` (the entry points' default); the
numbers here are what that default was chosen from (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scalenet_jax import jax_utils  # noqa: E402

jax_utils.configure_cpu(xla_flags={})  # before `common` (whose import configures the project defaults)

import common  # noqa: E402,I001

from scalenet_jax.models import registry  # noqa: E402

_NO_YNN = "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"  # YNNPACK only for convolutions: dots run on Eigen
CANDIDATES = {
    "xla_default": {},
    "ynn_dot_only": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    "eigen_dots": {"xla_cpu_experimental_ynn_fusion_type": _NO_YNN},
    "onednn": {"xla_cpu_experimental_ynn_fusion_type": _NO_YNN, "xla_cpu_experimental_onednn_custom_call": True},
    "xnn_greedy": {"xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"},
    "vector512": {"xla_cpu_prefer_vector_width": 512},  # AVX-512 for XLA's own (elementwise) loops
}
DEFAULT_MODELS = "vit_micro_patch4_28:64,deit_small_patch16_224:16"


def project_options() -> dict:
  """`jax_utils.CPU_XLA_FLAGS` as per-program compiler options (enum names for the fusion-type lists)."""
  out = {}
  for key, value in jax_utils.CPU_XLA_FLAGS.items():
    if key.endswith("_fusion_type"):
      value = ",".join(f"LIBRARY_FUSION_TYPE_{v.strip().upper()}" for v in value.split(","))
    out[key] = value
  return out


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="micro ViT only, fewer steps")
  p.add_argument("--models", default=None, help=f"name:batch,... (default {DEFAULT_MODELS})")
  p.add_argument("--variants", default="", help="comma-separated subset of the variants (default: all)")
  p.add_argument("--steps", type=int, default=None, help="timed calls per variant (default 8; quick 6)")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)
  args.models = args.models or ("vit_micro_patch4_28:64" if args.quick else DEFAULT_MODELS)
  args.steps = args.steps or (6 if args.quick else 8)
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  variants = {"xla_default": {}, "project": project_options()}
  # A candidate equal to the project default is not compiled twice.
  variants.update({k: v for k, v in CANDIDATES.items() if v not in variants.values()})
  info = common.print_header("XLA:CPU option sets on the same train step (interleaved)", args)
  names = [v.strip() for v in args.variants.split(",") if v.strip()] or list(variants)
  unknown = sorted(set(names) - set(variants))
  if unknown:
    raise SystemExit(f"unknown variant {unknown[0]!r}; known: {', '.join(variants)}")
  results = []
  for item in args.models.split(","):
    name, _, batch = item.partition(":")
    batch = int(batch or 16)
    steps, lines = {}, []
    for v in names:
      steps[v] = common.JaxTrainStep(registry.create_model(name), batch, compiler_options=variants[v])
      compile_s = steps[v].compile_seconds()
      mem = steps[v].memory()
      lines.append((v, compile_s, mem["temp"]))
    t = common.interleaved({v: s.run for v, s in steps.items()}, warmup=1, iters=args.steps, block=2)
    base = t[names[0]].median
    print(f"{name}, batch {batch} (load average {' '.join(f'{x:.2f}' for x in common.load_average())})")
    rows = []
    for v, compile_s, temp in lines:
      print(
          f"  {v:12s} {t[v].summary()}  x{base / t[v].median:.2f} vs {names[0]}, compile {compile_s:.1f}s, "
          f"temp {common.mib(temp)}  {variants[v] or ''}"
      )
      rows.append(
          dict(variant=v, options=variants[v], step_s=t[v].median, min_s=t[v].min, compile_s=compile_s, temp=temp)
      )
    results.append(dict(model=name, batch=batch, rows=rows))
    del steps
  out = dict(machine=info, results=results)
  common.write_json(args.json, out)
  return out


if __name__ == "__main__":
  main()
