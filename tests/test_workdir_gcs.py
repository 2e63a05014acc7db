"""A gs:// workdir end to end: `python -m scalenet_jax.main` trains, resumes, evaluates and exports into a
bucket of a local GCS emulator (gcp-storage-emulator; Orbax's tensorstore and etils' gcsfs both talk to
it), and nothing of the workdir lands on the local disk.

A local-only file call on "gs://bucket/..." would either fail or create a `gs:` directory in the working
directory; the test runs the CLI in an empty directory and checks both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import gcs_emulator

pytestmark = pytest.mark.e2e  # training runs through the entry points (tests/conftest.py)
REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--config.data.name=synthetic",
    "--config.data.synthetic_examples=64",
    "--config.data.eval_split=minival",
    "--config.data.minival_per_class=2",
    "--config.batch_size=16",
    "--config.eval_batch_size=32",
    "--config.log_every=1",
    "--config.ckpt_every=2",
    "--config.eval_at_init=True",
]


@pytest.fixture(scope="module")
def bucket():
  """(endpoint env, epath root) of an in-memory GCS emulator with bucket `bucket`."""
  with gcs_emulator() as out:
    yield out


# The CLI, started so that Orbax writes its arrays without OCDBT: the emulator answers OCDBT's concurrent
# conditional manifest writes with object generations tensorstore rejects ("Malformed StorageGeneration").
# Real GCS does not; everything else (paths, files, tensorstore's gcs driver) is the production path.
NO_OCDBT = """
import functools, runpy, sys
import orbax.checkpoint as ocp
ocp.StandardCheckpointHandler.__init__ = functools.partialmethod(ocp.StandardCheckpointHandler.__init__, use_ocdbt=False)
"""
LAUNCH = NO_OCDBT + 'sys.argv[0] = "scalenet_jax.main"\nrunpy.run_module("scalenet_jax.main", run_name="__main__")\n'
# Several invocations in one process (tests/cli_session.py, whose path follows the code): the imports
# are paid once.
SESSION_LAUNCH = NO_OCDBT + 'sys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name="__main__")\n'


def env_of(env_extra) -> dict:
  env = dict(os.environ, **env_extra, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
  return env


def run_main(args, env_extra, cwd, config=str(REPO / "configs" / "vit_micro_fmnist.py")):
  cmd = [sys.executable, "-c", LAUNCH, "--config", config, *args]
  return subprocess.run(cmd, cwd=cwd, env=env_of(env_extra), capture_output=True, text=True, timeout=600)


def test_train_resume_eval_export_in_a_bucket(bucket, tmp_path):
  import cli_session

  env, root = bucket
  workdir = "gs://bucket/runs/micro"
  base = ["--config", str(REPO / "configs" / "vit_micro_fmnist.py"), "--workdir", workdir, *TINY]
  invocations = [
      [*base, "--config.steps=2"],
      [*base, "--config.steps=4"],  # resumes at step 2
      [*base, "--config.steps=4", "--mode=eval"],
      [*base, "--config.steps=4", "--mode=export"],
  ]
  launcher = [sys.executable, "-c", SESSION_LAUNCH]
  session = tmp_path / "session.json"
  codes, outs, errs = cli_session.run(invocations, session, env_of(env), launcher, keep_going=False, cwd=tmp_path)
  assert codes == [0, 0, 0, 0], errs[-1][-3000:]
  assert "resumed from gs://bucket/runs/micro at step 2" in outs[1]

  wd = root / "runs" / "micro"
  lines = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines if "loss" in l] == [1, 2, 3, 4]  # both runs' lines, in order
  assert json.loads(outs[2].strip().splitlines()[-1])["top1"] == lines[-1]["top1"]  # restored from gs://
  assert json.loads((wd / "init_eval.json").read_text())["eval_examples"] == 20
  assert any(p.name.startswith("events.out.tfevents") for p in (wd / "tb").iterdir())
  assert {p.name for p in (wd / "checkpoints").iterdir()} >= {"2", "4"}
  assert (wd / "export" / "params" / "_METADATA").exists()
  assert len((wd / "export" / "model.safetensors").read_bytes()) > 1_000_000
  # Nothing of the workdir was written through local file APIs.
  assert not any(p.name.startswith("gs:") for p in tmp_path.iterdir()), list(tmp_path.iterdir())


def test_nas_state_files_and_reports_in_a_bucket(bucket):
  """The NAS pipeline's own files (MCEA state, exported architectures, figures) through the path API."""
  import numpy as np

  from helpers import ToyProblem
  from scalenet_jax.nas import export, mcea, sampling
  from scalenet_jax.nas.space import get_space

  _, root = bucket
  wd = "gs://bucket/nas"
  toy = ToyProblem.make()
  config = mcea.MCEAConfig(iterations=1, n_base=2, population=4, generations=2, seed=0)
  first = mcea.run_mcea(toy.space, toy, config, state_path=f"{wd}/mcea.json")
  again = mcea.run_mcea(
      toy.space, lambda pairs: pytest.fail("resumed run re-evaluated"), config, state_path=f"{wd}/mcea.json"
  )
  assert again["objective"] == first["objective"]  # read back from the bucket, nothing recomputed
  space = get_space("tiny")
  rec = export.save_arch(f"{wd}/archs/s0.json", first["alpha"], first["scalings"][0], toy.space)
  assert export.load_record(f"{wd}/archs/s0.json") == json.loads(json.dumps(rec))
  macs = {m: sampling.sample_macs(space, m, 200, 0) for m in ("hss", "uniform")}
  sampling.plot_histograms(space, macs, f"{wd}/flops_hist.png")
  assert (root / "nas" / "flops_hist.png").read_bytes()[:4] == b"\x89PNG"
  assert np.isfinite(first["objective"])


def test_lm_from_a_bucket_checkpoint_into_a_bucket_workdir(bucket, tmp_path):
  """The decoder flow with everything in the bucket: a Hugging Face base (config.json, safetensors,
  tokenizer.json) read from gs://, the 2x model trained there and exported there in the same layout."""
  from scalenet_jax import convert
  from scalenet_jax.data import text
  from scalenet_jax.models import llama, registry
  from helpers import LM_CONFIG as CONFIG, LM_MICRO as MICRO, LM_RUN as RUN, LM_VOCAB as VOCAB, small_fortunes

  corpus = small_fortunes(tmp_path / "corpus", 300)
  env, root = bucket
  model = registry.create_model("llama_micro", {"vocab_size": VOCAB})
  params = model.init_params(seed=0)
  llama.save_hf("gs://bucket/hf_base", params, model)
  text.save_tokenizer(text.train_tokenizer(text.fortunes(str(corpus)), VOCAB), "gs://bucket/hf_base")

  args = ["--workdir", "gs://bucket/lm", *MICRO, *RUN, f"--config.data.root={corpus}", "--config.steps=2"]
  run = run_main(args, env, tmp_path, config=f"{CONFIG}:base=gs://bucket/hf_base")
  assert run.returncode == 0, run.stderr[-3000:]
  out = root / "lm" / "export"
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
  assert llama.read_hf_config(str(out)).num_hidden_layers == 2 * model.config.num_hidden_layers
  # Read back from the bucket: the unrolled 2x layers, with the adapters under `.adjust.` keys.
  sd = convert.load_state_dict("gs://bucket/lm/export")
  assert sd["model.embed_tokens.weight"].shape == params["embed"]["embedding"].shape
  assert (
      any(".adjust." in k for k in sd)
      and f"model.layers.{2 * model.config.num_hidden_layers - 1}.mlp.up_proj.weight" in sd
  )
  assert not any(p.name.startswith("gs:") for p in tmp_path.iterdir()), list(tmp_path.iterdir())
