r"""Resumable small-scale studies: a config file's plan of training runs, one record, one report.

  python -m scalenet_jax.study --config configs/grow_study.py:vit2_p7_crops --workdir /tmp/study --max_minutes 55
  python -m scalenet_jax.study --config configs/grow_study.py:vit2_p7_crops --render_only

The config file defines `get_config(arg)` (one run, of any pipeline `scalenet_jax.main` runs) and
`study(arg)`, the plan: `metric` (a key of the run's final evaluation, `top1` or `perplexity`;
`lower_is_better` for the latter), `runs` in order (name, config arg, arm, seed, phase; `needs`: the run whose release it starts
from; `release`: where this run's final weights are released; `same_as`: "record:run", a run of another
record of the same config file that is this one, taken from there once finished), `arms` (labels), `claims` (arm a beats
arm b, in a family; none for a one-seed plan such as the demo's), `notes` (lines under the report's
intro) and the `record` / `report` paths, relative to the repository. `{workdir}` in a path or a run's
argument stands for the study's workdir (the demo keeps its record, report and base there).

- Every finished run is written to the record at once (one JSON file, replaced atomically), with what it
  measured, its parameter counts, budget and machine. A rerun, on any machine, trains only the runs the
  record lacks, so a study continues from the committed record on a fresh clone.
- `--max_minutes N` starts no run whose estimated time would pass N minutes from the start (estimate:
  the run's arm's measured time on this CPU model, or on other machines scaled by this CPU's measured
  slowdown; else training images x forward GFLOPs x this CPU's rate, else the plan's first guess; plus a
  minute of compile and evaluation).
- A plan's `gate` (the grow study's headroom check) holds back every run of the later phases until the
  gate's claims hold after correction (`--ignore_gate` runs them anyway).
- The report is rendered from the record after every run, pending runs marked: per phase a table of the
  arms (mean ± 95% t-interval over seeds), then the claims as paired (same-seed) differences with their
  raw p and the Holm-Bonferroni adjusted p over the claims of the same family. A claim holds only when
  the adjusted p is below 0.05; until every run of a family is in, its verdicts are provisional.
"""

from __future__ import annotations

import collections
import datetime
import math
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags, logging

from scalenet_jax import config_lib, jax_utils, paths, stats
from scalenet_jax.errors import ConfigError, UserError

FLAGS = flags.FLAGS
ALPHA = 0.05
COMPILE_AND_EVAL_SEC = 60.0  # per run, on top of the training images (2-core CPU, micro models)
# What a record entry keeps of a run's result besides the plan's metric.
KEEP = ("top1", "top5", "loss", "eval_loss", "perplexity", "aacc", "macc", "train_sec", "compile_sec", "sec_per_step")
WORKDIR = "{workdir}"  # in a plan's paths and run arguments: the study's workdir


class Study:
  """A study config file's plan and its record."""

  def __init__(self, config_arg: str, workdir: str = ""):
    path, _, arg = config_arg.partition(":")
    self.config_path = path
    self.module = config_lib.load_config_module(path)
    self.plan = in_workdir(self.module.study(arg) if arg else self.module.study(), os.path.abspath(workdir or "."))
    self.record_path = paths.REPO_ROOT / self.plan["record"]
    self.record = paths.read_json(self.record_path) if self.record_path.exists() else {"runs": {}}
    self.record["title"] = self.plan["title"]

  def config(self, run: dict):
    return self.module.get_config(run["arg"])

  def done(self, name: str) -> dict | None:
    return self.record["runs"].get(name)

  def runs(self) -> list[dict]:
    return planned_runs(self.plan, self.record)

  def pending(self) -> list[dict]:
    return [r for r in self.runs() if r["name"] not in self.record["runs"]]

  def save(self):
    if self.record_path.exists():  # runs another chunk recorded meanwhile (another workdir) are kept
      self.record["runs"] = {**paths.read_json(self.record_path)["runs"], **self.record["runs"]}
    paths.write_json(self.record_path, self.record)
    report = paths.REPO_ROOT / self.plan["report"]
    curves = plot_curves(self.plan, self.record, report.with_name(report.stem + "_curves.png"))
    paths.write_text(report, render(self.plan, self.record, curves))

  def take_same(self, run: dict) -> bool:
    """Records `run` from the run `run['same_as']` ("record path:run name", a record of the same config file)
    when that run has finished with the same config: a run is its config, whoever's study it belongs to."""
    path, _, name = run["same_as"].partition(":")
    other = paths.read_json(paths.REPO_ROOT / path)["runs"].get(name) if (paths.REPO_ROOT / path).exists() else None
    if other is None or self.config(run).to_dict() != self.module.get_config(other["arg"]).to_dict():
      return False
    self.record["runs"][run["name"]] = dict(other, arm=run["arm"], phase=run["phase"], same_as=run["same_as"])
    return True

  def estimate_sec(self, run: dict, counts: dict) -> float:
    """Seconds `run` should take here, compile and eval included. Training time follows images x forward
    GFLOPs only roughly (the swin1_25 study's 2x-deep arm: 1.18x its base's GFLOPs, 1.02x its time), so
    measured times of the run's own arm come first: on this CPU model, else on other machines scaled by
    how much slower this CPU trained the arms both have run. Then the median time per image-GFLOP on this
    CPU; then the plan's first guess."""
    cpu = jax_utils.cpu_model()
    timed = [r for r in self.record["runs"].values() if r.get("train_sec") and r.get("images")]
    here = [r for r in timed if r.get("machine", {}).get("cpu") == cpu]
    there = [r for r in timed if r.get("machine", {}).get("cpu") != cpu]

    def per_image(runs) -> dict:  # arm -> median training seconds per image of its runs
      times = collections.defaultdict(list)
      for r in runs:
        times[r.get("arm")].append(r["train_sec"] / r["images"])
      return {arm: statistics.median(t) for arm, t in times.items()}

    arms_here, arms_there = per_image(here), per_image(there)
    shared = arms_here.keys() & arms_there.keys()
    sec = arms_here.get(run["arm"])
    if sec is None and run["arm"] in arms_there and shared:
      sec = statistics.median(arms_here[a] / arms_there[a] for a in shared) * arms_there[run["arm"]]
    if sec is None:
      rates = [r["train_sec"] / (r["images"] * r["gflops"]) for r in here if r.get("gflops")]
      sec = (statistics.median(rates) if rates else self.plan["sec_per_image_gflop"]) * counts["gflops"]
    return sec * counts["images"] + COMPILE_AND_EVAL_SEC


def in_workdir(plan: dict, workdir: str) -> dict:
  """`plan` with WORKDIR in its paths and runs replaced by `workdir`."""
  where = lambda v: v.replace(WORKDIR, workdir) if isinstance(v, str) else v
  local = lambda run: {k: where(v) for k, v in run.items()}
  make_run = plan["make_run"]
  return dict(
      plan,
      record=where(plan["record"]),
      report=where(plan["report"]),
      runs=[local(r) for r in plan["runs"]],
      make_run=lambda arm, seed: local(make_run(arm, seed)),
  )


def counts_of(config) -> dict:
  """What a report states of a run without training it: layers, parameters, budget."""
  from scalenet_jax import summary  # pylint: disable=g-import-not-at-top

  s = summary.summarize(config, xla_check=False)
  out = {k: s[k] for k in ("depths", "params", "unique_params", "trainable_params", "gflops")}
  out.update(steps=config.steps, batch_size=config.batch_size, images=config.steps * config.batch_size)
  return out


def git_commit() -> str:
  try:
    return subprocess.run(
        ["git", "-C", str(paths.REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ""


def train_one(study: Study, run: dict, workdir: str, counts: dict) -> dict:
  """Trains (or resumes) one run in `<workdir>/<name>`; returns its record entry."""
  from scalenet_jax import pipelines  # pylint: disable=g-import-not-at-top
  from scalenet_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top

  cfg = study.config(run)
  wd = os.path.join(workdir, run["name"])
  t0 = time.time()
  r = pipelines.run(cfg, wd)
  metric = study.plan["metric"]
  entry = dict(
      arm=run["arm"],
      seed=run["seed"],
      phase=run["phase"],
      arg=run["arg"],
      **counts,
      **{k: r[k] for k in (metric, *KEEP) if k in r},
      wall_sec=time.time() - t0,
      machine=jax_utils.machine(),
      code=git_commit(),
      date=datetime.date.today().isoformat(),
  )
  if "init_eval" in r:
    entry[f"{metric}_init"] = r["init_eval"][metric]
  entry.update(curve_of(wd, metric))
  if run.get("release"):
    release_run(study, run, wd)
    entry["release"] = run["release"]
  return entry


def curve_of(wd: str, metric: str) -> dict:
  """`{'curve': [[step, value], ...]}` of the evaluations a run logged during training ({} for one)."""
  from scalenet_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top

  evals = [[l["step"], l[metric]] for l in metrics_lib.read(wd) if metric in l]
  return {"curve": evals} if len(evals) > 1 else {}


def release_run(study: Study, run: dict, wd: str) -> None:
  """Releases the finished run in `wd` at `run['release']` (repository-relative): an image model as one
  `.safetensors` file (`release.write`), else its export directory as the trainer wrote it."""
  from scalenet_jax import release  # pylint: disable=g-import-not-at-top

  out = paths.REPO_ROOT / run["release"]
  command = f"python -m scalenet_jax.main --config {study.config_path}:{run['arg']} --workdir WORKDIR"
  if out.suffix == ".safetensors":  # an image model: one file with its provenance
    where = {"config": f"{study.config_path}:{run['arg']}", "record": study.plan["record"], "run": run["name"]}
    release.write(study.config(run), wd, out, command, where)
  else:  # a model directory (the LM's Hugging Face export and tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    for f in (paths.path(wd) / "export").iterdir():
      if f.is_file():
        (out / f.name).write_bytes(f.read_bytes())
    paths.write_json(out / "provenance.json", {"command": command, "run": run["name"], "record": study.plan["record"]})


def run_study(
    config_arg: str, workdir: str, max_minutes: float = 0, phase: str = "", ignore_gate: bool = False
) -> Study:
  """Trains the plan's missing runs in order (within `max_minutes` when > 0), recording each at once."""
  from scalenet_jax.train import workdir_lock  # pylint: disable=g-import-not-at-top

  study = Study(config_arg, workdir)
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)
  with (
      workdir_lock.WorkdirLock(workdir),  # one study process per workdir (each run also locks its own)
      jax_utils.shared_compiled_programs(os.path.join(workdir, "jax_cache")),
  ):
    _run_pending(study, workdir, max_minutes, phase, t_start, ignore_gate)
  study.save()
  return study


def gate_open(plan: dict, record: dict) -> tuple[bool, str]:
  """(whether the runs after the plan's `gate` phase may start, why): every claim of the gate's family must
  hold after correction (the headroom check: without it no growth method can show anything)."""
  gate = plan.get("gate")
  if not gate:
    return True, ""
  rows = [r for r in claim_rows(plan, record) if r["family"] == gate]
  verdicts = "; ".join(f"{r['text']}: {r['verdict']}" for r in rows)
  return all(r["verdict"] == "holds" for r in rows), verdicts


def _run_pending(
    study: Study, workdir: str, max_minutes: float, phase: str, t_start: float, ignore_gate: bool = False
) -> None:
  if phase and phase not in study.plan["phases"]:
    raise ConfigError(f"unknown phase {phase!r}; the plan has {study.plan['phases']}")
  print(
      f"{len(study.record['runs'])} runs recorded in {study.plan['record']}; {len(study.pending())} to go", flush=True
  )
  for run in study.runs():  # recorded runs whose workdir is here: what an older or stopped chunk left out
    wd, entry = os.path.join(workdir, run["name"]), study.done(run["name"])
    if entry is None or not os.path.isdir(os.path.join(wd, "export")):
      continue
    if run.get("release") and not (paths.REPO_ROOT / run["release"]).exists():
      release_run(study, run, wd)
      entry["release"] = run["release"]
    if "curve" not in entry:
      entry.update(curve_of(wd, study.plan["metric"]))
  seen, gated = set(), []
  while True:  # pending runs are re-read after each run: a finished verdict may add seeds
    todo = [r for r in study.pending() if r["name"] not in seen and (not phase or r["phase"] == phase)]
    if not todo:
      break
    run = todo[0]
    seen.add(run["name"])
    gate = study.plan.get("gate")
    if gate and run["phase"] != gate and not ignore_gate:
      is_open, why = gate_open(study.plan, study.record)
      if not is_open:
        gated.append(run["name"])
        continue
    if run.get("same_as") and study.take_same(run):
      print(f"- {run['name']}: the same run as {run['same_as']} (same config), taken from there", flush=True)
      study.save()
      continue
    need = run.get("needs")
    if need and not study.done(need):
      print(f"- {run['name']}: waits for {need}", flush=True)
      continue
    counts = counts_of(study.config(run))
    est = study.estimate_sec(run, counts)
    left = max_minutes * 60 - (time.time() - t_start)
    if max_minutes and est > left:
      print(f"- {run['name']}: ~{est / 60:.0f} min, {max(left, 0) / 60:.0f} min left: not started", flush=True)
      continue
    print(f"== {run['name']} ({run['arg']}): ~{est / 60:.0f} min; {len(todo) - 1} more to go", flush=True)
    study.record["runs"][run["name"]] = train_one(study, run, workdir, counts)
    study.save()
  if gated:
    print(
        f"- {len(gated)} runs ({gated[0]} ...) wait for the {gate} check ({why}); --ignore_gate runs them anyway",
        flush=True,
    )


# ------------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------------
def metric_of(plan: dict) -> tuple[str, float, int]:
  """(name in the report, scale of its values there, +1 when higher is better, else -1)."""
  if plan["metric"] == "top1":
    return "top-1 (%)", 100.0, 1
  return plan["metric"], 1.0, -1 if plan.get("lower_is_better") else 1


def _mean_ci(values, scale: float) -> str:
  if not values:
    return "pending"
  m, h = stats.t_interval([v * scale for v in values])
  return f"{m:.2f}" if h != h else f"{m:.2f} ± {h:.2f}"


def planned_runs(plan: dict, record: dict) -> list[dict]:
  """The plan's runs, plus seeds up to `plan['max_seeds']` for both arms of every claim whose finished
  interval misses 0 by less than its half-width (a verdict the next seeds could still overturn)."""
  extra = []
  for r in claim_rows(plan, record, plan["runs"]):
    if r["complete"] and r["half"] < abs(r["diff"]) < 2 * r["half"]:
      extra += [plan["make_run"](arm, s) for arm in (r["a"], r["b"]) for s in range(r["seeds"], plan["max_seeds"])]
  have = {r["name"] for r in plan["runs"]}
  return plan["runs"] + [r for r in {r["name"]: r for r in extra}.values() if r["name"] not in have]


def arm_runs(runs: list[dict], record: dict, arm: str) -> tuple[list[dict], int]:
  """(finished runs of `arm` in seed order, planned runs of `arm`)."""
  planned = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
  return [record["runs"][r["name"]] for r in planned if r["name"] in record["runs"]], len(planned)


def claim_rows(plan: dict, record: dict, runs: list[dict] | None = None) -> list[dict]:
  """Every claim with its paired difference (points), raw and Holm-adjusted p within its family, and
  verdict; claims whose arms share fewer than two finished seeds stay pending. `runs`: the planned runs
  (default: `planned_runs`, the plan with its added seeds)."""
  runs = planned_runs(plan, record) if runs is None else runs
  metric, (_, scale, sign) = plan["metric"], metric_of(plan)
  rows = []
  for c in plan["claims"]:
    (done_a, n_a), (done_b, n_b) = arm_runs(runs, record, c["a"]), arm_runs(runs, record, c["b"])
    a, b = {r["seed"]: r[metric] for r in done_a}, {r["seed"]: r[metric] for r in done_b}
    seeds = sorted(set(a) & set(b))
    complete = len(done_a) == n_a and len(done_b) == n_b
    d = h = p = float("nan")
    if len(seeds) >= 2:
      d, h, p = stats.paired_test([a[s] * scale for s in seeds], [b[s] * scale for s in seeds])
    rows.append(dict(c, seeds=len(seeds), diff=d, half=h, p=p, complete=complete))
  for family in {r["family"] for r in rows}:
    members = [r for r in rows if r["family"] == family]
    for r, adj in zip(members, stats.holm([r["p"] for r in members])):
      r["p_holm"] = adj
      r["family_complete"] = all(m["complete"] for m in members)
  for r in rows:
    if r["p"] != r["p"]:
      r["verdict"] = "pending"
    elif r["p_holm"] < ALPHA:
      r["verdict"] = "holds" if sign * r["diff"] > 0 else "reversed (b beats a)"
    else:
      r["verdict"] = "not shown"
    if r["verdict"] != "pending" and not r["family_complete"]:
      r["verdict"] += " (provisional: runs of its family pending)"
  return rows


def _p(p: float) -> str:
  return "" if p != p else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def plot_curves(plan: dict, record: dict, out_png) -> str:
  """The evaluations during training of every arm that has them (mean over its finished seeds) as a PNG;
  returns its file name ('' when no run recorded a curve)."""
  metric, (label, scale, _) = plan["metric"], metric_of(plan)
  curves = {}
  for arm in plan["arms"]:
    done = [r["curve"] for r in record["runs"].values() if r["arm"] == arm and r.get("curve")]
    if done:
      n = min(len(c) for c in done)
      curves[arm] = [(done[0][i][0], statistics.fmean(c[i][1] * scale for c in done), len(done)) for i in range(n)]
  if not curves:
    return ""
  plt = paths.pyplot()
  fig, ax = plt.subplots(figsize=(7, 3.6), dpi=80)
  for arm, points in curves.items():
    ax.plot(
        [p[0] for p in points],
        [p[1] for p in points],
        marker=".",
        lw=1,
        label=f"{plan['arms'][arm]} ({points[0][2]} seeds)",
    )
  ax.set(xlabel="training step", ylabel=f"{label} ({metric}, evaluation set)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  paths.save_figure(fig, out_png, dpi=80)
  plt.close(fig)
  return paths.path(out_png).name


def render(plan: dict, record: dict, curves_png: str = "") -> str:
  planned = planned_runs(plan, record)
  runs = record["runs"]
  metric, (label, scale, sign) = plan["metric"], metric_of(plan)
  out = [f"# {plan['title']}", ""]
  out.append(
      f"Generated by `python -m scalenet_jax.study` from `{plan['record']}` ({len(runs)} of {len(planned)} runs "
      f"finished). Values: {plan['metric_text']}, mean ± 95% t-interval over seeds; budgets in training "
      f"{plan.get('unit', 'images')} and as a fraction of the base's."
  )
  if plan.get("notes"):
    out += ["", *plan["notes"]]
  # the base's budget: its recorded run's, else the plan's (a plan that grows a released base)
  base_images = next((r["images"] for r in runs.values() if r["arm"] == "base"), plan.get("base_images"))
  for phase in plan["phases"]:
    out += ["", f"## {phase}", ""]
    out += [
        f"| arm | layers | params | unique | trainable | training {plan.get('unit', 'images')} | of the base's | "
        f"{label} at init | {label} | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in dict.fromkeys(r["arm"] for r in planned if r["phase"] == phase):
      done, n = arm_runs(planned, record, arm)
      if not done:
        out.append(f"| {plan['arms'][arm]} | | | | | | | | pending | 0/{n} |")
        continue
      r = done[0]
      frac = f"{r['images'] / base_images:.1%}" if base_images else ""
      init = [x[f"{metric}_init"] for x in done if f"{metric}_init" in x]
      out.append(
          f"| {plan['arms'][arm]} | {sum(r['depths'])} | {r['params']:,} | {r['unique_params']:,} | "
          f"{r['trainable_params']:,} | {r['images']:,} | {frac} | {_mean_ci(init, scale) if init else ''} | "
          f"{_mean_ci([x[metric] for x in done], scale)} | {len(done)}/{n} |"
      )
    if phase == plan.get("gate"):
      is_open, why = gate_open(plan, record)
      state = "open: the later phases run" if is_open else "closed: the later phases wait for it"
      out += ["", f"Go/no-go ({phase} check): {state} ({why})."]
  if curves_png:
    out += ["", f"Evaluations during training (mean over the finished seeds): ![curves]({curves_png})"]
  if plan["claims"]:  # a one-seed plan (the demo's) tests none
    out += _claims_section(plan, record, planned)
  machines = sorted({f"{r['machine']['cpu']} ({r['machine']['cores']} cores)" for r in runs.values()})
  if machines:
    out += ["", f"Machines of the runs: {'; '.join(machines)}. No time column: the runs were not one quiet run."]
  return "\n".join(out) + "\n"


def _claims_section(plan: dict, record: dict, planned: list[dict]) -> list[str]:
  label, _, sign = metric_of(plan)
  out = [
      "",
      "## Claims",
      "",
      f"Paired (same-seed) differences of {label}, a minus b ({'higher' if sign > 0 else 'lower'} is better). A "
      f"claim holds when its Holm-Bonferroni adjusted p (over the claims of its family) is below {ALPHA}; the raw "
      "95% interval and p are shown beside it.",
      "",
      "| family | claim | seeds | a minus b | p | p (Holm) | verdict |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in claim_rows(plan, record, planned):
    diff = "" if r["diff"] != r["diff"] else f"{r['diff']:+.2f} ± {r['half']:.2f}"
    out.append(
        f"| {r['family']} | {r['text']} | {r['seeds']} | {diff} | {_p(r['p'])} | {_p(r.get('p_holm', math.nan))} | "
        f"{r['verdict']} |"
    )
  return out


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    if FLAGS.render_only:
      study = Study(FLAGS.config, FLAGS.workdir)
      study.save()
    else:
      study = run_study(FLAGS.config, FLAGS.workdir, FLAGS.max_minutes, FLAGS.phase, FLAGS.ignore_gate)
  except UserError as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)
  left = len(study.pending())
  print(
      f"record {study.plan['record']}: {len(study.record['runs'])} runs, {left} pending; report {study.plan['report']}"
  )


def define_flags():
  flags.DEFINE_string("config", "configs/grow_study.py:vit2_p7_crops", "Study config file and its argument (path:arg).")
  flags.DEFINE_string("workdir", "study_workdir", "Where the runs' checkpoints go (the record is in the repository).")
  flags.DEFINE_float("max_minutes", 0, "Start no run that would not finish within this many minutes (0: no limit).")
  flags.DEFINE_string("phase", "", "Only the runs of this phase of the plan.")
  flags.DEFINE_bool("render_only", False, "Render the report from the record; train nothing.")
  flags.DEFINE_bool("ignore_gate", False, "Also start runs that wait for the plan's gate (the headroom check).")


if __name__ == "__main__":
  jax_utils.configure_cpu()
  define_flags()
  app.run(main)
