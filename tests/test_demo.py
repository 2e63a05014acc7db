"""The README's demo in --quick form (real Fashion-MNIST, the released base), its errors, its --pretrain
path, and the reproduction report's logic."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
from scalenet_jax import demo, release, reproduce, trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fashion_mnist():
  return helpers.fashion_mnist_dir()


@pytest.mark.usefixtures("fashion_mnist")
def test_quick_demo_writes_table_i_report(tmp_path):
  out = _demo("--quick", "--workdir", str(tmp_path), timeout=1200)
  assert out.returncode == 0, out.stderr[-3000:]
  report = (tmp_path / "report.md").read_text()
  assert report in out.stdout  # also printed
  rows = [l for l in report.splitlines() if l.startswith("| ") and not l.startswith("| method")]
  assert [r.split(" | ")[0][2:] for r in rows] == [label for label, _ in demo.VARIANTS]
  for r in rows:
    cells = [c.strip() for c in r.strip("|").split("|")]
    top1_init, top1, top5 = (float(c.rstrip("%")) for c in cells[6:9])
    assert 0 <= top1_init <= 100 and 0 <= top1 <= top5 <= 100
  by_label = {r.split(" | ")[0][2:]: r for r in rows}
  # ScaleNet doubles the depth of the 6-layer model and stores each shared tensor once.
  assert "| 12 | 727,818 | 429,450 |" in by_label["ScaleNet (shared + adapters)"]
  # It grew the released base, whose provenance the report states; that base, loaded from its release
  # file, scores on the held-out minival what a converged base scores (>= 85 %) before any fine-tuning.
  _, meta = release.read(demo.RELEASED)
  assert f"released, `{demo.RELEASED.name}`): top-1 {meta['top1'] * 100:.2f}% on test" in report
  control = [c.strip() for c in by_label["Pretrained, trained further"].strip("|").split("|")]
  assert float(control[6].rstrip("%")) >= 85


def _demo(*args, timeout=600):
  return subprocess.run(
      [sys.executable, "-m", "scalenet_jax.demo", *args], capture_output=True, text=True, timeout=timeout
  )


def test_demo_user_errors_are_one_line(tmp_path):
  missing = _demo("--base", str(tmp_path / "nope.safetensors"), "--workdir", str(tmp_path / "w"))
  assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
  assert "released base not found" in missing.stderr and "--pretrain" in missing.stderr


@pytest.mark.usefixtures("fashion_mnist")
def test_pretrain_here_describes_its_base_like_a_release(tmp_path):
  base = demo.pretrained_here(str(tmp_path), steps=3, eval_split="minival", seed=0)
  assert base["path"] == str(tmp_path / "pretrain" / "export" / "params") and base["steps"] == 3
  assert base["norm"] == demo.NORMALISATION and 0 <= base["top1"] <= 1
  text = demo.render([dict(label="x", kind="scalenet", **_row(0.5))], base, 2, "minival", 1.0, True)
  assert "(trained by this run): top-1" in text


BASE = dict(path="pretrained/x.safetensors", model=demo.MODEL, norm=demo.NORMALISATION)


@pytest.mark.usefixtures("fashion_mnist")
def test_a_swin_base_grows_by_its_recipe(tmp_path):
  """A Swin release (configs/pretrain_fmnist.py:swin, 2 steps here) grows as the paper's Swin recipe says:
  its last stage doubled with stack mapping, adapters + norms + head trainable; scratch trains it all."""
  config = helpers.config_file("pretrain_fmnist.py", "swin")
  config.update(steps=2, log_every=1, eval_every=0, ckpt_every=0)
  config.data.eval_split = "minival"
  trainer.run(config, str(tmp_path / "pre"))
  base = demo.released_base(_release(config, tmp_path))
  assert base["norm"]["pad"] == 2
  grown = demo.finetune(str(tmp_path / "ft"), "scalenet", "scalenet", base, 2, "minival", 0)
  scratch = demo._stats(demo.variant_config("scratch", base, 2, "minival", 0))  # its counts need no run
  assert grown["depths"] == scratch["depths"] == [2, 2, 4]
  assert grown["trainable_params"] < grown["unique_params"] < scratch["unique_params"]
  assert scratch["trainable_params"] == scratch["unique_params"]


def _release(config, tmp_path):
  out = tmp_path / "swin.safetensors"
  release.write(config, tmp_path / "pre", out, "python -m scalenet_jax.main --config configs/pretrain_fmnist.py:swin")
  return out


def _row(top1, depths=(12,)):
  return dict(
      top1=top1,
      top1_init=0.1,
      top5=0.9,
      depths=list(depths),
      params=1,
      unique_params=1,
      trainable_params=1,
      gflops=0.01,
      sec_per_step=0.1,
  )


def _seeds(*top1):
  return [_row(t) for t in top1]


def _study(scalenet):
  """Table I, ablations and efficiency rows over 3 seeds: ScaleNet at `scalenet`, every other row at
  0.50 / 0.51 / 0.52 (ScaleNet's defaults reuse its Table I rows, as reproduce does)."""
  others = (0.50, 0.51, 0.52)
  runs = {l: _seeds(*(scalenet if i == 0 else others)) for i, (l, _) in enumerate(demo.VARIANTS)}
  abl = [
      dict(family=f, label=l, default=not o, rows=runs[reproduce.SCALENET] if not o else _seeds(*others))
      for f, l, o in reproduce.ablation_plan(BASE, 10, "minival")
  ]
  eff = [
      dict(label=reproduce.SCALENET, steps=10, rows=runs[reproduce.SCALENET]),
      dict(label=reproduce.SCRATCH, steps=10, rows=runs[reproduce.SCRATCH]),
      dict(label=reproduce.LONGER_SCRATCH, steps=10 * reproduce.LONGER, rows=_seeds(*others)),
  ]
  return runs, abl, eff


def test_verdicts_follow_the_paired_intervals():
  win = reproduce.verdicts(*_study((0.60, 0.61, 0.62)))  # +10 points on every seed: intervals exclude 0
  assert all("**holds**" in v for v in win), win
  lose = reproduce.verdicts(*_study((0.40, 0.42, 0.41)))
  assert all("**does not hold (the reverse holds)**" in v for v in lose), lose
  noise = reproduce.verdicts(*_study((0.60, 0.40, 0.53)))  # mean above, interval covers 0
  assert all("**not shown**" in v for v in noise), noise
  base = dict(path="pretrained/x.safetensors", top1=0.9, steps=100, eval_split="test")
  text = reproduce.render("tiny", 3, base, *_study((0.60, 0.61, 0.62)), ["nas"], ["| x |"])
  assert "## 4. Which paper claims hold" in text and "61.00 ± 2.48" in text  # t(0.975, 2) * 0.01 / sqrt(3)
  assert "| +10.00 ± 0.00 |" in text and "(default)" in text
  assert f"| {reproduce.LONGER_SCRATCH} | 30 | 51.00 ± 2.48 | 3.00 ± 0.00 |" in text  # 30 steps x 0.1 s


def test_ablation_plans_follow_each_family_recipe():
  """The default row of each family is the recipe itself (the Table I run, no overrides), and the ViT
  rows keep the run directories of earlier reports (reproduce resumes from them)."""
  vit = reproduce.ablation_plan(BASE, 10, "minival")
  assert [l for _, l, o in vit if not o] == ["adapter (r=16)", "interpolate", "R=2", "r=16", "0.0", "all layers"]
  slugs = {reproduce._slug(o) for _, _, o in vit}
  assert {"scalenet", "scalenet_adjustlora", "scalenet_mappingstack", "scalenet_drop_path_rate0.1"} <= slugs
  assert "scalenet_subset0-1" in slugs and len(slugs) == len(vit) - 5
  swin = reproduce.ablation_plan(dict(BASE, model="swin_micro_patch2_window4_32"), 10, "minival")
  assert [l for _, l, o in swin if not o] == ["adapter (r=16)", "stack", "R=2", "r=16", "0.0", "last stage"]
  assert ("mapping", "interpolate", {"mapping": "interpolate"}) in swin
  cfg = demo.variant_config("stack", dict(BASE, model="swin_micro_patch2_window4_32"), 10, "minival", 0)
  assert (cfg.expansion.mapping, cfg.expansion.trainable, cfg.data.pad) == ("stack", "adjust_ln_head", 0)


def test_unfinished_runs_render_as_pending():
  runs, abl, eff = _study((0.60, 0.61, 0.62))
  runs[reproduce.SCRATCH][2] = None  # --finished_only: seed 2 of scratch has not finished
  abl[-1]["rows"] = [None] * 3
  base = dict(path="pretrained/x.safetensors", top1=0.9, steps=100, eval_split="test")
  text = reproduce.render("tiny", 3, base, runs, abl, eff, ["nas"], ["| x |"])
  assert f"| {reproduce.SCRATCH} | pending (2/3 runs finished) |" in text
  assert "| subset | layers 4,5 | pending (0/3 runs finished) |" in text
  claims = reproduce.verdicts(runs, abl, eff)
  assert any("same-depth model trained from scratch: **pending (5/6 runs finished)**" in v for v in claims)
  assert sum("**holds**" in v for v in claims) == len(claims) - 1


def _finished_run(wd, steps):
  """The files a run finished at `steps` leaves in its workdir (as far as a report reads them)."""
  wd.mkdir(parents=True)
  lines = [
      {"step": steps // 2, "loss": 1.0, "steps_per_sec": 3.0},
      {"step": steps, "loss": 0.5, "steps_per_sec": 4.0},
      {"step": steps, "top1": 0.75, "top5": 0.95, "eval_examples": 1000},
  ]
  (wd / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
  (wd / "init_eval.json").write_text(json.dumps({"top1": 0.25}))


def _record(budget, **rows):
  """An earlier report's JSON with the given Table I rows (label -> per-seed rows) and nothing else run."""
  table1 = {l: rows.get(l, [None]) for l, _ in demo.VARIANTS}
  base = dict(path=os.path.join("pretrained", demo.RELEASED.name), top1=release.read(demo.RELEASED)[1]["top1"])
  return dict(base=base, budget=budget, table1=table1, ablations=[], efficiency=[], seeds=1)


def test_recorded_runs_are_keyed_like_the_workdirs_and_need_the_same_base_and_budget(tmp_path):
  base = demo.released_base(demo.RELEASED)
  rec = _record("tiny", **{reproduce.SCRATCH: [None, _row(0.3)]})
  rec["ablations"] = [dict(family="rank", label="r=4", default=False, rows=[_row(0.4)])]
  rec["efficiency"] = [dict(label=reproduce.LONGER_SCRATCH, steps=60, rows=[_row(0.5)])]
  (tmp_path / "r.json").write_text(json.dumps(rec))
  got = reproduce.recorded_runs(tmp_path / "r.json", base, "tiny")
  assert {k: v["top1"] for k, v in got.items()} == {
      (1, "scratch"): 0.3,
      (0, "scalenet_rank4"): 0.4,
      (0, "scratch_x3"): 0.5,
  }
  with pytest.raises(reproduce.ConfigError, match="records budget 'tiny'"):
    reproduce.recorded_runs(tmp_path / "r.json", base, "demo")


def test_reproduce_finished_only_reports_without_training(tmp_path):
  """--finished_only reports the finished workdirs and the runs --reuse takes from an earlier record."""
  steps = reproduce.BUDGETS["tiny"][0]
  _finished_run(tmp_path / "w" / "seed0" / "scalenet", steps)
  (tmp_path / "old.json").write_text(json.dumps(_record("tiny", **{reproduce.SCRATCH: [_row(0.6)]})))
  args = ["--finished_only", "--budget", "tiny", "--seeds", "1", "--workdir", str(tmp_path / "w")]
  args += ["--reuse", str(tmp_path / "old.json")]
  out = subprocess.run(
      [sys.executable, "-m", "scalenet_jax.reproduce", *args, "--out", str(tmp_path / "r.md")],
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  text = (tmp_path / "r.md").read_text()
  assert f"| {reproduce.SCALENET} | 12 |" in text and "| 25.00 | 75.00 |  | 250 |" in text
  assert f"| {reproduce.SCRATCH} | 12 | 1 | 1 | 10.00 | 60.00 | +15.00 |" in text  # from the record
  assert "1 of the runs were trained by an earlier run of this command" in text and "`--reuse old.json`" in text
  assert f"| {reproduce.LONGER_SCRATCH} | {3 * steps} | pending (0/1 runs finished) |" in text
  assert sorted(p.name for p in (tmp_path / "w" / "seed0").iterdir()) == ["scalenet"]  # nothing trained
  record = json.loads((tmp_path / "r.json").read_text())
  assert record["table1"][reproduce.SCALENET][0]["top1"] == 0.75
  assert record["base"]["path"] == os.path.join("pretrained", demo.RELEASED.name)  # not the checkout's absolute path
  assert list(record) == sorted(record)  # sorted keys: a re-run diffs only where numbers changed
  assert "![training curves](r_curves.png)" in text and (tmp_path / "r_curves.png").stat().st_size > 1000
  # The NAS histograms are an image next to the report, not a path into the workdir.
  assert "![HSS vs uniform MACs histograms](r_flops_hist.png)" in text and str(tmp_path / "w") not in text
  assert (tmp_path / "r_flops_hist.png").stat().st_size > 1000


def test_a_finished_run_is_reported_from_its_workdir(tmp_path, monkeypatch):
  """demo.finetune reads a finished run's row from metrics.jsonl + init_eval.json: nothing retrains (so a
  restarted reproduce costs nothing for it) and the step time measured when it ran is kept."""
  wd = tmp_path / "seed0" / "scalenet"
  _finished_run(wd, 10)

  def train(*_):
    raise RuntimeError("trained again")

  monkeypatch.setattr(demo.trainer, "run", train)
  row = demo.finetune(str(tmp_path / "seed0"), "scalenet", "scalenet", BASE, 10, "minival", 0)
  assert (row["top1"], row["top5"], row["top1_init"], row["sec_per_step"]) == (0.75, 0.95, 0.25, 0.25)
  assert sum(row["depths"]) == 12
  with pytest.raises(RuntimeError, match="trained again"):  # unfinished at 20 steps: it trains
    demo.finetune(str(tmp_path / "seed0"), "scalenet", "scalenet", BASE, 20, "minival", 0)
