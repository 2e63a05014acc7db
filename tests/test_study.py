"""The resumable study runner (scalenet_jax.study) on a toy plan, and the fair study's recipe
(configs/grow_study.py) against hand counts and the paper's ratios."""

import json
import math
import textwrap

import numpy as np
import pytest
from flax import traverse_util

from scalenet_jax import config_lib, paths, study

TOY = """
from scalenet_jax import config_lib

def get_config(arg):
  a = config_lib.parse_arg(arg, run="base", seed=0)
  c = config_lib.train_config("vit_micro_patch4_28")
  c.data.name, c.data.synthetic_examples, c.data.eval_split = "synthetic", 32, "test"
  c.steps, c.batch_size, c.eval_batch_size, c.seed = 2, 8, 16, a["seed"]
  c.log_every, c.ckpt_every, c.xla_opt_level = 1, 0, 1
  c.eval_every = 1 if a["run"] == "base" else 0  # the base records a curve
  if a["run"] == "grown":
    c.expansion.kind, c.init_from, c.eval_at_init = "scalenet", "{release}", True
  return c

def make_run(arm, s):
  run = dict(name=f"{{arm}}_s{{s}}", arg=f"run={{arm}},seed={{s}}", arm=arm, seed=s, phase="p")
  if arm == "grown":
    run["needs"] = "base_s0"
  return run

def study(arg=""):
  runs = [dict(make_run("base", 0), release="{release}"), dict(make_run("grown", 0), release="{tmp}/grown.safetensors")]
  runs += [make_run("grown", 1)]
  runs += [make_run("base", 1)]
  return dict(title="toy", record="{tmp}/rec.json", report="{tmp}/rep.md", metric="top1", metric_text="top-1",
              arms=dict(base="the base", grown="grown 2x"), phases=["p"], runs=runs, make_run=make_run,
              max_seeds=5, claims=[dict(a="grown", b="base", family="f", text="grown beats base")],
              sec_per_image_gflop=1e-3)
"""


def c_arg(name: str) -> str:
  arm, _, seed = name.rpartition("_s")
  return f"run={arm},seed={seed}"


@pytest.fixture
def toy(tmp_path):
  cfg = tmp_path / "toy_study.py"
  cfg.write_text(textwrap.dedent(TOY).format(release=tmp_path / "base.safetensors", tmp=tmp_path))
  return str(cfg), tmp_path


@pytest.mark.e2e
def test_runner_records_each_run_resumes_and_keeps_to_the_time_limit(toy, monkeypatch):
  cfg, tmp = toy
  # A limit no run fits in: nothing starts, the record is consistent and the report marks all pending.
  s = study.run_study(cfg, str(tmp / "wd"), max_minutes=0.01)
  assert s.record["runs"] == {} and len(s.pending()) == 4
  assert "0 of 4 runs finished" in (tmp / "rep.md").read_text() and "pending" in (tmp / "rep.md").read_text()

  s = study.run_study(cfg, str(tmp / "wd"))
  rec = json.loads((tmp / "rec.json").read_text())
  assert list(rec["runs"]) == ["base_s0", "grown_s0", "grown_s1", "base_s1"]  # grown waited for base_s0
  base = rec["runs"]["base_s0"]
  assert (base["steps"], base["images"], base["depths"]) == (2, 16, [6])
  assert rec["runs"]["grown_s0"]["depths"] == [12] and "top1_init" in rec["runs"]["grown_s0"]
  # The released weights are the run's exported params, with what the record says they scored.
  from scalenet_jax import builder, convert, release
  from scalenet_jax.train import checkpoint as ckpt_lib

  toy_module = config_lib.load_config_module(cfg)
  for name, file in (("base_s0", "base.safetensors"), ("grown_s0", "grown.safetensors")):
    c = toy_module.get_config(s.plan["runs"][[r["name"] for r in s.plan["runs"]].index(name)]["arg"])
    model = builder.build_model(c)
    exported = ckpt_lib.load_params(tmp / "wd" / name / "export" / "params", model.abstract_params())
    tensors, meta = release.read(tmp / file)
    assert meta["top1"] == rec["runs"][name]["top1"] and meta["run"] == name and meta["config"].endswith(c_arg(name))
    got = convert.timm_to_flax(tensors, model) if name == "base_s0" else release.params_of(tmp / file)
    assert meta.get("format", "timm") == ("timm" if name == "base_s0" else "flax")
    flat = lambda tree: traverse_util.flatten_dict(tree, sep="/")
    assert flat(got).keys() == flat(exported).keys()
    assert all(np.array_equal(flat(got)[k], flat(exported)[k]) for k in flat(got))
  # A release lost after its run was recorded, or a curve an older runner did not record, is taken from
  # the workdir by the next chunk.
  (tmp / "base.safetensors").unlink()
  older = json.loads((tmp / "rec.json").read_text())
  del older["runs"]["base_s0"]["curve"]
  (tmp / "rec.json").write_text(json.dumps(older))
  study.run_study(cfg, str(tmp / "wd"))
  assert release.metadata_of(tmp / "base.safetensors")["top1"] == base["top1"]
  assert json.loads((tmp / "rec.json").read_text())["runs"]["base_s0"]["curve"] == base["curve"]
  # What the trainer logged is what the record holds.
  final = [json.loads(l) for l in (tmp / "wd" / "grown_s1" / "metrics.jsonl").read_text().splitlines()][-1]
  assert final["top1"] == rec["runs"]["grown_s1"]["top1"]

  # A rerun trains nothing: the record is the state (a fresh clone with no workdir continues from it).
  monkeypatch.setattr(study, "train_one", lambda *a: pytest.fail("a recorded run was trained again"))
  s = study.run_study(cfg, str(tmp / "elsewhere"))
  assert s.pending() == []
  report = (tmp / "rep.md").read_text()
  assert "4 of 4 runs finished" in report and "grown beats base" in report
  assert base["curve"] == [[1, base["curve"][0][1]], [2, base["top1"]]] and "![curves](rep_curves.png)" in report
  assert (tmp / "rep_curves.png").stat().st_size > 1000


def test_claims_holm_and_pending(toy):
  cfg, _ = toy
  plan = study.Study(cfg).plan
  plan["claims"].append(dict(a="base", b="grown", family="f", text="base beats grown"))
  run = lambda arm, seed, top1: dict(arm=arm, seed=seed, top1=top1)
  record = {"runs": {"grown_s0": run("grown", 0, 0.90), "base_s0": run("base", 0, 0.80)}}
  rows = study.claim_rows(plan, record)
  assert [r["verdict"] for r in rows] == ["pending", "pending"]  # one shared seed: no test
  record["runs"].update(grown_s1=run("grown", 1, 0.92), base_s1=run("base", 1, 0.81))
  rows = study.claim_rows(plan, record)
  # Differences 10 and 11 points: the paired t-test by hand, t = 10.5 / (0.7071 / sqrt 2) = 21, 1 dof.
  p = 2 * (0.5 - math.atan(21.0) / math.pi)  # the t(1) distribution is Cauchy
  assert rows[0]["p"] == pytest.approx(p) and rows[0]["p_holm"] == pytest.approx(min(1, 2 * p))
  assert rows[0]["diff"] == pytest.approx(10.5)
  # 2p = 0.06 after Holm over the family of two claims; and the interval (half-width 12.7 * 0.5 = 6.35)
  # misses 0 by less than its half-width, so seeds 2-4 joined the plan: the verdict waits for them.
  assert rows[0]["verdict"] == "not shown (provisional: runs of its family pending)"
  assert rows[1]["diff"] == pytest.approx(-10.5)


def test_lower_is_better_metric(toy):
  cfg, _ = toy
  plan = dict(study.Study(cfg).plan, metric="perplexity", lower_is_better=True, max_seeds=2)
  ppl = {"grown": [10.0, 10.2], "base": [12.0, 12.1]}
  record = {"runs": {f"{a}_s{s}": dict(arm=a, seed=s, perplexity=v[s]) for a, v in ppl.items() for s in range(2)}}
  (row,) = study.claim_rows(plan, record)
  assert row["diff"] == pytest.approx(-1.95)  # a minus b, unscaled; lower is better, so "grown beats base"
  assert row["p"] < 0.05 and row["verdict"] == "holds"  # one claim: Holm changes nothing


def test_a_verdict_near_its_interval_edge_adds_seeds(toy):
  cfg, _ = toy
  plan = study.Study(cfg).plan
  plan["runs"] = [plan["make_run"](arm, s) for s in range(3) for arm in ("base", "grown")]
  runs = lambda diffs: {
      f"{arm}_s{s}": dict(arm=arm, seed=s, top1=0.5 + (d / 100 if arm == "grown" else 0))
      for s, d in enumerate(diffs)
      for arm in ("base", "grown")
  }
  # Differences 1.0, 1.05, 0.95 points: half-width 4.303 * 0.05 / sqrt 3 = 0.12, far from 0: no more seeds.
  assert study.planned_runs(plan, {"runs": runs([1.0, 1.05, 0.95])}) == plan["runs"]
  # 1.0, 1.3, 0.7: half-width 0.75 < 1.0 < 1.5: seeds 3 and 4 of both arms join the plan.
  added = study.planned_runs(plan, {"runs": runs([1.0, 1.3, 0.7])})[len(plan["runs"]) :]
  assert sorted(r["name"] for r in added) == ["base_s3", "base_s4", "grown_s3", "grown_s4"]


GROW = paths.REPO_ROOT / "configs" / "grow_study.py"


def test_grow_study_recipe_keeps_the_papers_ratios():
  from scalenet_jax import summary

  m = config_lib.load_config_module(GROW)
  counts = lambda run: summary.summarize(m.get_config(f"vit,run={run},seed=1"), xla_check=False)
  base = counts("base")["unique_params"]
  block = (
      2 * 2 * 64 + (64 * 192 + 192) + (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64)
  )  # LNs, qkv, proj, fc1, fc2
  # ScaleNet: an adapter pair of 10 r d on each of the 12 block instances, two LNs of each new layer.
  assert counts("scalenet")["unique_params"] == base + 12 * 10 * 5 * 64 + 6 * 2 * 2 * 64
  # DeiT-T 2x by the same rule (5,717,416 params, d 192, r 16, 24 instances, 12 new): the same proportion.
  deit = (12 * 10 * 16 * 192 * 2 + 12 * 2 * 2 * 192) / 5_717_416
  assert (counts("scalenet")["unique_params"] - base) / base == pytest.approx(deit, abs=0.002)
  assert counts("stack")["unique_params"] == base + block  # one new layer: +16 %, the paper's baselines
  b, ft, deep = (m.get_config(f"vit,run={r},seed=0") for r in ("base", "scalenet", "deep"))
  assert ft.steps * ft.batch_size * 3 == pytest.approx(b.steps * b.batch_size, rel=0.01)  # one third
  assert deep.steps == b.steps and ft.optim.lr == pytest.approx(0.4 * b.optim.lr)
  assert ft.init_from.endswith("vit_base_s0.safetensors") and not deep.init_from
  # Swin: adapters (10 r C, r = 3) on the 2+2+4 blocks of widths 32/64/128, norms of the 2 new blocks;
  # the baselines' one block in stage 1 (C 64, 4 heads, window 4: norms, qkv, proj, fc1, fc2, bias table).
  swin = lambda run: summary.summarize(m.get_config(f"swin,run={run},seed=0"), xla_check=False)["unique_params"]
  swin_base = swin("base")
  assert swin("scalenet") == swin_base + 10 * 3 * (2 * 32 + 2 * 64 + 4 * 128) + 2 * 2 * 2 * 128
  block64 = 2 * 2 * 64 + (64 * 192 + 192) + (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64) + 7 * 7 * 4
  assert swin("stack") == swin_base + block64
  # swin1: 2+2+1 blocks, grown to 2+2+2 (adapters on 6 blocks, the norms of 1 new block); its 2x-deep model
  # is the swin family's base, recorded there
  swin1 = lambda run: summary.summarize(m.get_config(f"swin1,run={run},seed=0"), xla_check=False)["unique_params"]
  swin1_base = swin1("base")
  block128 = 2 * 2 * 128 + (128 * 384 + 384) + (128 * 128 + 128) + (128 * 512 + 512) + (512 * 128 + 128) + 7 * 7 * 8
  assert swin1_base == swin_base - block128
  assert swin1("scalenet") == swin1_base + 10 * 3 * (2 * 32 + 2 * 64 + 2 * 128) + 1 * 2 * 2 * 128
  assert swin1("stack") == swin1_base + block64 and swin1("deep") == swin_base
  deep_s1 = next(r for r in m.study("swin1")["runs"] if r["name"] == "deep_s1")
  assert deep_s1["same_as"] == "docs/grow_study_swin.json:base_s1" and "release" not in deep_s1
  assert "further_matched" in m.study("swin")["arms"] and "further_matched" not in m.study("vit")["arms"]
  released = lambda family: {r["name"] for r in m.study(family)["runs"] if r.get("release")}
  assert released("vit") == {f"{a}_s0" for a in m.phases_of("vit")["headroom"] + m.phases_of("vit")["grow"]}
  assert released("swin") == {"base_s0"}  # the file every grown arm starts from, 2.3 MB; the others not
  for family in m.FAMILIES:  # the reports' note: the baselines get more added parameters than ScaleNet
    unique = lambda run: summary.summarize(m.get_config(f"{family},run={run}"), xla_check=False)["unique_params"]
    assert unique("stack") > unique("scalenet") > unique("base"), family
  assert "more parameters than ScaleNet's adapters" in m.study("swin")["notes"][0]
  plan = m.study("vit")
  names = [r["name"] for r in plan["runs"]]
  assert names[:6] == ["base_s0", "deep_s0", "base_s1", "deep_s1", "base_s2", "deep_s2"]  # headroom first
  assert {c["a"] for c in plan["claims"]} | {c["b"] for c in plan["claims"]} <= set(plan["arms"])


def test_grow_study_ablations_change_one_setting_each():
  """Every ablation arm's run is ScaleNet 2x's run of the same seed with exactly the one setting it names
  changed (doc §5), at the same budget; its claims form their own Holm family; no weights are released."""
  m = config_lib.load_config_module(GROW)
  for family, want in (
      (
          "vit",
          {
              "lora",
              "mapping_stack",
              "reuse3",
              "rank2",
              "rank15",
              "drop_path0.1",
              "drop_path0.2",
              "subset01",
              "subset23",
              "subset45",
          },
      ),
      (  # a 2-block base: each block alone
          "vit2_p7_crops",
          {"lora", "mapping_stack", "reuse3", "rank2", "rank15", "drop_path0.1", "drop_path0.2", "subset0", "subset1"},
      ),
      (
          "swin",
          {
              "lora",
              "mapping_interpolate",
              "reuse3",
              "rank1",
              "rank9",
              "drop_path0.1",
              "drop_path0.2",
              "subset0",
              "subset1",
          },
      ),
  ):
    plan = m.study(family)
    assert set(m.ablations_of(family)) == want and plan["phases"] == ["headroom", "grow", "ablations"]
    flat = lambda arm: traverse_util.flatten_dict(m.get_config(f"{family},run={arm},seed=1").to_dict(), sep=".")
    ref = flat("scalenet")
    for arm in want:
      got = flat(arm)
      changed = {k: got[k] for k in ref if got[k] != ref[k]}
      ((key, value),) = m.ablations_of(family)[arm][1].items()
      assert changed == {("model." if key == "drop_path_rate" else "expansion.") + key: value}, arm
    runs = [r for r in plan["runs"] if r["phase"] == "ablations"]
    assert len(runs) == 3 * len(want) and not any("release" in r for r in runs)
    assert {c["b"] for c in plan["claims"] if c["family"] == "ablations"} == want


def test_lm_study_plan_keeps_the_ratios_and_matched_arms():
  from scalenet_jax import summary

  m = config_lib.load_config_module(paths.REPO_ROOT / "configs" / "llama_fortunes_2x.py")
  plan = m.study()
  runs = {r["name"]: r for r in plan["runs"]}
  cfg = {name: m.get_config(r["arg"]) for name, r in runs.items() if name.endswith("_s0")}
  base = cfg["base_s0"]
  assert base.eval_every and base.steps % base.eval_every == 0  # the base's held-out curve is recorded
  for name, c in cfg.items():
    if name != "base_s0":
      assert c.steps * 3 == base.steps and c.batch_size == base.batch_size  # one third of its sequences
      assert c.init_from.endswith(runs["base_s0"]["release"]) and runs[name]["needs"] == "base_s0"
  count = lambda name: summary.summarize(cfg[name], xla_check=False)
  # The adapters-only control trains the kind of parameters ScaleNet trains (adapters + norms) on the
  # base's 4 layers, as many as ScaleNet trains. Hand count, width d = 128, MLP width 3d: per block an
  # adapter beside each of the 3 MLP linears (in x r down, r x out up: r (d + 3d) each) and 2 norms of d;
  # plus the final norm. ScaleNet: 8 instances at r = 16; the control: 4 layers at r = 32. The
  # every-parameter control is labelled as such.
  sn, ad, full = count("scalenet_s0"), count("further_adapters_s0"), count("further_all_s0")
  assert sum(ad["depths"]) == 4 and sum(sn["depths"]) == 8
  d, blocks = 128, lambda n, r: n * (3 * r * (d + 3 * d) + 2 * d) + d
  assert sn["trainable_params"] == blocks(8, 16) == 198_784
  assert ad["trainable_params"] == blocks(4, 32) == 197_760
  assert full["trainable_params"] == full["unique_params"] and "not trainable-matched" in plan["arms"]["further_all"]
  assert plan["lower_is_better"] and plan["metric"] == "perplexity"


def test_save_keeps_runs_another_chunk_recorded(toy):
  cfg, tmp = toy
  a, b = study.Study(cfg), study.Study(cfg)  # two chunks (other workdirs) started from the same record
  entry = dict(arm="base", depths=[6], params=1, unique_params=1, trainable_params=1, images=16, gflops=1.0)
  a.record["runs"]["base_s0"] = dict(entry, seed=0, top1=0.5, machine=dict(cpu="x", cores=2))
  a.save()
  b.record["runs"]["base_s1"] = dict(entry, seed=1, top1=0.6, machine=dict(cpu="x", cores=2))
  b.save()
  assert set(json.loads((tmp / "rec.json").read_text())["runs"]) == {"base_s0", "base_s1"}


def test_estimates_come_from_the_arms_measured_times(toy, monkeypatch):
  """A run's estimate: its arm's time on this CPU; else its arm's time elsewhere x how much slower this CPU
  trained the arms both ran; else images x GFLOPs x this CPU's rate; else the plan's guess (1e-3 s)."""
  cfg, _ = toy
  s = study.Study(cfg)
  monkeypatch.setattr(study.jax_utils, "cpu_model", lambda: "new")
  counts = dict(images=10, gflops=2.0)
  est = lambda name: s.estimate_sec(dict(s.plan["make_run"](*name.split("_s"))), counts) - study.COMPILE_AND_EVAL_SEC
  assert est("grown_s1") == pytest.approx(1e-3 * 2.0 * 10)  # nothing measured yet
  run = lambda arm, cpu, sec, gflops: dict(arm=arm, train_sec=sec, images=100, gflops=gflops, machine=dict(cpu=cpu))
  s.record["runs"] = dict(base_s0=run("base", "old", 100, 1.0), grown_s0=run("grown", "old", 120, 4.0))
  s.record["runs"]["base_s1"] = run("base", "new", 170, 1.0)  # this CPU is 1.7x slower
  assert est("base_s2") == pytest.approx(1.7 * 10)
  assert est("grown_s1") == pytest.approx(1.7 * 1.2 * 10)  # not 1.7 x 4 GFLOPs / 1 GFLOP x 10
  del s.record["runs"]["grown_s0"]  # no grown run anywhere: this CPU's rate per image-GFLOP
  assert est("grown_s1") == pytest.approx(1.7 / 1.0 * 2.0 * 10)


def test_gate_holds_later_phases_until_its_claims_hold(toy):
  cfg, _ = toy
  plan = dict(study.Study(cfg).plan, gate="f", max_seeds=2)
  run = lambda arm, seed, top1: dict(arm=arm, seed=seed, top1=top1)
  record = {"runs": {"grown_s0": run("grown", 0, 0.90), "base_s0": run("base", 0, 0.80)}}
  assert study.gate_open(plan, record) == (False, "grown beats base: pending")
  record["runs"].update(grown_s1=run("grown", 1, 0.91), base_s1=run("base", 1, 0.80))
  # Differences 10 and 11 points, one claim: t = 21 on 1 dof, p = 0.03 < 0.05: the gate opens.
  assert study.gate_open(plan, record)[0]
  record["runs"]["grown_s1"]["top1"] = 0.70  # differences 10 and -10: not shown, the gate stays closed
  assert not study.gate_open(plan, record)[0]
  assert study.gate_open(dict(plan, gate=None), record) == (True, "")


# The LM study's plan (configs/llama_fortunes_2x.py:study) at a few steps: its runs' args shrunk (steps, the
# release path), the model's context, batch and corpus shrunk by get_config, seeds 0 and 1, files in tmp.
LM_SMALL = """
from scalenet_jax import config_lib, paths

real = config_lib.load_config_module(paths.REPO_ROOT / "configs" / "llama_fortunes_2x.py")
TMP = "@TMP@"
SHRINK = {
    f"steps={real.STUDY_BASE_STEPS}": "steps=6",
    f"steps={real.STUDY_BASE_STEPS // 3}": "steps=2",
    str(paths.REPO_ROOT / real.study()["runs"][0]["release"]): TMP + "/release",
}

def shrink(run):
  for a, b in SHRINK.items():
    run["arg"] = run["arg"].replace(a, b)
  if "release" in run:
    run["release"] = TMP + "/release"
  return run

def get_config(arg):
  c = real.get_config(arg)
  small = {"data.root": TMP + "/corpus", "data.seq_len": 32, "batch_size": 4, "eval_batch_size": 16, "log_every": 1}
  small.update({"ckpt_every": 0, "optim.warmup_steps": 1, "eval_every": 2 if "run=pretrain" in arg else 0})
  return config_lib.override(c, small)

def study(arg=""):
  plan = real.study()
  make_run = lambda arm, seed: shrink(plan["make_run"](arm, seed))
  runs = [shrink(r) for r in plan["runs"] if r["seed"] < 2]
  return dict(plan, runs=runs, make_run=make_run, max_seeds=2, record=TMP + "/lm.json", report=TMP + "/lm.md")
"""


@pytest.mark.e2e
def test_lm_study_plan_runs_end_to_end(tmp_path):
  from helpers import small_fortunes

  small_fortunes(tmp_path / "corpus", 600)
  cfg = tmp_path / "lm_small.py"
  cfg.write_text(LM_SMALL.replace("@TMP@", str(tmp_path)))
  s = study.run_study(f"{cfg}:study", str(tmp_path / "wd"))
  runs = s.plan["runs"]
  rec = json.loads((tmp_path / "lm.json").read_text())
  assert list(rec["runs"]) == [r["name"] for r in runs] and len(runs) == 9 and s.pending() == []
  assert all(math.isfinite(r["perplexity"]) and r["perplexity"] > 1 for r in rec["runs"].values())
  # The base: trained 3x the arms' steps, its held-out curve recorded, released as a Hugging Face directory
  # (the files of its export) with its provenance.
  base, release = rec["runs"]["base_s0"], tmp_path / "release"
  assert base["release"] == str(release) and base["steps"] == 6
  assert [p[0] for p in base["curve"]] == [2, 4, 6] and base["curve"][-1][1] == base["perplexity"]
  export = tmp_path / "wd" / "base_s0" / "export"
  for f in ("config.json", "model.safetensors", "tokenizer.json"):
    assert (release / f).read_bytes() == (export / f).read_bytes(), f
  prov = json.loads((release / "provenance.json").read_text())
  assert prov["run"] == "base_s0" and prov["record"] == str(tmp_path / "lm.json")
  assert prov["command"].startswith(f"python -m scalenet_jax.main --config {cfg}:run=pretrain,seed=0,steps=6")
  # Every arm starts from the release: the controls without new layers start as the base's function.
  for r in runs[1:]:
    assert s.config(r).init_from == str(release) and r["needs"] == "base_s0" and rec["runs"][r["name"]]["steps"] == 2
  for name in ("further_adapters_s0", "further_all_s1"):
    assert rec["runs"][name]["perplexity_init"] == pytest.approx(base["perplexity"], rel=1e-4), name
  report = (tmp_path / "lm.md").read_text()
  assert "9 of 9 runs finished" in report and "![curves](lm_curves.png)" in report
  assert "Paired (same-seed) differences of perplexity, a minus b (lower is better)" in report
  for c in s.plan["claims"]:
    row = next(r for r in study.claim_rows(s.plan, rec) if r["b"] == c["b"])
    assert row["seeds"] == 2 and row["verdict"] != "pending" and f"| grow | {c['text']} | 2 |" in report


def test_same_as_takes_a_finished_run_only_when_its_config_is_identical(toy):
  """A plan's run may be another record's run (the vit3 family's 2x-deep model is the vit family's
  base): it is taken from there only when that run finished with exactly this run's config."""
  cfg, tmp = toy
  s = study.Study(cfg, str(tmp / "wd"))
  entry = dict(arm="base", seed=0, phase="p", arg="run=base,seed=0", top1=0.5)
  (tmp / "other.json").write_text(json.dumps({"runs": {"b0": entry}}))
  twin = dict(name="twin_s0", arm="grown", seed=0, phase="p", arg="run=base,seed=0", same_as=f"{tmp}/other.json:b0")
  assert s.take_same(twin)
  assert s.record["runs"]["twin_s0"] == dict(entry, arm="grown", same_as=twin["same_as"])
  assert not s.take_same(dict(twin, name="t1", arg="run=base,seed=1")) and "t1" not in s.record["runs"]
  assert not s.take_same(dict(twin, name="t2", same_as=f"{tmp}/other.json:missing"))
  assert not s.take_same(dict(twin, name="t3", same_as=f"{tmp}/none.json:b0"))
