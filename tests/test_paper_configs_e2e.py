"""Every experiment config in configs/ runs the way a user runs it.

`python -m scalenet_jax.main --config <cfg> --workdir W --config.init_from=<timm checkpoint>` on TFDS
`imagenet2012` served by `tfds.testing.mock_data` (1000 classes, the real feature spec; tests/tfds_mock.py),
then again (resuming), then `--mode eval` and `--mode export`. Overrides shrink only the run: batch,
steps, evaluation size. The checkpoint is a timm model of the config's architecture with random weights,
saved as timm's hub file `model.safetensors`.

* The six paper configs (`*_2x.py`) run at full size: 224 px, batch 2.
* Their baseline kinds (config argument) and every `ablation_grow.py` family run on a small model of the
  same family (`--config.model.name` / `img_size` overrides), so the suite stays fast on 2 cores.

Subprocesses share a persistent compilation cache, so the resumed run and the eval/export invocations
reuse the programs the first run compiled.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import cli_session
import tfds_mock

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TIMM_NAME = {"vit": "vit_base_patch16_224", "swin": "swin_tiny_patch4_window7_224"}

# Shrink the run only: batch, steps, evaluation size (the mock's validation split), logging.
RUN = ["--config.batch_size=2", "--config.eval_batch_size=2", "--config.log_every=1", "--config.ckpt_every=1"]


@pytest.fixture(scope="module")
def mock_spec(tmp_path_factory):
  spec = tfds_mock.Spec(str(tmp_path_factory.mktemp("tfds") / "tfds"), train=2000, validation=4)
  tfds_mock.write_metadata(spec)
  return spec


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.getbasetemp() / "e2e_jax_cache"


def timm_checkpoint(timm, torch, directory: Path, name: str, **arch) -> Path:
  """A random-weight timm model of registry model `name` (+ `arch` overrides), as `model.safetensors`."""
  from safetensors.torch import save_file

  from scalenet_jax.models import registry

  path = directory / f"{name}_{'_'.join(f'{k}{v}' for k, v in sorted(arch.items()))}" / "model.safetensors"
  if not path.exists():
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    kwargs = registry.arch_kwargs(name, **arch)
    model = timm.create_model(TIMM_NAME[registry.family_of(name)], pretrained=False, **kwargs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if "relative_position_index" not in k}, path)
  return path


def run_session(spec, cache_dir, invocations: list[list[str]], session: Path) -> tuple[list[int], list[str], list[str]]:
  """The `python -m scalenet_jax.main` invocations one after the other in one process under the TFDS mock
  (tests/cli_session.py, keep going); their exit codes, stdouts, stderrs."""
  env = tfds_mock.env(spec)
  env.update(
      JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"
  )
  return cli_session.run(invocations, session, env, launcher=tfds_mock.command())


def user_invocations(config: str, workdir: Path, ckpt: Path, *overrides: str) -> list[list[str]]:
  """The four invocations a user makes: train, train further (= resume), eval, export."""
  base = ["--config", config, "--workdir", str(workdir), f"--config.init_from={ckpt}", *RUN, *overrides]
  return [
      [*base, "--config.steps=1"],
      [*base, "--config.steps=2"],
      [*base, "--config.steps=2", "--mode=eval"],
      [*base, "--config.steps=2", "--mode=export"],
  ]


def check_user_run(spec, workdir: Path, outs: list[str]) -> dict:
  """What the four invocations must leave behind; returns the eval metrics."""
  assert f"resumed from {workdir} at step 1" in outs[1]
  result = json.loads(outs[2].strip().splitlines()[-1])
  assert result["eval_examples"] == spec.validation and 0.0 <= result["top1"] <= 1.0
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines if "loss" in l] == [1, 2]
  assert all(np.isfinite(l["loss"]) for l in lines if "loss" in l)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2"]
  assert (workdir / "export" / "params" / "_METADATA").exists()
  assert (workdir / "export" / "model.safetensors").stat().st_size > 0
  return result


def run_configs(spec, cache_dir, runs: dict[str, tuple], session: Path) -> dict:
  """Every run of `runs` (name -> user_invocations arguments) in one process, so the ~9 s of imports are
  paid once per group rather than once per config; then checks each run on its own and fails naming
  every run that failed (a failing run does not stop the others)."""
  invocations = [user_invocations(*args) for args in runs.values()]
  codes, outs, errs = run_session(spec, cache_dir, [i for inv in invocations for i in inv], session)
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


def train_resume_eval_export(spec, cache_dir, config: str, workdir: Path, ckpt: Path, *overrides: str) -> dict:
  """One config's four invocations in a session of its own; returns the eval metrics."""
  session = workdir.parent / f"{workdir.name}.session.json"
  return run_configs(spec, cache_dir, {config: (config, workdir, ckpt, *overrides)}, session)[config]


# ----------------------------------------------------------------------------------------------------
# The six paper configs at full size.
# ----------------------------------------------------------------------------------------------------
PAPER = {
    "deit_tiny_2x.py": "deit_tiny_patch16_224",
    "deit_small_2x.py": "deit_small_patch16_224",
    # deit_base_2x.py: run by tests/test_readme.py with the README's command (same four invocations).
    "swin_tiny_2x.py": "swin_tiny_patch4_window7_224",
    "swin_small_2x.py": "swin_small_patch4_window7_224",
    "swin_base_2x.py": "swin_base_patch4_window7_224",
}


@pytest.mark.parametrize("config", sorted(PAPER))
def test_paper_config_at_full_size(timm, torch, mock_spec, cache_dir, tmp_path_factory, config):
  ckpt = timm_checkpoint(timm, torch, tmp_path_factory.getbasetemp() / "timm", PAPER[config])
  workdir = tmp_path_factory.mktemp(config.replace(".py", ""))
  train_resume_eval_export(mock_spec, cache_dir, str(CONFIGS / config), workdir, ckpt)


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
ABLATIONS = {  # group -> ablation_grow.py arguments
    "vit_adjustment": ["adjust=lora,rank=8", "adjust=none", "rank=32", "scope=all", "drop_path=0.1"],
    "vit_structure": ["share=0", "subset=3-5", "reuse=3", "mapping=stack"],
    "swin": ["model=swin_base,subset=2", "model=swin_base,mapping=interpolate"],
}
# Every key ablation_grow.py parses is varied by some group (model: the Swin group).
ABLATION_KEYS = {"model", "adjust", "share", "subset", "reuse", "mapping", "rank", "drop_path", "scope"}
assert {kv.split("=")[0] for args in ABLATIONS.values() for a in args for kv in a.split(",")} == ABLATION_KEYS


@pytest.mark.parametrize("config", ["deit_base_2x.py", "swin_base_2x.py"])
def test_baseline_kinds(timm, torch, mock_spec, cache_dir, tmp_path_factory, config):
  name, arch, overrides = small_overrides("swin" if config.startswith("swin") else "vit")
  ckpt = timm_checkpoint(timm, torch, tmp_path_factory.getbasetemp() / "timm", name, **arch)
  group = tmp_path_factory.mktemp(f"{config[:-3]}_kinds")
  runs = {}
  for kind in BASELINE_KINDS:
    extra = ["--config.init_from="] if kind == "scratch" else []  # from scratch: nothing to load
    runs[kind] = (f"{CONFIGS / config}:{kind}", group / kind, ckpt, *overrides, *extra)
  assert sorted(run_configs(mock_spec, cache_dir, runs, group / "session.json")) == sorted(BASELINE_KINDS)


@pytest.mark.parametrize("group", sorted(ABLATIONS))
def test_ablation_families(timm, torch, mock_spec, cache_dir, tmp_path_factory, group):
  name, arch, overrides = small_overrides("swin" if group == "swin" else "vit")
  ckpt = timm_checkpoint(timm, torch, tmp_path_factory.getbasetemp() / "timm", name, **arch)
  root = tmp_path_factory.mktemp(f"ablation_{group}")
  runs = {
      arg: (f"{CONFIGS / 'ablation_grow.py'}:{arg}", root / arg.replace(",", "_").replace("=", ""), ckpt, *overrides)
      for arg in ABLATIONS[group]
  }
  assert sorted(run_configs(mock_spec, cache_dir, runs, root / "session.json")) == sorted(ABLATIONS[group])
