r"""Generate docs/reproduction.md from real runs on Fashion-MNIST (and the paper configs' counts).

  python -m scalenet_jax.reproduce --workdir /tmp/repro --budget demo --seeds 2 [--nas_workdir DIR]

Sections: (1) Table-I-style comparison, ScaleNet vs Random/Stack/Interpolate/SWA/scratch, several
seeds; (2) ablations (adjustment, mapping, R, rank, drop path) from one pretrained model;
(3) ScaleNet-search: HSS vs uniform FLOPs histograms (+ a NAS pipeline's report when given);
(4) exact params/FLOPs of the six full-size paper configs. Runs resume from their workdirs, so the
script can be interrupted and restarted. The verdicts on the paper's claims are computed from the
measured numbers, whatever they turn out to be.
"""

from __future__ import annotations

import json
import os
import statistics

from absl import app, flags, logging

from scalenet_jax import config_lib, demo, jax_utils, summary

FLAGS = flags.FLAGS

# (pretrain steps, fine-tune steps, eval split). 'demo' is the default demo's budget, so a finished
# `python -m scalenet_jax.demo --workdir D` can serve as seed 0: link it as <workdir>/seed0.
BUDGETS = {
    "tiny": (60, 20, "minival"),
    "demo": tuple(demo.BUDGETS[False][k] for k in ("pretrain", "finetune", "eval_split")),
    "small": (1000, 250, "test"),
    "full": (3000, 1000, "test"),
}
ABLATIONS = [  # (family, label, expansion overrides)
    ("adjustment", "adapter (r=16)", {}),
    ("adjustment", "LoRA (r=16, qkv/proj/fc1/fc2)", {"adjust": "lora"}),
    ("adjustment", "none (weight sharing only)", {"adjust": "none"}),
    ("mapping", "interpolate", {}),
    ("mapping", "stack", {"mapping": "stack"}),
    ("reuse", "R=2", {}),
    ("reuse", "R=3", {"reuse": 3}),
    ("rank", "r=4", {"rank": 4}),
    ("rank", "r=16", {}),
    ("rank", "r=32", {"rank": 32}),
    ("drop path", "0.0", {}),
    ("drop path", "0.1", {"drop_path_rate": 0.1}),
    ("drop path", "0.2", {"drop_path_rate": 0.2}),
]


def _slug(overrides):
  return "scalenet" + "".join(f"_{k}{v}".replace(",", "-") for k, v in sorted(overrides.items()))


def table1(workdir, seeds, pre_steps, ft_steps, split):
  runs = {}  # label -> list of rows (one per seed)
  pre = []
  for seed in range(seeds):
    wd = os.path.join(workdir, f"seed{seed}")
    p = demo.pretrain(wd, pre_steps, split, seed)
    pre.append(p["top1"])
    for label, kind in demo.VARIANTS:
      row = demo.finetune(
          wd, kind or "pretrained_more", kind, os.path.join(p["export"], "params"), ft_steps, split, seed
      )
      runs.setdefault(label, []).append(row)
  return pre, runs


def ablations(workdir, pre_steps, ft_steps, split):
  wd = os.path.join(workdir, "seed0")
  p = demo.pretrain(wd, pre_steps, split, 0)
  rows = []
  for family, label, overrides in ABLATIONS:
    r = demo.finetune(
        wd, _slug(overrides), "scalenet", os.path.join(p["export"], "params"), ft_steps, split, 0, **overrides
    )
    rows.append(dict(family=family, label=label, **r))
  return rows


def _ms(values):
  vals = [v * 100 for v in values]
  return f"{statistics.mean(vals):.2f}" + (f" ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else "")


def _mean(rows, key="top1"):
  return statistics.mean(r[key] for r in rows)


def verdicts(runs, abl) -> list[str]:
  sn = _mean(runs[demo.VARIANTS[0][0]])
  out = []
  base = [l for l, k in demo.VARIANTS if k in ("random", "stack", "interpolate", "swa")]
  beaten = [l for l in base if sn > _mean(runs[l])]
  out.append(
      f"ScaleNet beats the parameter-matched baselines: {'holds' if len(beaten) == len(base) else 'does not hold'}"
      f" here (beats {len(beaten)} of {len(base)}: {', '.join(beaten) or 'none'})."
  )
  scratch = next(l for l, k in demo.VARIANTS if k == "scratch")
  out.append(
      f"ScaleNet beats the same-depth model trained from scratch with the same steps: "
      f"{'holds' if sn > _mean(runs[scratch]) else 'does not hold'} ({sn * 100:.2f}% vs "
      f"{_mean(runs[scratch]) * 100:.2f}%)."
  )
  by = {(r["family"], r["label"]): r["top1"] for r in abl}
  adj = [
      by[("adjustment", l)] for l in ("adapter (r=16)", "LoRA (r=16, qkv/proj/fc1/fc2)", "none (weight sharing only)")
  ]
  out.append(
      f"Adapter is the best adjustment (paper): {'holds' if adj[0] >= max(adj) else 'does not hold'} "
      f"(adapter {adj[0] * 100:.2f}%, LoRA {adj[1] * 100:.2f}%, none {adj[2] * 100:.2f}%)."
  )
  mi, ms = by[("mapping", "interpolate")], by[("mapping", "stack")]
  out.append(
      f"Interpolate beats stack for ViT/DeiT (paper): {'holds' if mi > ms else 'does not hold'} "
      f"({mi * 100:.2f}% vs {ms * 100:.2f}%)."
  )
  return out


def paper_configs_table() -> list[str]:
  lines = [
      "| config | layers | params (per instance) | unique params | trainable | GFLOPs |",
      "|---|---|---|---|---|---|",
  ]
  for model in config_lib.GROW_PAPER:
    for kind in ("", "scalenet"):
      c = config_lib.grow_paper_config(model, kind or "scalenet")
      c.expansion.kind = kind
      s = summary.summarize(c, xla_check=False)
      name = model + (" 2x ScaleNet" if kind else " (pretrained)")
      lines.append(
          f"| {name} | {sum(s['depths'])} | {s['params']:,} | {s['unique_params']:,} | "
          f"{s['trainable_params']:,} | {s['gflops']:.2f} |"
      )
  return lines


def nas_section(workdir, nas_workdir) -> list[str]:
  from scalenet_jax.nas import sampling

  out_dir = os.path.join(workdir, "nas_sampling")
  sampling.main(["--space", "fmnist", "--n", "3000", "--out", out_dir])
  with open(os.path.join(out_dir, "flops_fmnist.json")) as f:
    hist = json.load(f)
  lines = [
      f"3,000 paths of the Fashion-MNIST space per sampler (histogram: `{out_dir}/flops_hist_fmnist.png`):",
      "",
      "| sampler | modes of the FLOPs histogram | median MMACs | 5-95% MMACs |",
      "|---|---|---|---|",
  ]
  lines += [
      f"| {m} | {h['modes']} | {h['median_macs'] / 1e6:.1f} | {h['p5'] / 1e6:.1f}-{h['p95'] / 1e6:.1f} |"
      for m, h in hist.items()
  ]
  if nas_workdir and os.path.exists(os.path.join(nas_workdir, "report.md")):
    with open(os.path.join(nas_workdir, "report.md")) as f:
      lines += ["", "NAS pipeline report (from a real run):", "", f.read()]
  else:
    lines += [
        "",
        "No NAS search run is included here (pass --nas_workdir of a finished "
        "`configs/nas_fmnist_search.py` run); rank correlations come from that report.",
    ]
  return lines


def render(budget, seeds, pre, runs, abl, nas_lines, paper_lines) -> str:
  pre_steps, ft_steps, split = BUDGETS[budget]
  out = [
      "# Reproduction report (generated by `python -m scalenet_jax.reproduce`)",
      "",
      f"Budget `{budget}`: pretrain {pre_steps} steps, fine-tune {ft_steps} steps per run, batch {demo.BATCH}, "
      f"micro ViT (6 layers, d=64) on Fashion-MNIST, evaluated on the "
      f"{'test set (10,000 images)' if split == 'test' else '1,000-image held-out minival split'}. "
      f"Pretrained top-1 over {seeds} seed(s): {_ms(pre)}%.",
      "",
      "## 1. ScaleNet vs baselines (Table I style, top-1 %, mean ± std over seeds)",
      "",
      "| method | layers | params | unique | top-1 at init (minival) | top-1 after | ms/step |",
      "|---|---|---|---|---|---|---|",
  ]
  for label, _ in demo.VARIANTS:
    rs = runs[label]
    ms = [r["sec_per_step"] for r in rs if r["sec_per_step"]]
    ms = f"{statistics.mean(ms) * 1e3:.0f}" if ms else "n/a"
    out.append(
        f"| {label} | {sum(rs[0]['depths'])} | {rs[0]['params']:,} | {rs[0]['unique_params']:,} | "
        f"{_ms([r['top1_init'] for r in rs])} | {_ms([r['top1'] for r in rs])} | {ms} |"
    )
  out += [
      "",
      "## 2. Ablations (seed 0, one pretrained model)",
      "",
      "| family | variant | unique params | top-1 after |",
      "|---|---|---|---|",
  ]
  out += [f"| {r['family']} | {r['label']} | {r['unique_params']:,} | {r['top1'] * 100:.2f} |" for r in abl]
  out += ["", "## 3. Which paper claims hold at this scale", ""] + [f"- {v}" for v in verdicts(runs, abl)]
  out += [
      "",
      "Single-digit-seed, small-budget runs: differences below about one point are within noise.",
      "",
      "## 4. ScaleNet-search",
      "",
  ] + nas_lines
  out += ["", "## 5. Full-size paper configs (`--mode summary`, 1 MAC = 1 FLOP)", ""] + paper_lines
  return "\n".join(out) + "\n"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  pre_steps, ft_steps, split = BUDGETS[FLAGS.budget]
  pre, runs = table1(FLAGS.workdir, FLAGS.seeds, pre_steps, ft_steps, split)
  abl = ablations(FLAGS.workdir, pre_steps, ft_steps, split)
  report = render(
      FLAGS.budget, FLAGS.seeds, pre, runs, abl, nas_section(FLAGS.workdir, FLAGS.nas_workdir), paper_configs_table()
  )
  os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
  from scalenet_jax import lm_study  # pylint: disable=g-import-not-at-top

  kept = lm_study.section_of(FLAGS.out)  # the decoder study's section has its own command: keep it
  with open(FLAGS.out, "w") as f:
    f.write(report + (f"\n{kept}\n" if kept else ""))
  with open(os.path.join(FLAGS.workdir, "reproduction.json"), "w") as f:
    json.dump({"pretrain": pre, "table1": runs, "ablations": abl}, f, indent=1)
  print(report)


def define_flags():
  """Flags of this CLI (defined on demand: other modules import this one)."""
  flags.DEFINE_string("workdir", "repro_workdir", "Where the runs go.")
  flags.DEFINE_string("out", "docs/reproduction.md", "The generated report.")
  flags.DEFINE_enum("budget", "demo", list(BUDGETS), "Steps per run (tiny = smoke test).")
  flags.DEFINE_integer("seeds", 2, "Seeds of the Table-I comparison.")
  flags.DEFINE_string("nas_workdir", "", "A finished NAS pipeline workdir to include (report.md there).")


if __name__ == "__main__":
  jax_utils.configure_cpu()  # before jax starts: XLA:CPU flags, allocator (docs/performance.md)
  define_flags()
  app.run(main)
