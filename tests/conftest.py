"""Shared test fixtures: torch/timm and random param trees.

Markers:
  timm  tests that need torch + timm (added automatically to every test using the `timm` fixture);
        deselect with `-m "not timm"`.
  e2e   end-to-end tests: a subprocess or an in-process run of an entry point (train / resume / eval /
        export, a NAS search, a benchmark script, a demo or study chunk), or a full-size model. They hold
        most of the suite's time; `-m "not e2e"` is the fast subset, which still runs every module's unit
        tests (a few minutes on 2 cores): `bash run.sh test -m "not e2e"`. Marked in each module
        (`pytestmark` or per test).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

# The suite is dominated by XLA compile time on 2 CPU cores. Level 1 of the backend optimisations
# compiles ~3x faster than the default with no slower steps at these sizes, and the persistent cache
# lets subprocess tests reuse programs compiled by earlier tests. Set before any test imports jax;
# subprocesses inherit both (tests that set their own XLA_FLAGS append to this one).
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1").strip()
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.environ.get("TMPDIR", "/tmp"), f"scalenet_jax_test_cache_{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
# The test extra installs libtpu (for `--mode compile`, tests/test_tpu_check.py): without this every jax
# process would probe for a TPU first (and take libtpu's one-process lock). Compile-only TPU topologies
# need no TPU backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_configure(config):
  config.addinivalue_line("markers", "timm: needs torch and timm (pip install -e .[torch])")
  config.addinivalue_line(
      "markers", "e2e: end-to-end run (subprocess, entry point, full-size model); the fast subset is -m 'not e2e'"
  )


def pytest_collection_modifyitems(config, items):
  for item in items:
    if "timm" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.timm)


@pytest.fixture(scope="session")
def timm():
  """The timm module (torch and timm are in the test extra: without them the test fails)."""
  import timm  # pylint: disable=g-import-not-at-top,redefined-outer-name
  import torch  # pylint: disable=g-import-not-at-top,redefined-outer-name
  # The CI box has 2 cores; more torch threads only fight JAX's thread pool.
  torch.set_num_threads(min(2, os.cpu_count() or 1))
  return timm


@pytest.fixture(scope="session")
def torch(timm):
  import torch

  return torch


@pytest.fixture(scope="session")
def transformers(torch):
  """The transformers module (in the test extra, as torch and timm)."""
  import transformers  # pylint: disable=g-import-not-at-top,redefined-outer-name

  return transformers


def random_params(abstract, seed: int = 0):
  """Random numpy params shaped like `abstract` (a tree of ShapeDtypeStructs), without compiling.

  Unlike a model's own init (zero biases, unit LayerNorms, zero adapter B), every leaf is random,
  so a swapped bias, a mis-copied LayerNorm or a wrongly indexed layer changes the output.
  """
  import jax

  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "scale":  # LayerNorm gain: around 1
      return (1.0 + 0.1 * rng.standard_normal(a.shape)).astype(a.dtype)
    return (0.02 * rng.standard_normal(a.shape)).astype(a.dtype)

  return jax.tree_util.tree_map_with_path(leaf, abstract)
