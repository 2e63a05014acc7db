"""`python -m scalenet_jax.main` as a user runs it: the summary output, and clean failures on bad input.

Every bad input must end with a nonzero exit code, exactly one stderr line starting with `error:` (no
traceback, no log noise) and a pre-existing workdir left as it was (nothing overwritten or removed).
The bad invocations run in one module fixture (one process for the one-device ones), and each test checks one.
Subprocesses share a persistent XLA compilation cache and skip LLVM optimisation (compile time dominates
these tiny runs; the flags change no result checked here).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import cli_session
from helpers import env_for, snapshot
from scalenet_jax import convert
from scalenet_jax.models import registry

REPO = Path(__file__).resolve().parents[1]
MICRO = str(REPO / "configs" / "vit_micro_fmnist.py")
# Tiny, fast, no dataset files: only the cases about data override these.
TINY = [
    "--config.data.name=synthetic",
    "--config.data.synthetic_examples=64",
    "--config.batch_size=16",
    "--config.eval_batch_size=32",
    "--config.steps=4",
    "--config.data.eval_split=minival",
    "--config.data.minival_per_class=2",
]


def run_main(args, devices=1, timeout=300):
  t0 = time.time()
  try:
    return subprocess.run(
        [sys.executable, "-m", "scalenet_jax.main", *args],
        cwd=REPO,
        env=env_for(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
  finally:
    print(f"{time.time() - t0:6.1f}s {args[-1]}")  # visible with pytest -s


# ----------------------------------------------------------------------------------------------
# Fixtures for the bad inputs (weights files, broken datasets, a foreign checkpoint)
# ----------------------------------------------------------------------------------------------
def zero_params(name, **arch):
  """Zero params of a registry model, built from shapes only (no compile)."""
  model = registry.create_model(name, arch)
  return model, jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), model.abstract_params())


class _RunsCode:
  """Unpickling this runs `touch <marker>`: what a malicious .pth does."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def write_inputs(d: Path) -> dict:
  paths = {}
  wide, params = zero_params("vit_micro_patch4_28", embed_dim=32, num_heads=2)
  paths["wide"] = d / "other_width.safetensors"
  convert.save_safetensors(str(paths["wide"]), convert.flax_to_timm(params, wide))
  model, params = zero_params("vit_micro_patch4_28")
  sd = convert.flax_to_timm(params, model)
  del sd["head.weight"]
  paths["missing"] = d / "missing_head.safetensors"
  convert.save_safetensors(str(paths["missing"]), sd)
  paths["marker"] = d / "pwned"
  paths["evil"] = d / "evil.pth"
  with open(paths["evil"], "wb") as f:
    pickle.dump({"head.weight": _RunsCode(paths["marker"])}, f, protocol=2)  # as torch.save writes
  paths["empty"] = d / "empty_folder"
  (paths["empty"] / "train" / "cls0").mkdir(parents=True)
  paths["broken"] = d / "broken_folder"
  for split in ("train", "val"):
    (paths["broken"] / split / "cls0").mkdir(parents=True)
    (paths["broken"] / split / "cls0" / "img0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  return paths


def write_foreign_checkpoint(workdir: Path):
  """A finalized checkpoint of some other model (different fingerprint) in `workdir`."""
  from scalenet_jax.train import checkpoint as ckpt_lib

  with ckpt_lib.Checkpointer(str(workdir), async_save=False) as ckpt:
    ckpt.save(3, {"w": np.ones((4, 4), np.float32)}, {"fingerprint": "0123456789abcdef"}, force=True)


# id -> (args after the config, devices); {x} placeholders are filled from write_inputs' paths.
BAD = {
    "unknown_config_key": (["--config.nosuch_field=1"], 1),
    "wrong_override_type": (["--config.steps=abc"], 1),
    "unknown_model": (["--config.model.name=vit_gigantic"], 1),
    "missing_config_file": (None, 1),
    "unknown_expansion_kind": (["--config.expansion.kind=bogus"], 1),
    "mapping_wrong_length": (["--config.expansion.kind=scalenet", "--config.expansion.mapping=0,1,2"], 1),
    "mapping_index_out_of_range": (
        ["--config.expansion.kind=scalenet", "--config.expansion.mapping=0,0,1,1,2,2,3,3,4,4,5,9"],
        1,
    ),
    "reuse_zero": (["--config.expansion.kind=scalenet", "--config.expansion.reuse=0"], 1),
    "rank_zero": (["--config.expansion.kind=scalenet", "--config.expansion.rank=0"], 1),
    "subset_out_of_range": (["--config.expansion.kind=scalenet", "--config.expansion.subset=2,7"], 1),
    "swin_stage_out_of_range": (
        [
            "--config.model.name=swin_micro_patch2_window4_32",
            "--config.expansion.kind=scalenet",
            "--config.expansion.subset=3",
        ],
        1,
    ),
    "batch_not_divisible": (["--config.batch_size=12"], 8),
    "missing_dataset_dir": (["--config.data.name=fashion_mnist", "--config.data.root=/nonexistent"], 1),
    "empty_imagefolder": (["--config.data.name=imagefolder:{empty}"], 1),
    "undecodable_image": (
        ["--config.data.name=imagefolder:{broken}", "--config.data.eval_split=val", "--mode=eval"],
        1,
    ),
    "init_from_other_width": (["--config.init_from={wide}"], 1),
    "init_from_missing_key": (["--config.init_from={missing}"], 1),
    "init_from_code_pickle": (["--config.init_from={evil}"], 1),
    "workdir_of_other_model": ([], 1),
}
# What the one error line must mention, so the message names the bad thing.
MENTIONS = {
    "unknown_config_key": "nosuch_field",
    "wrong_override_type": "steps",
    "unknown_model": "vit_gigantic",
    "missing_config_file": "nonexistent",
    "unknown_expansion_kind": "bogus",
    "mapping_wrong_length": "mapping",
    "mapping_index_out_of_range": "9",
    "reuse_zero": "reuse",
    "rank_zero": "rank",
    "subset_out_of_range": "7",
    "swin_stage_out_of_range": "stage 3",
    "batch_not_divisible": "batch_size=12",
    "missing_dataset_dir": "/nonexistent",
    "empty_imagefolder": "no images",
    "undecodable_image": "img0.png",
    "init_from_other_width": "shape mismatch",
    "init_from_missing_key": "head.weight",
    "init_from_code_pickle": "refusing",
    "workdir_of_other_model": "fingerprint",
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
  """Runs every bad invocation (concurrently); returns {id: (CompletedProcess, before, after, paths)}."""
  root = tmp_path_factory.mktemp("cli")
  paths = write_inputs(root)
  jobs = {}
  for case, (extra, devices) in BAD.items():
    workdir = root / f"wd_{case}"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("results of an earlier run\n")
    if case == "workdir_of_other_model":
      write_foreign_checkpoint(workdir)
    if extra is None:
      args = ["--config", str(root / "nonexistent_config.py"), "--workdir", str(workdir)]
    else:
      args = [
          "--config",
          MICRO,
          "--workdir",
          str(workdir),
          *TINY,
          *[a.format(**{k: str(v) for k, v in paths.items()}) for a in extra],
      ]
    jobs[case] = (workdir, args, devices, snapshot(workdir))
  # The one-device cases run one after the other in one process (tests/cli_session.py: one import of
  # the package for all of them), the multi-device ones in processes of their own alongside.
  session = [case for case in jobs if jobs[case][2] == 1]
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    inline = pool.submit(cli_session.run, [jobs[c][1] for c in session], root / "bad.json", env_for())
    own = {c: pool.submit(run_main, args, n) for c, (_, args, n, _) in jobs.items() if c not in session}
    own = {case: f.result() for case, f in own.items()}
    for case, code, out, err in zip(session, *inline.result()):
      own[case] = subprocess.CompletedProcess(jobs[case][1], code, out, err)
  return {case: (own[case], before, snapshot(wd), paths) for case, (wd, _, _, before) in jobs.items()}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_error_line(bad_runs, case):
  proc, before, after, paths = bad_runs[case]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode != 0, proc.stdout[-2000:]
  assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-3000:]
  assert MENTIONS[case].lower() in lines[0].lower(), lines[0]
  # The workdir: every pre-existing entry unchanged, no new files (an empty directory is harmless).
  assert {k: after.get(k) for k in before} == before
  new_files = [k for k in set(after) - set(before) if after[k] != "dir"]
  assert not new_files, new_files
  if case == "init_from_code_pickle":
    assert not paths["marker"].exists(), "unpickling ran code"


# ----------------------------------------------------------------------------------------------
# Summary mode
# ----------------------------------------------------------------------------------------------
def test_summary_table_and_json_with_xla_check():
  proc = run_main(["--config", MICRO, "--mode=summary"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  table, last = "\n".join(lines[:-1]), json.loads(lines[-1])
  assert "params (per instance)" in table and "305,034" in table and "GFLOPs" in table
  assert last["params"] == 305034 and last["trainable_params"] == 305034
  assert last["gflops"] == pytest.approx(last["macs"] / 1e9) and last["gflops"] > 0.01
  # XLA's count includes elementwise work, so it is a bit above the MAC count, never below.
  assert 1.0 <= last["xla_ratio"] <= 1.3, last


def test_summary_of_expanded_model_without_xla_check():
  proc = run_main(
      [
          "--config",
          MICRO,
          "--mode=summary",
          "--noxla_check",
          "--config.expansion.kind=scalenet",
          "--config.expansion.rank=4",
      ]
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  last = json.loads(proc.stdout.strip().splitlines()[-1])
  d = 64
  assert "xla_ratio" not in last
  assert last["depths"] == [12]
  assert last["unique_params"] == 305034 + 12 * 10 * 4 * d + 6 * 4 * d


def test_paper_config_without_imagenet_names_the_manual_files(tmp_path_factory):
  """The design card's own command on a machine without ImageNet: one line saying what to put where."""
  data_dir = tmp_path_factory.mktemp("no_imagenet")
  workdir = tmp_path_factory.mktemp("deit_base_2x")
  env = env_for()
  env["TFDS_DATA_DIR"] = str(data_dir)
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "scalenet_jax.main",
          "--config",
          str(REPO / "configs" / "deit_base_2x.py"),
          "--workdir",
          str(workdir),
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
  manual = str(data_dir / "downloads" / "manual")
  for what in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", manual):
    assert what in lines[0], lines[0]
  assert not any(workdir.iterdir())  # nothing written
