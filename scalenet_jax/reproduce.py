r"""Generate docs/reproduction.md from real runs on Fashion-MNIST (and the paper configs' counts).

  python -m scalenet_jax.reproduce --workdir /tmp/repro --budget demo --seeds 3 [--base FILE] [--nas_workdir DIR]
  python -m scalenet_jax.reproduce --nas_only --nas_workdir DIR   # only the NAS run's section of --out

Every run starts from the same released base (pretrained/, as the paper starts from timm's weights;
`--base` another release file) and differs only in its fine-tuning seed. Sections: (1) Table-I-style
comparison, ScaleNet vs Random/Stack/Interpolate/SWA, the 12-layer model from scratch and the base trained
further; (2) ablations (adjustment, mapping, R, rank, drop path); (3) training efficiency: ScaleNet vs
the 2x-deep model from scratch for the same and for 3x the steps (paper Table VII); (4) ScaleNet-search:
HSS vs uniform FLOPs histograms (+ a NAS pipeline's report when given); (5) exact params/FLOPs of the
six full-size paper configs. Top-1 is reported as mean ± 95% t-interval over seeds, and every comparison
as the paired (same-seed) difference with its interval: a claim holds only when that interval excludes
0 (scalenet_jax.stats). Runs resume from their workdirs, so the script can be interrupted and restarted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import sys

from absl import app, flags, logging

from scalenet_jax import config_lib, demo, doc_sections, jax_utils, paths, stats, summary
from scalenet_jax.errors import ConfigError, MissingInputError, UserError
from scalenet_jax.models import registry
from scalenet_jax.train import metrics as metrics_lib

FLAGS = flags.FLAGS

# (fine-tune steps per run at batch demo.BATCH, eval split). 'demo' is the default demo's budget, so a
# finished `python -m scalenet_jax.demo --workdir D` can serve as seed 0: link it as <workdir>/seed0.
BUDGETS = {
    "tiny": (20, "minival"),
    "demo": (demo.BUDGETS[False]["finetune"], demo.BUDGETS[False]["eval_split"]),
    "full": (2 * demo.EPOCH_STEPS, "test"),
}
# (family, label, setting) of ScaleNet 2x; the row whose setting is the base's recipe (demo.variant_config)
# is its family's default: the Table I run itself. `drop_path_rate` sets the model's, the rest the expansion
# (demo.setting_holder).
ABLATIONS = [
    ("adjustment", "adapter (r=16)", {"adjust": "adapter"}),
    ("adjustment", "LoRA (r=16, qkv/proj/fc1/fc2)", {"adjust": "lora"}),
    ("adjustment", "none (weight sharing only)", {"adjust": "none"}),
    ("mapping", "interpolate", {"mapping": "interpolate"}),
    ("mapping", "stack", {"mapping": "stack"}),
    ("reuse", "R=2", {"reuse": 2}),
    ("reuse", "R=3", {"reuse": 3}),
    ("rank", "r=4", {"rank": 4}),
    ("rank", "r=16", {"rank": 16}),
    ("rank", "r=32", {"rank": 32}),
    ("drop path", "0.0", {"drop_path_rate": 0.0}),
    ("drop path", "0.1", {"drop_path_rate": 0.1}),
    ("drop path", "0.2", {"drop_path_rate": 0.2}),
]
SUBSETS = {  # the shared-layer subsets (doc §1) of the micro models: ViT layer groups, Swin stages
    "vit": [("all layers", ""), ("layers 0,1", "0,1"), ("layers 2,3", "2,3"), ("layers 4,5", "4,5")],
    "swin": [("last stage", ""), ("stage 0", "0"), ("stage 1", "1")],
}
SCALENET = demo.VARIANTS[0][0]
SCRATCH = next(l for l, k in demo.VARIANTS if k == "scratch")
MATCHED = [l for l, k in demo.VARIANTS if k in ("random", "stack", "interpolate", "swa")]
LONGER = 3  # the efficiency comparison: scratch also trains this many times the steps
LONGER_SCRATCH = f"{SCRATCH}, {LONGER}x steps"


def _slug(overrides):
  return "scalenet" + "".join(f"_{k}{v}".replace(",", "-") for k, v in sorted(overrides.items()))


def _seed_dir(ctx, seed) -> str:
  return os.path.join(ctx["workdir"], f"seed{seed}")


def _run(ctx, seed, name, kind, steps, **overrides) -> dict | None:
  """One fine-tuning run's row (recorded by an earlier report, or trained or resumed as needed); None for
  an unfinished run when ctx['finished_only'] (it shows as pending)."""
  if (seed, name) in ctx["recorded"]:
    ctx["reused"].add((seed, name))  # a set: the ablations' default rows are Table I's runs
    return ctx["recorded"][(seed, name)]
  if ctx["finished_only"] and metrics_lib.final(os.path.join(_seed_dir(ctx, seed), name), steps) is None:
    return None
  return demo.finetune(_seed_dir(ctx, seed), name, kind, ctx["base"], steps, ctx["split"], seed, **overrides)


def table1(ctx, seeds, steps) -> dict:
  """label -> one row per seed (demo.VARIANTS, each seed fine-tuned from the same base)."""
  runs = {}
  for seed in range(seeds):
    for label, kind in demo.VARIANTS:
      runs.setdefault(label, []).append(_run(ctx, seed, demo.run_name(kind), kind, steps))
  return runs


def ablation_plan(base, steps, split) -> list[tuple[str, str, dict]]:
  """(family, label, overrides of the base's ScaleNet recipe) per ablation row of `base`'s model family;
  overrides {} = the family's default row."""
  recipe = demo.variant_config("scalenet", base, steps, split, seed=0)
  current = lambda k: demo.setting_holder(recipe, k)[k]
  subsets = [("subset", label, {"subset": v}) for label, v in SUBSETS[registry.family_of(base["model"])]]
  return [(f, l, {k: v for k, v in o.items() if v != current(k)}) for f, l, o in ABLATIONS + subsets]


def recorded_runs(path, base, budget) -> dict:
  """(seed, run name) -> row of every finished run that an earlier report of the same base and budget
  recorded in its JSON at `path` (`--reuse`): a report longer than one session, on machines that keep no
  workdir, continues where the last one stopped."""
  record = paths.read_json(path)
  want = (budget, _portable(base["path"]), base["top1"])
  if (record["budget"], record["base"]["path"], record["base"]["top1"]) != want:
    raise ConfigError(
        f"--reuse {path} records budget {record['budget']!r} on {record['base']['path']}, not {budget!r} on {want[1]}"
    )
  steps, split = BUDGETS[budget]
  named = [(demo.run_name(kind), record["table1"][label]) for label, kind in demo.VARIANTS]
  named += [(f"scratch_x{LONGER}", e["rows"]) for e in record["efficiency"] if e["label"] == LONGER_SCRATCH]
  by = {(a["family"], a["label"]): a["rows"] for a in record["ablations"]}
  named += [(_slug(o), by[(f, l)]) for f, l, o in ablation_plan(base, steps, split) if (f, l) in by]
  return {(seed, name): row for name, rows in named for seed, row in enumerate(rows) if row is not None}


def ablations(ctx, seeds, steps) -> list[dict]:
  """One entry per ablation row with its per-seed rows (the defaults reuse the Table I ScaleNet runs)."""
  out = []
  for family, label, overrides in ablation_plan(ctx["base"], steps, ctx["split"]):
    rows = [_run(ctx, s, _slug(overrides), "scalenet", steps, **overrides) for s in range(seeds)]
    out.append(dict(family=family, label=label, default=not overrides, rows=rows))
  return out


def efficiency(ctx, seeds, steps, runs) -> list[dict]:
  """ScaleNet and scratch at `steps` (Table I's runs) and scratch at LONGER x `steps`: per-seed rows."""
  longer = [_run(ctx, s, f"scratch_x{LONGER}", "scratch", LONGER * steps) for s in range(seeds)]
  return [
      dict(label=SCALENET, steps=steps, rows=runs[SCALENET]),
      dict(label=SCRATCH, steps=steps, rows=runs[SCRATCH]),
      dict(label=LONGER_SCRATCH, steps=LONGER * steps, rows=longer),
  ]


def plot_curves(ctx, seeds, steps, out_png) -> bool:
  """Training loss against step of every Table I row (mean over its finished seeds) as a PNG: whether the
  fine-tuning budget lets the 2x-deep models settle. False (nothing written) when no run has finished."""
  curves = {}
  for label, kind in demo.VARIANTS:
    logs = [metrics_lib.read(os.path.join(_seed_dir(ctx, s), demo.run_name(kind))) for s in range(seeds)]
    logs = [[(l["step"], l["loss"]) for l in log if "loss" in l] for log in logs]
    logs = [log for log in logs if log and log[-1][0] == steps]
    if logs:
      n = min(len(log) for log in logs)
      curves[label] = [(logs[0][i][0], statistics.mean(log[i][1] for log in logs)) for i in range(n)]
  if not curves:
    return False
  plt = paths.pyplot()

  fig, ax = plt.subplots(figsize=(7, 3.6), dpi=80)
  for label, points in curves.items():
    ax.plot(*zip(*points), marker=".", lw=1, label=label)
  ax.set(xlabel="fine-tuning step (batch 64)", ylabel="train loss (label smoothing 0.1)", yscale="log")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  paths.save_figure(fig, out_png, dpi=80)
  plt.close(fig)
  return True


def _top1(rows, key="top1"):
  return [r[key] * 100 for r in rows]


def _pm(value: str, h: float) -> str:
  """`value ± h`, or `value` alone when one seed gives no interval (h is NaN)."""
  return value if h != h else f"{value} ± {h:.2f}"


def _ci(values) -> str:
  m, h = stats.t_interval(values)
  return _pm(f"{m:.2f}", h)


def _diff(a_rows, b_rows) -> tuple[str, str]:
  """('+d ± h', decision) of top-1 a - b in points, paired by seed."""
  d, h = stats.paired(_top1(a_rows), _top1(b_rows))
  return _pm(f"{d:+.2f}", h), stats.decide(d, h)


def _pending(*row_sets) -> str:
  """'' when every run of the row sets has finished, else 'pending (k/n runs finished)'."""
  rows = [r for rs in row_sets for r in rs]
  done = sum(r is not None for r in rows)
  return "" if done == len(rows) else f"pending ({done}/{len(rows)} runs finished)"


def _claim(text, a_rows, b_rows) -> str:
  pending = _pending(a_rows, b_rows)
  if pending:
    return f"{text}: **{pending}**."
  diff, decision = _diff(a_rows, b_rows)
  verdict = {"higher": "holds", "lower": "does not hold (the reverse holds)", "undecided": "not shown"}
  return f"{text}: **{verdict.get(decision, 'undecided (one seed)')}** (paired difference {diff} points)."


def verdicts(runs, abl, eff) -> list[str]:
  """The paper's claims, each decided by a paired 95% interval that must exclude 0."""
  by = {(a["family"], a["label"]): a["rows"] for a in abl}
  out = [_claim(f"ScaleNet beats the parameter-matched baseline {l}", runs[SCALENET], runs[l]) for l in MATCHED]
  out.append(_claim("ScaleNet beats the same-depth model trained from scratch", runs[SCALENET], runs[SCRATCH]))
  out.append(
      _claim("ScaleNet beats the base trained further (control)", runs[SCALENET], runs["Pretrained, trained further"])
  )
  adapter = by[("adjustment", "adapter (r=16)")]
  for other in ("LoRA (r=16, qkv/proj/fc1/fc2)", "none (weight sharing only)"):
    out.append(_claim(f"Adapter beats {other} (paper Table III)", adapter, by[("adjustment", other)]))
  mapping = {a["default"]: a for a in abl if a["family"] == "mapping"}
  out.append(
      _claim(
          f"The recipe's mapping ({mapping[True]['label']}) beats {mapping[False]['label']}",
          mapping[True]["rows"],
          mapping[False]["rows"],
      )
  )
  eff_rows = {e["label"]: e["rows"] for e in eff}
  out.append(
      _claim(
          f"ScaleNet beats scratch trained {LONGER}x as long (paper Table VII)",
          eff_rows[SCALENET],
          eff_rows[LONGER_SCRATCH],
      )
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


def nas_section(workdir, nas_workdir, stem) -> list[str]:
  """The sampler histograms (the PNG is copied next to the report, `<stem>_flops_hist.png`) and the NAS
  run's section (`nas_run_section`)."""
  from scalenet_jax.nas import sampling

  hist_png = stem + "_flops_hist.png"
  out_dir = os.path.join(workdir, "nas_sampling")
  sampling.main(["--space", "fmnist", "--n", "3000", "--out", out_dir])
  with open(os.path.join(out_dir, "flops_fmnist.json")) as f:
    hist = json.load(f)
  shutil.copyfile(os.path.join(out_dir, "flops_hist_fmnist.png"), hist_png)
  lines = [
      "3,000 paths of the Fashion-MNIST space per sampler:",
      "",
      f"![HSS vs uniform MACs histograms]({os.path.basename(hist_png)})",
      "",
      "| sampler | modes of the FLOPs histogram | median MMACs | 5-95% MMACs |",
      "|---|---|---|---|",
  ]
  lines += [
      f"| {m} | {h['modes']} | {h['median_macs'] / 1e6:.1f} | {h['p5'] / 1e6:.1f}-{h['p95'] / 1e6:.1f} |"
      for m, h in hist.items()
  ]
  return lines + ["", nas_run_section(nas_workdir, stem)]


def nas_run_section(nas_workdir, stem) -> str:
  """The marked `nas_run` section: a finished NAS pipeline run's report (`report.md` of `nas_workdir`,
  headings under this report's §5, its images copied next to the report as `<stem>_nas_*.png`) with its
  `results.json` as `<stem>_nas.json`. Without `nas_workdir`, the section the report at `<stem>.md`
  already holds (a NAS run is its own command) or a line saying there is none."""
  if not nas_workdir:
    kept = doc_sections.section_of(stem + ".md", "nas_run")
    return kept or doc_sections.wrap(
        "nas_run",
        "No NAS search run is included here (pass --nas_workdir of a finished `configs/nas_fmnist_search.py` "
        "run); rank correlations come from that report.",
    )
  report = os.path.join(nas_workdir, "report.md")
  if not os.path.exists(report):
    raise MissingInputError(f"--nas_workdir {nas_workdir} holds no report.md (is the NAS run finished?)")
  with open(report) as f:
    text = f.read()
  name = os.path.basename(stem)
  for png in ("flops_hist.png", "fits.png"):
    if os.path.exists(os.path.join(nas_workdir, png)):
      shutil.copyfile(os.path.join(nas_workdir, png), f"{stem}_nas_{png}")
      text = text.replace(f"]({png})", f"]({name}_nas_{png})")
  shutil.copyfile(os.path.join(nas_workdir, "results.json"), stem + "_nas.json")
  text = re.sub(r"^(#+) ", lambda m: "#" * min(len(m.group(1)) + 2, 6) + " ", text, flags=re.M)
  intro = (
      "NAS pipeline report, from a real run of `python -m scalenet_jax.main --config "
      f"configs/nas_fmnist_search.py --workdir DIR` (every number in `{name}_nas.json`):"
  )
  return doc_sections.wrap("nas_run", f"{intro}\n\n{text}")


def render(budget, seeds, base, runs, abl, eff, nas_lines, paper_lines, curves_png=None, reused=None) -> str:
  """The report; `reused` = (runs taken from an earlier report's JSON, its file name) under `--reuse`."""
  steps, split = BUDGETS[budget]
  test = "test set (10,000 images)" if split == "test" else "1,000-image held-out minival split"
  out = [
      "# Reproduction report (generated by `python -m scalenet_jax.reproduce`)",
      "",
      f"Budget `{budget}`: every run fine-tunes {steps} steps at batch {demo.BATCH} "
      f"({steps / demo.EPOCH_STEPS:.2f} epochs of the {demo.TRAIN_IMAGES:,} training images) from the same base, "
      f"`{os.path.basename(base['path'])}` (top-1 {base['top1'] * 100:.2f}% on {base['eval_split']}, "
      f"{base['steps']:,} steps), with fine-tuning seeds 0..{seeds - 1}; top-1 on the {test}, at init on the "
      "minival split. Values: mean ± 95% t-interval over seeds; differences are paired by seed, and a claim "
      "holds only when the interval of its difference excludes 0.",
  ]
  if reused and reused[0]:
    out += [
        "",
        f"{reused[0]} of the runs were trained by an earlier run of this command (another session, perhaps another "
        f"machine) and are taken from the record it left (`--reuse {reused[1]}`, same training code); the others "
        "trained in this one. Step times of runs from different sessions are not from one machine.",
    ]
  out += [
      "",
      "## 1. ScaleNet vs baselines (Table I style, top-1 %)",
      "",
      "| method | layers | params | unique | top-1 at init | top-1 after | ScaleNet minus this row | ms/step |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for label, _ in demo.VARIANTS:
    rs = runs[label]
    if _pending(rs):
      out.append(f"| {label} | {_pending(rs)} |")
      continue
    ms = [r["sec_per_step"] for r in rs if r["sec_per_step"]]
    ms = f"{statistics.mean(ms) * 1e3:.0f}" if ms else "n/a"
    diff = "" if label == SCALENET else _pending(runs[SCALENET]) or _diff(runs[SCALENET], rs)[0]
    out.append(
        f"| {label} | {sum(rs[0]['depths'])} | {rs[0]['params']:,} | {rs[0]['unique_params']:,} | "
        f"{_ci(_top1(rs, 'top1_init'))} | {_ci(_top1(rs))} | {diff} | {ms} |"
    )
  if curves_png:
    out += [
        "",
        "Training loss of each row (the loss of the batch at each log step, mean over the seeds that the run "
        "drawing it trained): "
        f"![training curves]({os.path.basename(curves_png)})",
    ]
  out += [
      "",
      "## 2. Ablations (ScaleNet 2x, one change each; minus = the family's default minus this row)",
      "",
      "| family | variant | unique params | top-1 after | default minus this row |",
      "|---|---|---|---|---|",
  ]
  defaults = {a["family"]: a["rows"] for a in abl if a["default"]}
  for a in abl:
    if _pending(a["rows"]):
      out.append(f"| {a['family']} | {a['label']} | {_pending(a['rows'])} |")
      continue
    diff = (
        "(default)" if a["default"] else _pending(defaults[a["family"]]) or _diff(defaults[a["family"]], a["rows"])[0]
    )
    out.append(
        f"| {a['family']} | {a['label']} | {a['rows'][0]['unique_params']:,} | {_ci(_top1(a['rows']))} | {diff} |"
    )
  out += [
      "",
      f"## 3. Training efficiency (paper Table VII analog): ScaleNet vs scratch at 1x and {LONGER}x the steps",
      "",
      "| run | steps | top-1 after | training time (s, steps x mean step time) |",
      "|---|---|---|---|",
  ]
  for e in eff:
    if _pending(e["rows"]):
      out.append(f"| {e['label']} | {e['steps']} | {_pending(e['rows'])} |")
      continue
    secs = [r["sec_per_step"] * e["steps"] for r in e["rows"] if r["sec_per_step"]]
    out.append(f"| {e['label']} | {e['steps']} | {_ci(_top1(e['rows']))} | {_ci(secs) if secs else 'n/a'} |")
  out += ["", "## 4. Which paper claims hold at this scale", ""] + [f"- {v}" for v in verdicts(runs, abl, eff)]
  out += ["", "## 5. ScaleNet-search", ""] + nas_lines
  out += ["", "## 6. Full-size paper configs (`--mode summary`, 1 MAC = 1 FLOP)", ""] + paper_lines
  return "\n".join(out) + "\n"


def _portable(path: str) -> str:
  """`path` relative to the repository when it lies inside it (a released base), else as given."""
  rel = os.path.relpath(os.path.abspath(path), paths.REPO_ROOT)
  return path if rel.startswith("..") else rel


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    report = nas_only() if FLAGS.nas_only else reproduce()
  except UserError as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)
  print(report)


def nas_only() -> str:
  """`--nas_only`: rewrites the report's `nas_run` section from `--nas_workdir`, nothing else."""
  if not FLAGS.nas_workdir:
    raise ConfigError("--nas_only needs --nas_workdir (a finished configs/nas_fmnist_search.py run)")
  if not doc_sections.section_of(FLAGS.out, "nas_run"):
    raise MissingInputError(f"{FLAGS.out} has no nas_run section to replace (run the full reproduce once)")
  section = nas_run_section(FLAGS.nas_workdir, os.path.splitext(FLAGS.out)[0])
  doc_sections.replace(FLAGS.out, "nas_run", section, append=False)
  return section


def reproduce() -> str:
  steps, split = BUDGETS[FLAGS.budget]
  base = demo.released_base(FLAGS.base or demo.RELEASED)
  recorded = recorded_runs(FLAGS.reuse, base, FLAGS.budget) if FLAGS.reuse else {}
  ctx = dict(workdir=FLAGS.workdir, base=base, split=split, finished_only=FLAGS.finished_only)
  ctx |= dict(recorded=recorded, reused=set())
  runs = table1(ctx, FLAGS.seeds, steps)
  eff = efficiency(ctx, FLAGS.seeds, steps, runs)  # before the ablations: Table I's twin
  abl = ablations(ctx, FLAGS.seeds, steps)
  os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
  stem = os.path.splitext(FLAGS.out)[0]  # the report's images and JSON sit next to it
  nas = nas_section(FLAGS.workdir, FLAGS.nas_workdir, stem)
  curves = stem + "_curves.png"
  # Runs taken from a record left no loss logs here: keep the curves their report drew when none is new.
  drawn = plot_curves(ctx, FLAGS.seeds, steps, curves) or (ctx["reused"] and os.path.exists(curves))
  curves = curves if drawn else None
  reused = (len(ctx["reused"]), os.path.basename(FLAGS.reuse))
  report = render(FLAGS.budget, FLAGS.seeds, base, runs, abl, eff, nas, paper_configs_table(), curves, reused)
  kept = doc_sections.section_of(FLAGS.out, "lm_study")  # the decoder study has its own command: keep it
  with open(FLAGS.out, "w") as f:
    f.write(report + (f"\n{kept}\n" if kept else ""))
  with open(stem + ".json", "w") as f:  # every number of the report, next to it
    record = {"base": {k: v for k, v in base.items() if k != "norm"}, "table1": runs, "ablations": abl}
    record["base"]["path"] = _portable(base["path"])
    record |= {"efficiency": eff, "budget": FLAGS.budget, "seeds": FLAGS.seeds}
    json.dump(record, f, indent=1, sort_keys=True)  # sorted: a re-run diffs only where numbers changed
  return report


def define_flags():
  """Flags of this CLI (defined on demand: other modules import this one)."""
  flags.DEFINE_string("workdir", "repro_workdir", "Where the runs go.")
  flags.DEFINE_string("out", "docs/reproduction.md", "The generated report.")
  flags.DEFINE_enum("budget", "demo", list(BUDGETS), "Steps per run (tiny = smoke test).")
  flags.DEFINE_integer("seeds", 3, "Fine-tuning seeds of every run (all from the same base).")
  flags.DEFINE_string("base", None, "Release file of the base (default: the demo's, in pretrained/).")
  flags.DEFINE_bool(
      "finished_only",
      False,
      "Train nothing: report the runs already finished in --workdir and mark the others pending (to read a "
      "long run's progress, or publish part of it).",
  )
  flags.DEFINE_string(
      "reuse",
      "",
      "An earlier report's JSON (e.g. docs/reproduction.json) of the same base and budget: its finished runs "
      "count as done and only the others train (a report longer than one session; the training code must be "
      "the same).",
  )
  flags.DEFINE_string("nas_workdir", "", "A finished NAS pipeline workdir to include (report.md there).")
  flags.DEFINE_bool("nas_only", False, "Train nothing: rewrite only --out's NAS run section from --nas_workdir.")


if __name__ == "__main__":
  jax_utils.configure_cpu()  # before jax starts: XLA:CPU flags, allocator (docs/performance.md)
  define_flags()
  app.run(main)
