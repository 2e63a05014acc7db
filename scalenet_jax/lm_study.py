r"""The real-text comparison of docs/reproduction.md: ScaleNet 2x vs the stacked baseline vs the base trained
further, equal budgets, several seeds, held-out perplexity with 95% confidence intervals.

  python -m scalenet_jax.lm_study --workdir /tmp/lm_study --seeds 3 --doc docs/reproduction.md

1. Pretrains the base once (`configs/llama_fortunes_2x.py:run=pretrain`: llama_small on Debian's
   fortunes, BPE tokenizer trained on the train split), `<workdir>/base`.
2. For each seed and arm (`scalenet`, `stack`, `further`), the same config file with `run=<arm>,seed=<s>`
   from the base's export: same data, steps, batch and schedule; the seed sets the data order and the
   init of the new modules. `<workdir>/<arm>_s<seed>`.
3. Per arm: mean held-out perplexity with a t-interval over seeds, and the paired difference to the base
   trained further (same seed = same batches); written to `<workdir>/lm_study.json` / `.md` and, with
   `--doc`, between the `lm_study` markers of that file. Runs resume from their workdirs.

The verdict is computed from the measured numbers, whatever they are.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time

from absl import app, flags, logging

from scalenet_jax import config_lib, doc_sections, jax_utils, paths, stats

FLAGS = flags.FLAGS

ARMS = ("scalenet", "stack", "further")
LABELS = {
    "scalenet": "ScaleNet 2x (8 blocks over 4 shared layers, adapters r=16; adapters + norms train)",
    "stack": "stacked baseline (parameter-matched new layers, copies of the first; new layers + norms train)",
    "further": "base trained further (4 layers, every parameter trains)",
}
BEGIN, END = doc_sections.markers("lm_study")


def load_config_file(path: str, arg: str):
  return config_lib.load_config_file(path, arg)


def machine() -> dict:
  import tokenizers  # pylint: disable=g-import-not-at-top

  return {**jax_utils.machine(), "tokenizers": tokenizers.__version__}


KEEP = (
    "model",
    "perplexity",
    "eval_loss",
    "eval_tokens",
    "params",
    "trainable_params",
    "train_sec",
    "wall_sec",
    "steps",
)


def run_one(path, arg, workdir, steps, mode="train", done=None) -> dict:
  """One `lm_trainer` run; `done`: the entry of an earlier study for the same run (reused when its
  argument and steps are this run's, so a rerun only computes what is new)."""
  if done and done.get("arg") == arg and done.get("steps_flag") == steps:
    return done
  from scalenet_jax import config_lib, lm_trainer  # pylint: disable=g-import-not-at-top

  c = load_config_file(path, arg)
  if steps:
    config_lib.override(c, {"steps": steps, "optim.warmup_steps": steps // 20})
  t0 = time.time()
  r = lm_trainer.run(c, workdir, mode)
  r.update(wall_sec=time.time() - t0, model=c.model.name)
  return {"arg": arg, "steps_flag": steps, **{k: r[k] for k in KEEP if k in r}}


def study(workdir, seeds, config, pretrain_steps=0, steps=0) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  # Seeds of one arm compile the same programs: keep them across runs.
  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
  prev_file = os.path.join(workdir, "lm_study.json")
  prev = {}
  if os.path.exists(prev_file):
    with open(prev_file) as f:
      old = json.load(f)
    prev = {**old.get("runs", {}), **{f"init_{k}": v for k, v in old.get("init", {}).items()}, "base": old.get("base")}
  base_dir = os.path.join(workdir, "base")
  out = {"machine": machine(), "config": os.path.relpath(config), "seeds": seeds, "runs": {}, "init": {}}
  out["base"] = run_one(config, "run=pretrain", base_dir, pretrain_steps, done=prev.get("base"))
  base = os.path.join(base_dir, "export")
  # The grown models before any training (seed 0): how far from the base's function each arm starts.
  for arm in ("scalenet", "stack"):
    wd = os.path.join(workdir, f"{arm}_init")
    out["init"][arm] = run_one(config, f"run={arm},base={base},seed=0", wd, steps, "eval", prev.get(f"init_{arm}"))
  for s in range(seeds):
    for arm in ARMS:
      wd = os.path.join(workdir, f"{arm}_s{s}")
      name = f"{arm}_s{s}"
      out["runs"][name] = run_one(config, f"run={arm},base={base},seed={s}", wd, steps, done=prev.get(name))
  out["summary"] = summarize(out["runs"], seeds)
  return out


def summarize(runs, seeds) -> dict:
  ppl = {a: [runs[f"{a}_s{s}"]["perplexity"] for s in range(seeds)] for a in ARMS}
  rows = {}
  for a in ARMS:
    m, h = stats.t_interval(ppl[a])
    d, dh = stats.paired(ppl[a], ppl["further"])
    r0 = runs[f"{a}_s0"]
    rows[a] = {
        "ppl": ppl[a],
        "mean": m,
        "ci": h,
        "diff": d,
        "diff_ci": dh,
        "params": r0["params"],
        "trainable": r0["trainable_params"],
    }
    rows[a]["sec"] = statistics.fmean(runs[f"{a}_s{s}"].get("train_sec", float("nan")) for s in range(seeds))
  return rows


def verdict(rows) -> str:
  """One sentence from the measured paired differences (CI of the difference vs base trained further)."""
  parts = []
  for a in ("scalenet", "stack"):
    d, h = rows[a]["diff"], rows[a]["diff_ci"]
    if math.isnan(h):
      word = "differs by"
    elif d + h < 0:
      word = "is better (lower perplexity) than the base trained further, by"
    elif d - h > 0:
      word = "is worse (higher perplexity) than the base trained further, by"
    else:
      word = "is not distinguishable from the base trained further (the interval covers 0):"
    parts.append(f"{a} {word} {d:+.3f} ± {h:.3f}")
  s, k = rows["scalenet"], rows["stack"]
  if not math.isnan(s["diff_ci"]):
    cmp_ = "lower" if s["mean"] < k["mean"] else "higher"
    parts.append(
        f"ScaleNet's mean perplexity is {cmp_} than the stacked baseline's ({s['mean']:.3f} vs {k['mean']:.3f})"
    )
  return "; ".join(parts) + "."


def render(out) -> str:
  m, rows, base = out["machine"], out["summary"], out["base"]
  lines = [
      BEGIN,
      "## Decoder LM on real text",
      "",
      (
          "ScaleNet 2x of a small decoder pretrained here on Debian's `fortunes`, against the parameter-matched"
          " stacked baseline and the base trained further, at equal budgets (same data order per seed, steps, batch"
          " and schedule); held-out perplexity (5% of the fortunes by a hash of their text), 95% t-intervals over"
          " seeds, paired differences (same seed) against the base trained further."
      ),
      "",
      (
          f"Measured with `python -m scalenet_jax.lm_study --workdir DIR --seeds {out['seeds']} --doc docs/reproduction.md`"
          f" on {m['cpu']}, {m['cores']} cores ({m['backend']}); Python {m['python']}, jax {m['jax']}, flax {m['flax']},"
          f" optax {m['optax']}, tokenizers {m['tokenizers']}. Config `{out['config']}`."
      ),
      "",
      (
          f"Base ({base['model']} from scratch, {base.get('steps', '?')} steps): held-out perplexity **{base['perplexity']:.3f}**"
          f" (loss {base['eval_loss']:.4f} over {base['eval_tokens']:,} tokens), {base['params']:,} params."
      ),
      "",
      (
          "| arm | params (stored) | trainable | held-out ppl, mean ± 95% CI | paired diff vs further | per-seed ppl"
          " | train s (incl. compile) |"
      ),
      "|---|---|---|---|---|---|---|",
  ]
  for a in ARMS:
    r = rows[a]
    diff = "—" if a == "further" else f"{r['diff']:+.3f} ± {r['diff_ci']:.3f}"
    lines.append(
        f"| {LABELS[a]} | {r['params']:,} | {r['trainable']:,} | {r['mean']:.3f} ± {r['ci']:.3f} | {diff} |"
        f" {', '.join(f'{x:.3f}' for x in r['ppl'])} | {r['sec']:.0f} |"
    )
  init = out.get("init", {})
  if init:
    at_init = ", ".join(f"{a} {r['perplexity']:.3f}" for a, r in init.items())
    lines += [
        "",
        (
            f"Held-out perplexity of the grown models before any training (seed 0): {at_init}. The 2x model at init"
            " runs every pretrained layer twice in a row (interpolate mapping, zero-init adapters), which is not"
            " the base's function; the stacked baseline appends copies of the first layers."
        ),
    ]
  lines += ["", f"Verdict (computed): {verdict(rows)}", END]
  return "\n".join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  config = FLAGS.config or str(paths.REPO_ROOT / "configs" / "llama_fortunes_2x.py")
  os.makedirs(FLAGS.workdir, exist_ok=True)
  out = study(FLAGS.workdir, FLAGS.seeds, config, FLAGS.pretrain_steps, FLAGS.steps)
  section = render(out)
  with open(os.path.join(FLAGS.workdir, "lm_study.json"), "w") as f:
    json.dump(out, f, indent=1)
  with open(os.path.join(FLAGS.workdir, "lm_study.md"), "w") as f:
    f.write(section + "\n")
  if FLAGS.doc:
    doc_sections.replace(FLAGS.doc, "lm_study", section)
  print(section)


def define_flags():
  """Flags of this CLI (defined on demand: `reproduce` imports this module)."""
  flags.DEFINE_string("workdir", None, "Directory for the runs and the result files.")
  flags.DEFINE_integer("seeds", 3, "Seeds per arm (0..seeds-1).")
  flags.DEFINE_integer("pretrain_steps", 0, "Base pretraining steps (0 = the config's).")
  flags.DEFINE_integer("steps", 0, "Steps of every arm (0 = the config's).")
  flags.DEFINE_string("doc", "", "Markdown file whose lm_study section is rewritten ('' = none).")
  flags.DEFINE_string("config", "", "Config file (default: configs/llama_fortunes_2x.py of this checkout).")


if __name__ == "__main__":
  from scalenet_jax import jax_utils  # pylint: disable=g-import-not-at-top

  jax_utils.configure_cpu()  # before jax starts: XLA:CPU flags, allocator (docs/performance.md)
  define_flags()
  app.run(main)
