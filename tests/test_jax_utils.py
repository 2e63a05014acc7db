"""The CPU runtime configuration (`jax_utils.configure_cpu`): flag merging, one-time effect, the allocator."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scalenet_jax import jax_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program whose temporary buffer (~275 MiB) is far above glibc's largest mmap threshold (32 MiB): with
# 4 KiB pages every call maps and page-faults it afresh (~70k faults).
_FAULTS = r"""
import json, os, resource, sys
from scalenet_jax import jax_utils
info = jax_utils.configure_cpu(huge_pages=sys.argv[1] == "1")
import jax, jax.numpy as jnp
x = jnp.ones((6000, 6000))
f = jax.jit(lambda x: x * 0.5 + jnp.tanh(x[::-1] * x.T).sum(0), donate_argnums=0)
for _ in range(3):  # compile and warm up
  x = f(x).block_until_ready()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  x = f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 4
print(json.dumps(dict(info=info, faults_per_call=faults, tunables=os.environ.get("GLIBC_TUNABLES", ""))))
"""


def test_merge_keeps_given_flags_and_adds_the_missing_defaults():
  merged = jax_utils._merge_xla_flags("--xla_a=1 --xla_b=2", {"xla_b": "9", "xla_c": "3"})
  assert merged.split() == ["--xla_a=1", "--xla_b=2", "--xla_c=3"]
  assert jax_utils._merge_xla_flags("", {}) == ""


def test_configure_cpu_after_jax_started_changes_nothing(monkeypatch):
  import jax

  jax.devices()  # the backend is up in this test process
  monkeypatch.setattr(jax_utils, "_CONFIGURED", None)  # as if no earlier call had decided
  monkeypatch.setenv("XLA_FLAGS", "--xla_a=1")
  out = jax_utils.configure_cpu(xla_flags={"xla_cpu_enable_fast_math": "false"}, huge_pages=False)
  assert os.environ["XLA_FLAGS"] == "--xla_a=1" and out["xla_flags"] == "--xla_a=1"
  assert out["late"] is True and jax_utils._CONFIGURED is None  # a late call decides nothing for later ones


def test_the_first_call_decides(monkeypatch):
  first = {"xla_flags": "--xla_first=1", "allocator": "glibc default", "late": False}
  monkeypatch.setattr(jax_utils, "_CONFIGURED", first)
  monkeypatch.setenv("XLA_FLAGS", "--xla_a=1")
  assert jax_utils.configure_cpu(xla_flags={"xla_b": "2"}, huge_pages=False) is first
  assert os.environ["XLA_FLAGS"] == "--xla_a=1"


@pytest.mark.skipif(jax_utils._thp_mode() != "madvise", reason="the re-run only applies to THP mode 'madvise'")
def test_huge_pages_rerun_cuts_per_call_page_faults():
  env = dict(os.environ, PYTHONPATH=ROOT)
  for key in ("XLA_FLAGS", "GLIBC_TUNABLES", "SCALENET_RUNTIME_REEXEC"):
    env.pop(key, None)
  out = {}
  for huge in ("0", "1"):
    r = subprocess.run(
        [sys.executable, "-c", _FAULTS, huge], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out[huge] = json.loads(r.stdout.strip().splitlines()[-1])
  assert jax_utils.HUGE_PAGES_TUNABLE in out["1"]["tunables"] and not out["0"]["tunables"]  # it re-ran itself
  assert out["1"]["info"]["allocator"].startswith("transparent huge pages"), out
  assert out["0"]["faults_per_call"] > 30_000, out  # 4 KiB pages: the whole buffer, every call
  # How many 2 MiB pages the kernel can hand out depends on the host's fragmentation: ~30x fewer faults
  # on a quiet 2-core work machine, 9.4x on a CI machine (73,842 -> 7,852). Without the tunable taking
  # effect the ratio is ~1, so a 4x cut still tells the two apart.
  assert out["1"]["faults_per_call"] < 0.25 * out["0"]["faults_per_call"], out


@pytest.fixture
def no_compilation_cache():
  """The process without the suite's persistent cache (tests/conftest.py), as a user's is by default."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top

  before = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
  compilation_cache.set_cache_dir(None)
  compilation_cache.reset_cache()
  yield before[1]
  compilation_cache.set_cache_dir(before[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
  compilation_cache.reset_cache()


def test_shared_compiled_programs_loads_what_an_earlier_jit_compiled(tmp_path, no_compilation_cache):
  """A fresh `jax.jit` of the same program inside the block is served from the cache directory (no new
  entry, same result); another program adds one; on exit the process has no cache again, and a cache the
  user configured is used as it is."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  x = jnp.arange(12.0).reshape(3, 4)
  program = lambda: jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0))  # a new jit (and trace) per call
  kept = lambda: sorted(p.name for p in cache.iterdir() if "jit__lambda" in p.name)
  cache = tmp_path / "cache"
  with jax_utils.shared_compiled_programs(str(cache), min_compile_secs=0):
    first = program()(x)
    (entry,) = kept()
  with jax_utils.shared_compiled_programs(str(cache), min_compile_secs=0):
    np.testing.assert_array_equal(program()(x), first)
    assert kept() == [entry]
    jax.jit(lambda x: x * 3)(x)
    assert len(kept()) == 2
  assert jax.config.jax_compilation_cache_dir is None
  assert jax.config.jax_persistent_cache_min_compile_time_secs == no_compilation_cache  # restored
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users"))
  with jax_utils.shared_compiled_programs(str(tmp_path / "ours")):
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "users")
  assert not (tmp_path / "ours").exists()


def test_cpu_model_names_the_generation(tmp_path):
  """Two generations of a VM's "AMD EPYC" are told apart by /proc/cpuinfo's family and model numbers."""
  info = tmp_path / "cpuinfo"
  block = "processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
  info.write_text(block.format(0) + "\n" + block.format(1).replace("17", "1"))
  assert jax_utils.cpu_model(str(info)) == "AMD EPYC (family 25, model 17)"
  info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n")
  assert jax_utils.cpu_model(str(info)) == "Intel(R) Xeon(R) CPU @ 2.20GHz"
