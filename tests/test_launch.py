"""Launchers (dry-run command lines), the distributed env contract, and a real 2-process CPU job."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scalenet_jax.train import distributed as dist

REPO = Path(__file__).resolve().parents[1]
TRICKY = '--config.name=it\'s a "b" $HOME'  # survives every shell it crosses only if quoted right


def launcher(name: str, *args, timeout=60) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, str(REPO / "launch" / name), *map(str, args)],
      capture_output=True,
      text=True,
      timeout=timeout,
      cwd=REPO,
  )


def dry_run(name: str, *args) -> str:
  result = launcher(name, "--dry-run", *args)
  assert result.returncode == 0, result.stderr
  return result.stdout


# ---------------------------------------------------------------------------------------------------------
# Environment contract (pure parsing, no jax.distributed)
# ---------------------------------------------------------------------------------------------------------
def test_single_process_environments_do_nothing():
  assert dist.parse_env({}) is None
  assert dist.parse_env({"SCALENET_DISTRIBUTED": "off", "SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) is None
  assert dist.parse_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "n1"}) is None
  env = {"SCALENET_COORDINATOR": "h:1", "SCALENET_NUM_PROCESSES": "1", "SCALENET_PROCESS_ID": "0"}
  assert dist.parse_env(env) is None
  assert dist.maybe_initialize({}) is None


def test_explicit_env():
  env = {
      "SCALENET_COORDINATOR": "10.0.0.1:1234",
      "SCALENET_NUM_PROCESSES": "4",
      "SCALENET_PROCESS_ID": "3",
      "SCALENET_LOCAL_DEVICE_IDS": "0,1",
  }
  spec = dist.parse_env(env)
  assert spec == dist.DistributedSpec("env", "10.0.0.1:1234", 4, 3, (0, 1))
  assert spec.initialize_kwargs() == dict(
      coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3, local_device_ids=[0, 1]
  )


@pytest.mark.parametrize(
    "env,message",
    [
        ({"SCALENET_COORDINATOR": "h:1", "SCALENET_NUM_PROCESSES": "2"}, "SCALENET_PROCESS_ID missing"),
        ({"SCALENET_COORDINATOR": "h", "SCALENET_NUM_PROCESSES": "2", "SCALENET_PROCESS_ID": "0"}, "host:port"),
        (
            {"SCALENET_COORDINATOR": "h:1", "SCALENET_NUM_PROCESSES": "two", "SCALENET_PROCESS_ID": "0"},
            "SCALENET_NUM_PROCESSES='two' is not an integer",
        ),
        (
            {"SCALENET_COORDINATOR": "h:1", "SCALENET_NUM_PROCESSES": "2", "SCALENET_PROCESS_ID": "2"},
            r"process id 2 is outside \[0, 2\)",
        ),
        ({"SCALENET_DISTRIBUTED": "yes"}, "SCALENET_DISTRIBUTED='yes' is not one of"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "5"}, "SLURM_JOB_NODELIST"),
        (
            {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "n[1-"},
            "unbalanced brackets",
        ),
    ],
)
def test_bad_env_raises_clear_error(env, message):
  with pytest.raises(ValueError, match=message):
    dist.parse_env(env)


def test_auto_mode_lets_jax_discover_peers():
  assert dist.parse_env({"SCALENET_DISTRIBUTED": "auto"}).initialize_kwargs() == {}
  # Explicit variables win over auto.
  env = {
      "SCALENET_DISTRIBUTED": "auto",
      "SCALENET_COORDINATOR": "h:1",
      "SCALENET_NUM_PROCESSES": "2",
      "SCALENET_PROCESS_ID": "1",
  }
  assert dist.parse_env(env).source == "env"


SLURM = {
    "SLURM_JOB_ID": "123456",
    "SLURM_PROCID": "9",
    "SLURM_NTASKS": "16",
    "SLURM_STEP_NUM_TASKS": "16",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NODELIST": "gpu[007-008]",
    "SLURM_STEP_NODELIST": "gpu[007-008]",
    "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
}


def test_slurm_env():
  spec = dist.parse_env(SLURM)
  assert spec == dist.DistributedSpec("slurm", "gpu007:23456", 16, 9, (1,))
  # The step's task count and node list take precedence over the job's (srun inside a larger allocation).
  spec = dist.parse_env(
      {
          **SLURM,
          "SLURM_STEP_NUM_TASKS": "2",
          "SLURM_STEP_NODELIST": "b[2-3],a1",
          "SLURM_PROCID": "1",
          "SCALENET_COORDINATOR_PORT": "7777",
      }
  )
  assert (spec.coordinator_address, spec.num_processes) == ("b2:7777", 2)
  # Slurm bound one GPU per task: that GPU is the process's device 0, so no explicit ids.
  assert dist.parse_env({**SLURM, "CUDA_VISIBLE_DEVICES": "5"}).local_device_ids is None
  assert dist.parse_env({**SLURM, "SCALENET_LOCAL_DEVICE_IDS": "2,3"}).local_device_ids == (2, 3)


@pytest.mark.parametrize(
    "hostlist,hosts",
    [
        ("node1", ["node1"]),
        ("node1,node2", ["node1", "node2"]),
        ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
        ("a[8-10],b1", ["a8", "a9", "a10", "b1"]),
        ("r[1-2]n[08-09]", ["r1n08", "r1n09", "r2n08", "r2n09"]),
        ("x-[1,3]-ib", ["x-1-ib", "x-3-ib"]),
    ],
)
def test_expand_hostlist(hostlist, hosts):
  assert dist.expand_hostlist(hostlist) == hosts


# ---------------------------------------------------------------------------------------------------------
# Dry runs: the exact commands
# ---------------------------------------------------------------------------------------------------------
def test_local_dry_run():
  out = dry_run(
      "local.py",
      "--num_processes",
      3,
      "--port",
      4321,
      "--config",
      "cfg.py",
      "--workdir",
      "/tmp/w",
      "--extra=--config.seed=2",
      "--",
      TRICKY,
  ).splitlines()
  assert out[0] == f"cd {shlex.quote(str(REPO))}" and out[-1] == "wait"
  assert len(out) == 5
  for i, line in enumerate(out[1:4]):
    words = shlex.split(line)
    assert words[-1] == "&"
    env = dict(w.split("=", 1) for w in words if "=" in w and w.split("=", 1)[0].isupper())
    assert env["SCALENET_COORDINATOR"] == "localhost:4321"
    assert env["SCALENET_NUM_PROCESSES"] == "3" and env["SCALENET_PROCESS_ID"] == str(i)
    argv = words[len(env) : -1]
    assert argv == [
        sys.executable,
        "-u",
        "-m",
        "scalenet_jax.main",
        "--config",
        "cfg.py",
        "--workdir",
        "/tmp/w",
        "--config.seed=2",
        TRICKY,
    ]


def test_local_requires_config_for_trainer():
  result = launcher("local.py", "-n", 2, "--dry-run")
  assert result.returncode != 0 and "the trainer needs --config and --workdir" in result.stderr


def _remote_argv(line: str, name: str) -> list[str]:
  """The words of the --command a `gcloud ... ssh` line runs on the workers."""
  words = shlex.split(line)
  assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name] and "--worker=all" in words
  command = [w for w in words if w.startswith("--command=")]
  assert len(command) == 1
  return shlex.split(command[0][len("--command=") :])


def test_tpu_pod_dry_run_copy():
  out = dry_run(
      "tpu_pod.py",
      "--name",
      "pod1",
      "--zone",
      "us-central2-b",
      "--accelerator-type",
      "v4-32",
      "--no-compile-check",
      "--config",
      "cfg.py",
      "--workdir",
      "gs://bucket/run 1",
      "--",
      "--config.seed=3",
      TRICKY,
  )
  lines = out.splitlines()
  assert lines[0] == (
      "gcloud compute tpus tpu-vm describe pod1 --zone=us-central2-b >/dev/null 2>&1 || "
      "gcloud compute tpus tpu-vm create pod1 --zone=us-central2-b --accelerator-type=v4-32 "
      "--version=tpu-ubuntu2204-base"
  )
  tar = shlex.split(lines[1])
  assert tar[:3] == ["tar", "-czf", "/tmp/pod1-scalenet_jax_code.tgz"] and tar[-3:] == ["-C", str(REPO), "."]
  assert "--exclude=.git" in tar and "--exclude=.venv" in tar
  assert shlex.split(lines[2]) == [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "scp",
      "/tmp/pod1-scalenet_jax_code.tgz",
      "pod1:scalenet_jax_code.tgz",
      "--zone=us-central2-b",
      "--worker=all",
  ]
  install = _remote_argv(lines[3], "pod1")
  jax_pin = re.search(r'"jax==([^"]+)"', (REPO / "setup.py").read_text()).group(1)
  assert install[:10] == ["rm", "-rf", "scalenet_jax", "&&", "mkdir", "-p", "scalenet_jax", "&&", "tar", "-xzf"]
  assert install[-8:] == ["python3", "-m", "pip", "install", "--quiet", "-e", ".", f"jax[tpu]=={jax_pin}"]
  train = _remote_argv(lines[4], "pod1")
  assert train == [
      "cd",
      "scalenet_jax",
      "&&",
      "SCALENET_DISTRIBUTED=auto",
      "python3",
      "-m",
      "scalenet_jax.main",
      "--config",
      "cfg.py",
      "--workdir",
      "gs://bucket/run 1",
      "--config.seed=3",
      TRICKY,
  ]
  assert len(lines) == 5


def test_tpu_pod_dry_run_git_and_detach():
  lines = dry_run(
      "tpu_pod.py",
      "--name",
      "p",
      "--zone",
      "z",
      "--accelerator-type",
      "v5p-64",
      "--project",
      "prj",
      "--spot",
      "--git-url",
      "https://example.com/r.git",
      "--git-ref",
      "v1",
      "--detach",
      "--no-compile-check",
      "--config",
      "c.py",
      "--workdir",
      "gs://b/r",
  ).splitlines()
  assert lines[0].endswith("--project=prj --accelerator-type=v5p-64 --version=tpu-ubuntu2204-base --spot")
  assert len(lines) == 3  # no tar/scp when cloning
  clone = _remote_argv(lines[1], "p")
  assert "https://example.com/r.git" in clone and "v1" in clone and "--project=prj" in lines[1]
  train = _remote_argv(lines[2], "p")
  assert train[3:6] == ["SCALENET_DISTRIBUTED=auto", "setsid", "nohup"]
  assert train[-8:] == ["--workdir", "gs://b/r", ">", "train.log", "2>&1", "<", "/dev/null", "&"]


def test_slurm_dry_run():
  out = dry_run(
      "slurm.py",
      "--nodes",
      2,
      "--gpus_per_node",
      4,
      "--partition",
      "gpu",
      "--time",
      "2:00:00",
      "--setup",
      "source .venv/bin/activate",
      "--config",
      "cfg.py",
      "--workdir",
      "/shared/w",
      "--",
      TRICKY,
  )
  lines = out.splitlines()
  assert lines[0] == "sbatch <<'SCALENET_SBATCH_EOF'" and lines[-1] == "SCALENET_SBATCH_EOF"
  script = lines[1:-1]
  assert script[0] == "#!/bin/bash"
  for directive in (
      "--nodes=2",
      "--ntasks-per-node=4",
      "--gpus-per-node=4",
      "--partition=gpu",
      "--time=2:00:00",
      "--output=/shared/w/slurm/%x-%j.out",
  ):
    assert f"#SBATCH {directive}" in script
  assert not any(l.startswith("#SBATCH --account") for l in script)
  assert script.index("source .venv/bin/activate") < len(script) - 1
  assert shlex.split(script[-1]) == [
      "srun",
      "--nodes=2",
      "--ntasks-per-node=4",
      "--kill-on-bad-exit=1",
      "python",
      "-u",
      "-m",
      "scalenet_jax.main",
      "--config",
      "cfg.py",
      "--workdir",
      "/shared/w",
      TRICKY,
  ]


def test_slurm_script_is_valid_bash():
  out = dry_run("slurm.py", "--config", "c.py", "--workdir", "/w", "--", TRICKY)
  script = "\n".join(out.splitlines()[1:-1])
  assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


# ---------------------------------------------------------------------------------------------------------
# Real multi-process runs on localhost CPU
# ---------------------------------------------------------------------------------------------------------
CHECK = """
import sys
from scalenet_jax.train.distributed import maybe_initialize
spec = maybe_initialize()  # before any other JAX use
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
pid = jax.process_index()
assert spec.source == "env" and spec.process_id == pid and spec.num_processes == 2, spec
assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
mesh = jax.make_mesh((4,), ("data",))
local = np.arange(4, dtype=np.float32).reshape(2, 2) + 4 * pid  # rows [4p, 4p+1], [4p+2, 4p+3]
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
assert x.shape == (4, 2)
total = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, P()))(x)
assert float(total) == sum(range(8)), float(total)
print("DIST_OK", pid, sys.argv[1:] == ["--config", "c.py", "--workdir", "/tmp/w", %r])
""" % TRICKY


@pytest.mark.e2e
def test_two_processes_join_and_reduce(tmp_path):
  script = tmp_path / "check.py"
  script.write_text(textwrap.dedent(CHECK))
  start = time.time()
  result = launcher(
      "local.py",
      "-n",
      2,
      "--host_devices",
      2,
      "--script",
      script,
      "--config",
      "c.py",
      "--workdir",
      "/tmp/w",
      "--",
      TRICKY,
      timeout=120,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "[p0] DIST_OK 0 True" in result.stdout and "[p1] DIST_OK 1 True" in result.stdout, result.stdout
  assert time.time() - start < 60


@pytest.mark.e2e
def test_local_launcher_stops_peers_when_one_fails(tmp_path):
  script = tmp_path / "fail.py"
  script.write_text(
      "import os, sys, time\n" "if os.environ['SCALENET_PROCESS_ID'] == '1':\n    sys.exit(3)\n" "time.sleep(120)\n"
  )
  start = time.time()
  result = launcher("local.py", "-n", 2, "--script", script, timeout=60)
  assert result.returncode == 3
  assert time.time() - start < 30  # process 0 was stopped, not waited for
