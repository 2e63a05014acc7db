"""Every experiment config in configs/ runs the way a user runs it.

`python -m scalenet_jax.main --config <cfg> --workdir W --config.init_from=<timm checkpoint>` on TFDS
`imagenet2012` served by `tfds.testing.mock_data` (1000 classes, the real feature spec; tests/tfds_mock.py),
then again (resuming), then `--mode eval` and `--mode export`. Overrides shrink only the run: batch,
steps, evaluation size. The checkpoint is a timm model of the config's architecture with random weights,
saved as timm's hub file `model.safetensors`.

* The six paper configs (`*_2x.py`) at full size (224 px, batch 2): the smallest of each family
  (deit_tiny, swin_tiny) runs the four invocations; deit_base runs them in tests/test_readme.py with the
  README's command. The others differ from those only in widths, depths and heads, i.e. in shapes: each
  loads its timm checkpoint into the grown model as a run does and traces its real train and eval steps
  (no compile).
* Their baseline kinds (config argument) and every `ablation_grow.py` family run on a small model of the
  same family (`--config.model.name` / `img_size` overrides), so the suite stays fast on 2 cores.

Subprocesses share a persistent compilation cache, so the resumed run and the eval/export invocations
reuse the programs the first run compiled.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tfds_mock
from helpers import PAPER_RUN as RUN
from helpers import check_user_run, config_file, run_paper_session as run_session, timm_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mock_spec(tmp_path_factory):
  spec = tfds_mock.Spec(str(tmp_path_factory.mktemp("tfds") / "tfds"), train=2000, validation=4)
  tfds_mock.write_metadata(spec)
  return spec


def user_invocations(config: str, workdir: Path, ckpt: Path, *overrides: str) -> list[list[str]]:
  """The four invocations a user makes: train, train further (= resume), eval, export."""
  base = ["--config", config, "--workdir", str(workdir), f"--config.init_from={ckpt}", *RUN, *overrides]
  return [
      [*base, "--config.steps=1"],
      [*base, "--config.steps=2"],
      [*base, "--config.steps=2", "--mode=eval"],
      [*base, "--config.steps=2", "--mode=export"],
  ]


def run_configs(spec, runs: dict[str, tuple], session: Path) -> dict:
  """Every run of `runs` (name -> user_invocations arguments) in one process, so the ~9 s of imports are
  paid once per group rather than once per config; then checks each run on its own and fails naming
  every run that failed (a failing run does not stop the others)."""
  invocations = [user_invocations(*args) for args in runs.values()]
  codes, outs, errs = run_session(spec, [i for inv in invocations for i in inv], session)
  failures, results = [], {}
  for k, (name, args) in enumerate(runs.items()):
    span = slice(4 * k, 4 * k + 4)
    bad = next((i for i, code in enumerate(codes[span]) if code), None)
    try:
      if bad is not None:
        raise AssertionError(f"{' '.join(invocations[k][bad])}\nexit {codes[span][bad]}\n{errs[span][bad][-3000:]}")
      results[name] = check_user_run(spec, args[1], outs[span])
    except AssertionError as e:
      failures.append(f"--- {name}: {e}")
  assert not failures, "\n".join(failures)
  return results


def train_resume_eval_export(spec, config: str, workdir: Path, ckpt: Path, *overrides: str) -> dict:
  """One config's four invocations in a session of its own; returns the eval metrics."""
  session = workdir.parent / f"{workdir.name}.session.json"
  return run_configs(spec, {config: (config, workdir, ckpt, *overrides)}, session)[config]


# ----------------------------------------------------------------------------------------------------
# The six paper configs at full size.
# ----------------------------------------------------------------------------------------------------
PAPER = {
    "deit_tiny_2x.py": "deit_tiny_patch16_224",
    "deit_small_2x.py": "deit_small_patch16_224",
    "deit_base_2x.py": "deit_base_patch16_224",
    "swin_tiny_2x.py": "swin_tiny_patch4_window7_224",
    "swin_small_2x.py": "swin_small_patch4_window7_224",
    "swin_base_2x.py": "swin_base_patch4_window7_224",
}
RUN_AT_FULL_SIZE = ("deit_tiny_2x.py", "swin_tiny_2x.py")  # deit_base_2x.py: tests/test_readme.py


@pytest.mark.parametrize("config", RUN_AT_FULL_SIZE)
def test_paper_config_at_full_size(timm, torch, mock_spec, tmp_path_factory, config):
  ckpt = timm_checkpoint(timm, torch, tmp_path_factory.getbasetemp() / "timm", PAPER[config])
  workdir = tmp_path_factory.mktemp(config.replace(".py", ""))
  train_resume_eval_export(mock_spec, str(CONFIGS / config), workdir, ckpt)


@pytest.mark.parametrize("config", sorted(set(PAPER) - set(RUN_AT_FULL_SIZE)))
def test_paper_config_loads_and_traces_at_full_size(timm, torch, tmp_path_factory, config):
  """What a run of the config builds before its first step, at full size: the grown model's initial
  params from the config's timm checkpoint (strict conversion, then the expansion), shaped as the state
  the loop restores them into; its real train and eval steps (`loop.train_step` / `eval_step`, with the
  config's Mixup/CutMix batch transform and trainable mask) traced on that state, the train step returning
  a state of the same structure and shapes, and a scalar loss."""
  import jax  # pylint: disable=g-import-not-at-top

  from scalenet_jax import tpu_check  # pylint: disable=g-import-not-at-top
  from scalenet_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from scalenet_jax.train import loop as loop_lib  # pylint: disable=g-import-not-at-top
  from scalenet_jax.train import sharding as sh  # pylint: disable=g-import-not-at-top
  from scalenet_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  c = config_file(config)
  c.init_from = str(timm_checkpoint(timm, torch, tmp_path_factory.getbasetemp() / "timm", PAPER[config]))
  c.batch_size = c.eval_batch_size = 2
  cfg, task = tpu_check.loop_config_and_task(c)
  assert cfg.model.img_size in (None, 224) and task.input_specs(2)[""][0].shape == (2, 224, 224, 3)
  variables = task.initial_variables()
  assert ckpt_lib.fingerprint(variables) == ckpt_lib.fingerprint(task.abstract_variables)

  mesh = sh.make_mesh(cfg.mesh_data, cfg.mesh_model)
  tx, optim_config = loop_lib.make_optimizer(cfg, task)
  state = step_lib.abstract_train_state(loop_lib.state_init_fn(task), tx, use_ema=task.use_ema)
  shardings = sh.param_shardings(state, mesh, cfg.sharding)
  objective = loop_lib.objective_of(cfg, task)
  inputs = task.input_specs(cfg.batch_size)[""][0]
  train_step = loop_lib.train_step(cfg, task, tx, optim_config, mesh, shardings)
  new_state, metrics = train_step.trace(state, objective.batch_spec(inputs)).out_info
  shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert shapes(new_state) == shapes(state)
  assert metrics["loss"].shape == ()
  eval_step = loop_lib.eval_step(cfg, task, mesh, shardings)
  sums = eval_step.trace(state, objective.batch_spec(inputs, eval=True)).out_info
  assert sums and all(a.shape == () for a in jax.tree.leaves(sums))


# ----------------------------------------------------------------------------------------------------
# Baseline kinds and ablation families, on small models of each family.
# ----------------------------------------------------------------------------------------------------
SMALL = {  # family -> (registry model, overrides that keep the config's family and its ImageNet data)
    "vit": ("deit_tiny_patch16_224", {"img_size": 32}),
    # Window 7 needs 224 px; the micro Swin (window 4, 3 stages) takes RGB ImageNet at 32 px.
    "swin": ("swin_micro_patch2_window4_32", {"in_chans": 3, "num_classes": 1000}),
}


def small_overrides(family):
  name, arch = SMALL[family]
  return name, arch, [f"--config.model.name={name}", *[f"--config.model.{k}={v}" for k, v in arch.items()]]


# One session per group (tests/cli_session.py): the configs of a group share the process's imports.
BASELINE_KINDS = ("random", "stack", "interpolate", "swa", "scratch")
# Each run compiles its own train and eval steps (~10 s of a group's time on 2 cores), so the keys are
# combined: every value that builds another model or another step is in some run; values that only change
# a shape (another rank, another subset) are not run twice.
ABLATIONS = {  # group -> ablation_grow.py arguments
    "vit_adjustment": ["adjust=lora,rank=8,scope=all", "adjust=none,drop_path=0.1"],
    "vit_structure": ["share=0", "subset=3-5,reuse=3,mapping=stack"],
    "swin": ["model=swin_base,subset=2,mapping=interpolate"],
}
# Every key ablation_grow.py parses is varied by some group (model: the Swin group).
ABLATION_KEYS = {"model", "adjust", "share", "subset", "reuse", "mapping", "rank", "drop_path", "scope"}
assert {kv.split("=")[0] for args in ABLATIONS.values() for a in args for kv in a.split(",")} == ABLATION_KEYS


@pytest.mark.parametrize("config", ["deit_base_2x.py", "swin_base_2x.py"])
def test_baseline_kinds(timm, torch, mock_spec, tmp_path_factory, config):
  name, arch, overrides = small_overrides("swin" if config.startswith("swin") else "vit")
  ckpt = timm_checkpoint(timm, torch, tmp_path_factory.getbasetemp() / "timm", name, **arch)
  group = tmp_path_factory.mktemp(f"{config[:-3]}_kinds")
  runs = {}
  for kind in BASELINE_KINDS:
    extra = ["--config.init_from="] if kind == "scratch" else []  # from scratch: nothing to load
    runs[kind] = (f"{CONFIGS / config}:{kind}", group / kind, ckpt, *overrides, *extra)
  assert sorted(run_configs(mock_spec, runs, group / "session.json")) == sorted(BASELINE_KINDS)


@pytest.mark.parametrize("group", sorted(ABLATIONS))
def test_ablation_families(timm, torch, mock_spec, tmp_path_factory, group):
  name, arch, overrides = small_overrides("swin" if group == "swin" else "vit")
  ckpt = timm_checkpoint(timm, torch, tmp_path_factory.getbasetemp() / "timm", name, **arch)
  root = tmp_path_factory.mktemp(f"ablation_{group}")
  runs = {
      arg: (f"{CONFIGS / 'ablation_grow.py'}:{arg}", root / arg.replace(",", "_").replace("=", ""), ckpt, *overrides)
      for arg in ABLATIONS[group]
  }
  assert sorted(run_configs(mock_spec, runs, root / "session.json")) == sorted(ABLATIONS[group])
