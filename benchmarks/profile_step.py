"""Where a compiled train step's time goes: op time by class, dot rates by kind, kernel time per step.

    /work/main/.venv/bin/python benchmarks/profile_step.py [--quick] [--models deit_small_patch16_224:16,...]

For each model: the project's train step (`common.JaxTrainStep`) is compiled and warmed up, `--steps` calls
are timed with their user / system CPU time and minor page faults (getrusage), then the same number of
calls run under `jax.profiler.trace`. The trace's op events (one per executed HLO instruction) are summed
by op class, and every dot is matched to its shapes in the compiled HLO to give FLOP/s per dot kind:
`linear` (2-D, the dense layers) and `batched` (attention's per-head products).

Reading it: XLA:CPU runs YNNPACK dot fusions (`ynn_fusion`) synchronously, but hands plain `dot`
instructions (here the weight gradients) to Eigen asynchronously, so a plain dot's event covers only its
dispatch and its work overlaps the ops that follow: the backward's `linear` rate is then understated and
the plain dots' time is hidden in it. Rates of forward-only dot kinds, and the wall step time, are exact.
`--trace-dir` keeps the trace for TensorBoard / Perfetto. Findings: docs/performance.md.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import math
import os
import re
import resource
import tempfile
import time

import common  # noqa: I001  (puts the repo root on sys.path, configures the runtime before jax starts)

from scalenet_jax.models import registry

DEFAULT_MODELS = "vit_micro_patch4_28:64,deit_small_patch16_224:16,swin_tiny_patch4_window7_224:16"
QUICK_MODELS = "vit_micro_patch4_28:64"
# Op classes by instruction name, first match wins (XLA names fusions after their leading ops).
CLASSES = (
    ("dot (YNNPACK fusion)", ("ynn_fusion",)),
    ("dot (plain; async, dispatch only)", ("dot",)),
    ("transpose / copy", ("transpose", "copy")),
    ("broadcast / slice / pad / concatenate", ("broadcast", "slice", "pad", "concatenate", "dynamic")),
    ("elementwise / reduction fusion", ("fusion", "wrapped", "reduce")),
)


def parse_args(argv=None):
  p = common.base_parser(__doc__)
  p.add_argument("--models", default=None, help=f"comma-separated name:batch (default {DEFAULT_MODELS})")
  p.add_argument("--trace-dir", default=None, help="keep the traces here (default: a temporary directory)")
  # --batch (if given) overrides every model's batch.
  args = p.parse_args(argv)
  args.models = args.models or (QUICK_MODELS if args.quick else DEFAULT_MODELS)
  args.steps = args.steps or (2 if args.quick else 3)
  args.warmup = (1 if args.quick else 2) if args.warmup is None else args.warmup
  if args.steps < 1 or args.warmup < 1 or (args.batch is not None and args.batch < 1):
    p.error("--steps, --warmup and --batch must be >= 1 (the first call compiles)")
  return args


def op_class(name: str) -> str:
  for label, keys in CLASSES:
    if any(k in name for k in keys):
      return label
  return "other"


def _dims(shape: str) -> list[int]:
  return [int(d) for d in shape.split(",") if d]


def dot_table(hlo: str) -> dict[str, tuple[str, float]]:
  """{instruction name: (dot kind, FLOPs)} for every dot instruction and every fusion that calls dots."""
  shapes, in_comp, calls, plain = {}, collections.defaultdict(list), {}, {}
  comp = None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head:
      comp = head.group(1)
      continue
    inst = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = f32\[([\d,]*)\]", line)
    if not inst:
      continue
    name, out = inst.group(1), _dims(inst.group(2))
    shapes[(comp, name)] = out
    called = re.search(r"calls=%([\w.\-]+)", line)
    if called:
      calls[name] = called.group(1)
    dot = re.search(r" dot\(%([\w.\-]+), .*?lhs_contracting_dims=\{([\d,]*)\}", line)
    if dot:
      lhs = shapes.get((comp, dot.group(1)), [])
      k = math.prod(lhs[i] for i in _dims(dot.group(2))) if lhs else 0
      entry = ("batched" if "lhs_batch_dims" in line else "linear", 2.0 * math.prod(out) * k)
      plain[name] = (comp, entry)
      in_comp[comp].append(entry)
  fused = set(calls.values())
  table = {name: entry for name, (comp, entry) in plain.items() if comp not in fused}  # executed as is
  for name, called in calls.items():
    if in_comp.get(called):
      table[name] = (in_comp[called][0][0], sum(f for _, f in in_comp[called]))
  return table


def trace_events(trace_dir: str) -> list[dict]:
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    raise RuntimeError(f"jax.profiler.trace wrote no *.trace.json.gz under {trace_dir}")
  with gzip.open(max(files, key=os.path.getmtime)) as f:
    events = json.load(f)["traceEvents"]
  return [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})]


def profile(name: str, batch: int, args, trace_root: str) -> dict:
  import jax

  model = registry.create_model(name)
  step = common.JaxTrainStep(model, batch)
  for _ in range(args.warmup):
    step.run()
  r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  for _ in range(args.steps):
    step.run()
  wall = (time.perf_counter() - t0) / args.steps
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  trace_dir = os.path.join(trace_root, name)
  with jax.profiler.trace(trace_dir):
    for _ in range(args.steps):
      step.run()
  events = trace_events(trace_dir)
  dots = dot_table(step.hlo_text())

  by_class, dot_time, dot_flops = collections.Counter(), collections.Counter(), collections.Counter()
  for e in events:
    us = e["dur"] / args.steps
    by_class[op_class(e["name"])] += us
    if e["name"] in dots:
      kind, flops = dots[e["name"]]
      dot_time[kind] += us
      dot_flops[kind] += flops / args.steps
  per = lambda field: (getattr(r1, field) - getattr(r0, field)) / args.steps  # noqa: E731
  return {
      "model": name,
      "batch": batch,
      "fwd_macs_per_image": common.forward_macs(model),
      "step_ms": wall * 1e3,
      "user_ms": per("ru_utime") * 1e3,
      "sys_ms": per("ru_stime") * 1e3,
      "minor_faults": per("ru_minflt"),
      "op_ms": {k: v / 1e3 for k, v in by_class.most_common()},
      "dots": {
          k: {"ms": dot_time[k] / 1e3, "gflop": dot_flops[k] / 1e9, "gflops": dot_flops[k] / max(dot_time[k], 1) / 1e3}
          for k in dot_time
      },
  }


def report(r: dict) -> None:
  total = sum(r["op_ms"].values())
  print(
      f"{r['model']} (batch {r['batch']}): step {r['step_ms']:.1f} ms wall; per step CPU user {r['user_ms']:.0f} ms, "
      f"system {r['sys_ms']:.0f} ms, {r['minor_faults']:.0f} minor page faults; traced op time {total:.1f} ms"
  )
  for label, ms in r["op_ms"].items():
    print(f"  {label:40s} {ms:8.1f} ms  {ms / total * 100:5.1f}%")
  for kind, d in sorted(r["dots"].items()):
    print(f"  dots, {kind:8s}: {d['gflop']:7.2f} GFLOP in {d['ms']:7.1f} ms of events -> {d['gflops']:6.1f} GFLOP/s")


def main(argv=None) -> None:
  args = parse_args(argv)
  info = common.print_header("Train-step profile: op time by class, dot rates", args)
  peaks = common.matmul_peaks(2048, 3)
  print(common.peaks_line(peaks))
  results = {
      "machine": info,
      "flags": {k: v for k, v in vars(args).items() if k != "json"},
      "matmul_peaks": peaks,
      "models": [],
  }
  with tempfile.TemporaryDirectory() as tmp:
    for spec in args.models.split(","):
      name, batch = spec.split(":")
      r = profile(name, args.batch or int(batch), args, args.trace_dir or tmp)
      report(r)
      results["models"].append(r)
  common.write_json(args.json, results)


if __name__ == "__main__":
  main()
