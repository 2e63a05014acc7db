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
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tfds_mock

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TIMM_NAME = {"vit": "vit_base_patch16_224", "swin": "swin_tiny_patch4_window7_224"}

# Shrink the run only: batch, steps, evaluation size (the mock's validation split), logging.
RUN = ["--config.batch_size=2", "--config.eval_batch_size=2", "--config.log_every=1", "--config.ckpt_every=1"]
FAST_COMPILE = []  # (XLA_FLAGS from conftest: backend opt level 1 compiles fast and runs fast enough)


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


def run_session(spec, cache_dir, invocations: list[list[str]], session: Path) -> list[str]:
  """Runs the `python -m scalenet_jax.main` invocations one after the other in one process
  (tests/cli_session.py) under the TFDS mock; returns their stdouts; fails on the first nonzero exit."""
  session.write_text(json.dumps(invocations))
  env = tfds_mock.env(spec)
  env.update(
      JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"
  )
  cmd = tfds_mock.command(str(Path(__file__).with_name("cli_session.py")), str(session))
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-4000:]
  codes = json.loads(Path(f"{session}.codes.json").read_text())
  for i, code in enumerate(codes):
    err = Path(f"{session}.{i}.err").read_text()
    assert code == 0, f"{' '.join(invocations[i])}\nexit {code}\n{err[-4000:]}"
  assert len(codes) == len(invocations)
  return [Path(f"{session}.{i}.out").read_text() for i in range(len(codes))]


def train_resume_eval_export(spec, cache_dir, config: str, workdir: Path, ckpt: Path, *overrides: str) -> dict:
  """The four invocations a user makes (train, train further = resume, eval, export); returns the eval
  metrics."""
  base = ["--config", config, "--workdir", str(workdir), f"--config.init_from={ckpt}", *RUN, *FAST_COMPILE]
  base += overrides
  invocations = [
      [*base, "--config.steps=1"],
      [*base, "--config.steps=2"],
      [*base, "--config.steps=2", "--mode=eval"],
      [*base, "--config.steps=2", "--mode=export"],
  ]
  outs = run_session(spec, cache_dir, invocations, workdir.parent / f"{workdir.name}.session.json")
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


BASELINES = [
    (f"{m}_2x.py", k) for m in ("deit_base", "swin_base") for k in ("random", "stack", "interpolate", "swa", "scratch")
]
ABLATIONS = [
    "adjust=lora,rank=8",
    "adjust=none",
    "share=0",
    "subset=3-5",
    "reuse=3",
    "mapping=stack",
    "rank=32",
    "drop_path=0.1",
    "scope=all",
    "model=swin_base,subset=2",
    "model=swin_base,mapping=interpolate",
]


@pytest.mark.parametrize("config,arg", BASELINES, ids=[f"{c}:{a}" for c, a in BASELINES])
def test_baseline_kinds(timm, torch, mock_spec, cache_dir, tmp_path_factory, config, arg):
  name, arch, overrides = small_overrides("swin" if config.startswith("swin") else "vit")
  ckpt = timm_checkpoint(timm, torch, tmp_path_factory.getbasetemp() / "timm", name, **arch)
  workdir = tmp_path_factory.mktemp(f"{config[:-3]}_{arg}")
  extra = ["--config.init_from="] if arg == "scratch" else []  # from scratch: nothing to load
  train_resume_eval_export(mock_spec, cache_dir, f"{CONFIGS / config}:{arg}", workdir, ckpt, *overrides, *extra)


@pytest.mark.parametrize("arg", ABLATIONS)
def test_ablation_families(timm, torch, mock_spec, cache_dir, tmp_path_factory, arg):
  name, arch, overrides = small_overrides("swin" if "model=swin" in arg else "vit")
  ckpt = timm_checkpoint(timm, torch, tmp_path_factory.getbasetemp() / "timm", name, **arch)
  workdir = tmp_path_factory.mktemp("ablation_" + arg.replace(",", "_").replace("=", ""))
  train_resume_eval_export(mock_spec, cache_dir, f"{CONFIGS / 'ablation_grow.py'}:{arg}", workdir, ckpt, *overrides)
