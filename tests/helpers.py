"""What several test modules share (test modules never import each other): config files, the real
Fashion-MNIST, subprocess environments, small fixture writers, the MCEA toy objective and the CLI settings
of the decoder and paper-config tests."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
from pathlib import Path

import pytest

from scalenet_jax import config_lib
from scalenet_jax.data import sources

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


# ----------------------------------------------------------------------------------------------
# Config files and data
# ----------------------------------------------------------------------------------------------
def config_file(name: str, arg=None):
  """`get_config(arg)` of `configs/<name>`."""
  return config_lib.load_config_file(CONFIGS / name, arg)


def config_module(name: str):
  return config_lib.load_config_module(CONFIGS / name)


def nas_tiny_config(**overrides):
  """A supernet run on the 'tiny' search space (batch 8, a 4-step schedule with no warmup, 5 minival images
  per class; `overrides`: `supernet_config` fields). One config for every NAS test that trains: a step's
  learning-rate schedule is compiled into its program, so tests with equal settings share the compiled
  supernet programs through the suite's persistent cache."""
  from scalenet_jax.nas import train_supernet as ts  # pylint: disable=g-import-not-at-top

  c = ts.supernet_config("tiny", **{"batch_size": 8, "log_every": 2, "ckpt_every": 2, **overrides})
  c.data.minival_per_class = 5
  c.optim.warmup_steps = 0  # lr > 0 from step 0
  c.optim.total_steps = 4  # fixed, so that a 2-step run and a 4-step run share the schedule
  return c


def perturbed_supernet(params):
  """Supernet parameters with every BN/SE bias raised by 0.3: with nonzero biases a wrong slice or a masked
  channel that leaks shows in the logits (at init they are zero and would hide both)."""
  import jax  # pylint: disable=g-import-not-at-top

  return jax.tree_util.tree_map_with_path(lambda k, v: v + 0.3 if "bias" in jax.tree_util.keystr(k) else v, params)


def fashion_mnist_dir() -> str:
  """The real Fashion-MNIST (`sources.fashion_mnist_dir()`); a test that needs it fails without it."""
  root = sources.fashion_mnist_dir()
  if not os.path.isdir(root):
    pytest.fail(
        f"Fashion-MNIST not found in {root}: apt-get install dataset-fashion-mnist (bash run.sh test does), "
        f"or set ${sources.FASHION_MNIST_ENV}"
    )
  return root


def suite_cache() -> str:
  """The suite's persistent XLA compilation cache (tests/conftest.py). Every test compiles into it, in
  process and in subprocesses: a program compiled once on a machine (keys include the XLA flags and the
  device count) is read back by later tests and later suite runs instead of being compiled again."""
  return os.environ["JAX_COMPILATION_CACHE_DIR"]


def env_for(devices: int = 1) -> dict:
  """The environment of a `python -m scalenet_jax.main` subprocess: CPU, `devices` host devices, quick
  compiles and the suite's persistent compilation cache (`suite_cache`).

  Quick compiles: these runs take a few steps, so compiling is most of their time. XLA's backend
  optimisation level 0 compiles in about half the time of the suite's level 1 (a fwd+bwd at 224 px, batch
  2: DeiT-B 2.7 vs 4.9 s, Swin-T 5.7 vs 11.0 s), and its steps are 20-60 % slower (2.1 vs 1.8 s, 0.9 vs
  0.6 s; 2-core AMD EPYC, under load)."""
  env = dict(os.environ)
  flags = ["--xla_backend_optimization_level=0"]
  if devices > 1:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  env.update(
      XLA_FLAGS=" ".join(flags),
      JAX_PLATFORMS="cpu",
      JAX_COMPILATION_CACHE_DIR=suite_cache(),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      PYTHONPATH=str(REPO),
  )
  return env


def snapshot(root: Path) -> dict:
  """{relative path: 'dir' | sha256 of the file} of everything under root."""
  out = {}
  for p in sorted(root.rglob("*")):
    rel = str(p.relative_to(root))
    out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
  return out


def write_fortune_db(directory, name, records):
  """A strfile database as Debian ships it: records separated by `%` lines, plus a `.dat` index."""
  (directory / name).write_bytes(("\n%\n".join(records) + "\n%\n").encode())
  (directory / f"{name}.dat").write_bytes(b"\0" * 24)


def fortunes_dir() -> str:
  """Debian's fortunes (the LM corpus); a test that needs it fails without it, as `fashion_mnist_dir`."""
  from scalenet_jax.data import text  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(text.FORTUNES_DIR):
    pytest.fail(f"fortunes not found in {text.FORTUNES_DIR}: apt-get install fortunes (bash run.sh test does)")
  return text.FORTUNES_DIR


def small_fortunes(directory, n: int):
  """`directory` (created) holding the first `n` of Debian's fortunes as one strfile database: a small real
  corpus for the LM tests (fails the test when the fortunes package is not installed)."""
  from scalenet_jax.data import text  # pylint: disable=g-import-not-at-top

  fortunes_dir()
  directory.mkdir(parents=True)
  write_fortune_db(directory, "small", text.load_corpus("fortunes")[:n])
  return directory


def load_hf(path, model=None):
  """(model, params) of a Hugging Face Llama directory as a run loads `init_from`
  (`builder.load_pretrained`); without `model`, the model its `config.json` describes."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  from scalenet_jax import builder  # pylint: disable=g-import-not-at-top
  from scalenet_jax.models import llama  # pylint: disable=g-import-not-at-top

  model = model or llama.Llama(config=llama.read_hf_config(str(path)))
  config = ml_collections.ConfigDict(dict(init_from=str(path), init_new_head=False, seed=0))
  return model, builder.load_pretrained(config, model)


# ----------------------------------------------------------------------------------------------
# A local GCS emulator
# ----------------------------------------------------------------------------------------------
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _with_generation_header(download):
  """The emulator's media download, plus the `x-goog-generation` header real GCS sends (tensorstore's
  OCDBT driver, behind Orbax, reads object generations from it)."""

  def handler(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
    except Exception:  # noqa: BLE001 - not found: the handler already answered 404
      pass

  return handler


@contextlib.contextmanager
def gcs_emulator():
  """(endpoint env, epath root) of an in-memory GCS emulator (gcp-storage-emulator) with bucket `bucket`;
  the endpoint env is also set in `os.environ` while it runs (subprocesses get it from the first item).
  gcsfs and the emulator are in the test extra (setup.py)."""
  import gcsfs  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from gcp_storage_emulator import server as emulator  # pylint: disable=g-import-not-at-top

  for _, handlers in emulator.HANDLERS:
    for method, fn in list(handlers.items()):
      if getattr(fn, "__name__", "") == "download":
        handlers[method] = _with_generation_header(fn)
  port = _free_port()
  server = emulator.create_server("localhost", port, in_memory=True, default_bucket="bucket")
  server.start()
  env = {"STORAGE_EMULATOR_HOST": f"http://localhost:{port}", "TENSORSTORE_GCS_HTTP_URL": f"http://localhost:{port}"}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  logging.getLogger("gcsfs").setLevel(logging.ERROR)  # "no default credentials": expected, anonymous here
  from etils import epath  # pylint: disable=g-import-not-at-top

  try:
    yield env, epath.Path("gs://bucket")
  finally:
    server.stop()
    for k, v in old.items():
      os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


# ----------------------------------------------------------------------------------------------
# Command lines of the decoder (llama_fortunes_2x) and paper-config (TFDS mock) tests
# ----------------------------------------------------------------------------------------------
LM_CONFIG = str(CONFIGS / "llama_fortunes_2x.py")
LM_VOCAB = 320
LM_MICRO = ["--config.model.name=llama_micro", f"--config.model.vocab_size={LM_VOCAB}"]
LM_RUN = ["--config.data.seq_len=32", "--config.batch_size=8", "--config.eval_batch_size=16", "--config.log_every=2"]
LM_RUN += ["--config.ckpt_every=2", "--config.xla_opt_level=0"]

# Shrink a paper-config run only: batch, steps, evaluation size (the mock's validation split), logging.
PAPER_RUN = ["--config.batch_size=2", "--config.eval_batch_size=2", "--config.log_every=1", "--config.ckpt_every=1"]
TIMM_NAME = {"vit": "vit_base_patch16_224", "swin": "swin_tiny_patch4_window7_224"}


def timm_checkpoint(timm, torch, directory: Path, name: str, **arch) -> Path:
  """A random-weight timm model of registry model `name` (+ `arch` overrides), as `model.safetensors`."""
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top

  from scalenet_jax.models import registry  # pylint: disable=g-import-not-at-top

  path = directory / f"{name}_{'_'.join(f'{k}{v}' for k, v in sorted(arch.items()))}" / "model.safetensors"
  if not path.exists():
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    kwargs = registry.arch_kwargs(name, **arch)
    model = timm.create_model(TIMM_NAME[registry.family_of(name)], pretrained=False, **kwargs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if "relative_position_index" not in k}, path)
  return path


def run_paper_session(spec, invocations: list[list[str]], session: Path):
  """The `python -m scalenet_jax.main` invocations one after the other in one process under the TFDS mock
  (tests/cli_session.py, keep going); their exit codes, stdouts, stderrs."""
  import cli_session  # pylint: disable=g-import-not-at-top
  import tfds_mock  # pylint: disable=g-import-not-at-top

  env = tfds_mock.env(spec, base=env_for())
  return cli_session.run(invocations, session, env, launcher=tfds_mock.command())


def check_user_run(spec, workdir: Path, outs: list[str]) -> dict:
  """What train, train further (= resume), eval and export must leave behind; returns the eval metrics."""
  import json  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top

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


# ----------------------------------------------------------------------------------------------
# A toy MCEA objective on the 'fmnist' space
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ToyProblem:
  """A separable accuracy on the 'fmnist' space with the base budget centred on `alpha`: 0.9 minus a
  penalty per depth / kernel differing from `alpha`, minus a weighted distance of S from `targets[j - 1]`
  at stage j (each term its own scale, so no ties). `self(pairs)` is a batched MCEA `evaluate`."""

  space: object
  alpha: object
  targets: tuple  # per stage j >= 1, the (d, w, r) the accuracy peaks at

  @classmethod
  def make(cls):
    from scalenet_jax.nas.space import Alpha, base_macs, get_space, path_macs  # pylint: disable=g-import-not-at-top

    alpha = Alpha((1, 2, 3, 1), ((5,), (7, 3), (5, 5, 7), (3,)))
    base = get_space("fmnist")
    space = dataclasses.replace(base, base_target=float(base_macs(alpha, base)))
    f0 = base_macs(alpha, space)
    # Peaks on the grid point closest to each stage's budget (feasible, so the toy has a reachable optimum).
    targets = tuple(
        min(space.scalings(j), key=lambda S, j=j: abs(path_macs(alpha, S, space) - 2**j * f0))
        for j in range(1, space.num_scaling_stages)
    )
    return cls(space, alpha, targets)

  def alpha_part(self, alpha) -> float:
    acc = 0.9
    for n, n_star in zip(alpha.depths, self.alpha.depths):
      acc -= 0.05 * abs(n - n_star)
    for ks, ks_star in zip(alpha.kernels, self.alpha.kernels):
      acc -= 0.01 * sum(1 for a, b in zip(ks, ks_star) if a != b)
    return acc

  def scaling_part(self, S) -> float:
    sp = self.space
    j = next(
        (j for j in range(1, sp.num_scaling_stages) if S.d in sp.mult_candidates[j] and S.r in sp.res_candidates[j]), 0
    )
    if not j:
      return 0.0
    t = self.targets[j - 1]
    return -(0.1 * abs(S.d - t.d) + 0.07 * abs(S.w - t.w) + 0.001 * abs(S.r - t.r))

  def accuracy(self, alpha, S) -> float:
    return self.alpha_part(alpha) + self.scaling_part(S)

  def __call__(self, pairs):
    return [self.accuracy(a, S) for a, S in pairs]
