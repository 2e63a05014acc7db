"""Every shell command in README.md runs, as written, with overrides that only shrink the run.

The commands are read from the README's ```bash blocks (continuation lines joined, comments dropped); each
must be handled below, so a command added to the README without a test fails here. The paths a user has
and the test cannot (`/ckpt/...`, `/data/...`, `gs://my-bucket`) are replaced by files the test writes in
the same layouts: random-weight timm models as hub `model.safetensors`, TFDS's mock `imagenet2012`
(tests/tfds_mock.py) as the TFDS data dir, an ImageFolder tree.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tfds_mock
from helpers import PAPER_RUN as RUN
from helpers import check_user_run, run_paper_session as run_session, timm_checkpoint

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
  text = (REPO / "README.md").read_text()
  cmds = []
  for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split("  #", 1)[0].strip()
      if line and not line.startswith("#"):
        cmds.append(" ".join(line.split()))
  return cmds


def commands_starting(prefix: str) -> list[list[str]]:
  return [shlex.split(c) for c in readme_commands() if c.startswith(prefix)]


HANDLED = ("bash run.sh ", "python -m scalenet_jax.main ", "python launch/tpu_pod.py ")


def test_every_readme_command_is_handled_here():
  cmds = readme_commands()
  assert len(cmds) >= 6
  unhandled = [c for c in cmds if not c.startswith(HANDLED)]
  assert not unhandled, f"README commands no test runs: {unhandled}"


def test_run_sh_commands():
  # `bash run.sh test` is what CI runs (.ci/run execs exactly it); `bash run.sh demo` runs the demo CLI,
  # which tests/test_demo.py runs in --quick form.
  assert sorted(" ".join(c) for c in commands_starting("bash run.sh ")) == ["bash run.sh demo", "bash run.sh test"]
  assert "exec bash run.sh test" in (REPO / ".ci" / "run").read_text()
  run_sh = (REPO / "run.sh").read_text()
  assert re.search(r"demo\)\s+exec \"\$VENV/bin/python\" -m scalenet_jax\.demo", run_sh), "run.sh demo changed"


def substitute(args: list[str], paths: dict[str, str]) -> list[str]:
  """Each README placeholder path replaced (in one pass, so a replacement is never rewritten)."""
  pattern = re.compile("|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True)))
  return [pattern.sub(lambda m: paths[m.group(0)], a) for a in args]


def image_folder(root: Path, classes: int, val_classes: int) -> Path:
  from PIL import Image

  rng = np.random.default_rng(0)
  for split, n in (("train", classes), ("val", val_classes)):
    for k in range(n):
      d = root / split / f"class{k:03d}"
      d.mkdir(parents=True)
      Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / "img0.jpg")
  return root


@pytest.mark.e2e
def test_training_commands(timm, torch, tmp_path):
  """The paper run (+ its summary) and the ImageFolder fine-tuning, in one session of `main` invocations."""
  mains = commands_starting("python -m scalenet_jax.main ")
  assert len(mains) == 3, mains
  spec = tfds_mock.Spec(str(tmp_path / "tfds"), train=2000, validation=4)
  tfds_mock.write_metadata(spec)
  paths = {
      "/ckpt/deit_base_patch16_224/model.safetensors": str(
          timm_checkpoint(timm, torch, tmp_path / "timm", "deit_base_patch16_224")
      ),
      "/ckpt/deit_small_patch16_224/model.safetensors": str(
          timm_checkpoint(timm, torch, tmp_path / "timm", "deit_small_patch16_224")
      ),
      "/data/tensorflow_datasets": spec.root,
      "/data/flowers": str(image_folder(tmp_path / "flowers", classes=102, val_classes=3)),
      "/tmp/": f"{tmp_path}/work/",
  }
  paper, summary, finetune = (substitute(c[3:], paths) for c in mains)
  # The paper run as a user continues it: train, train further (resumes), eval, export. (This is the
  # full-size end-to-end test of configs/deit_base_2x.py; tests/test_paper_configs_e2e.py runs the others.)
  paper = [*paper, *RUN]
  invocations = [
      [*paper, "--config.steps=1"],
      [*paper, "--config.steps=2"],
      [*paper, "--config.steps=2", "--mode=eval"],
      [*paper, "--config.steps=2", "--mode=export"],
      summary,
      [*finetune, *RUN, "--config.steps=1"],
  ]
  codes, outs, errs = run_session(spec, invocations, tmp_path / "readme.session.json")
  for invocation, code, err in zip(invocations, codes, errs):
    assert code == 0, f"{' '.join(invocation)}\nexit {code}\n{err[-4000:]}"
  check_user_run(spec, tmp_path / "work" / "deit_b_2x", outs[:4])
  assert "deit_base_patch16_224" in outs[4] and "params" in outs[4]
  flowers = tmp_path / "work" / "flowers_2x"
  assert (flowers / "checkpoints" / "1").exists()
  assert (flowers / "export" / "model.safetensors").stat().st_size > 0
  # The new head has the dataset's 102 classes, not the checkpoint's 1000.
  from safetensors.numpy import load_file

  assert load_file(flowers / "export" / "model.safetensors")["head.weight"].shape == (102, 384)


def test_tpu_pod_command_dry_run():
  (cmd,) = commands_starting("python launch/tpu_pod.py ")
  proc = subprocess.run(
      # The launcher's compile check (minutes for DeiT-B 2x on a v4-32) is tested in test_tpu_check.py.
      [sys.executable, cmd[1], "--dry-run", "--no-compile-check", *cmd[2:]],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  assert "--accelerator-type=v4-32" in out
  # The trainer runs on every worker with the gs:// workdir and checkpoint, as the README says.
  assert "--worker=all" in out and "-m scalenet_jax.main" in out
  train = next(l for l in out.splitlines() if "-m scalenet_jax.main" in l)
  for arg in (
      "--config configs/deit_base_2x.py",
      "--workdir gs://my-bucket/deit_b_2x",
      "--config.init_from=gs://my-bucket/ckpt/deit_base_patch16_224/model.safetensors",
      "--config.data.root=gs://my-bucket/tensorflow_datasets",
  ):
    assert arg in train, arg


def test_layout_table_matches_the_tree():
  text = (REPO / "README.md").read_text()
  table = text[text.index("## Layout") : text.index("## Models and weights")]
  named = set()
  for row in [r for r in table.splitlines() if r.startswith("| `")]:
    first, *siblings = re.findall(r"`([^`]+)`", row.split("|")[1])
    named.add(first.rstrip("/"))  # `scalenet_jax/a.py`, `b.py`: later names in a cell sit next to the first
    named.update(str(Path(first).parent / s) for s in siblings)
  missing = sorted(p for p in named if not (REPO / p).exists())
  assert not missing, f"README layout table names paths that do not exist: {missing}"
  package = REPO / "scalenet_jax"
  tree = {f"scalenet_jax/{p.name}" for p in package.iterdir() if not p.name.startswith((".", "_"))}
  tree |= {
      p.name
      for p in REPO.iterdir()
      if p.is_dir() and p.name in ("configs", "pretrained", "launch", "benchmarks", "docs", "tests")
  }
  assert not sorted(tree - named), f"README layout table lacks: {sorted(tree - named)}"
