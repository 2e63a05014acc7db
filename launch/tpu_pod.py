"""Run the trainer on every worker of a Cloud TPU VM slice (created if missing).

    python launch/tpu_pod.py --name scalenet-v4 --zone us-central2-b --accelerator-type v4-32 \
        --config scalenet_jax/configs/grow_vit_b.py --workdir gs://my-bucket/runs/grow_b -- --config.seed=1
    ... --dry-run        print the exact commands instead of running them

Steps (each a gcloud/tar command, printed by --dry-run):
  0. on this host, before any cloud command (--dry-run too): compile the run's train step for the slice
     (`python -m scalenet_jax.main --mode compile --topology <accelerator type>` with the run's
     `--config.*` overrides; needs libtpu here: `pip install scalenet_jax[tpu]`) and stop when it does
     not fit the chips' memory; `--no-compile-check` skips it;
  1. create the TPU VM slice unless `describe` finds it;
  2. ship the code: tar this working tree and scp it to all workers (default), or `--git-url/--git-ref`
     to clone on the workers; then `pip install -e . jax[tpu]` there;
  3. `ssh --worker=all` the trainer with SCALENET_DISTRIBUTED=auto, so every worker calls
     `jax.distributed.initialize()` and JAX finds its peers from the TPU metadata.
A pod needs a workdir all workers can reach: use gs://. `--detach` keeps training after ssh returns
(output in ~/<remote_dir>/train.log on each worker).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys

import common

REMOTE_ARCHIVE = "scalenet_jax_code.tgz"
TAR_EXCLUDES = (".git", ".venv", "__pycache__", ".pytest_cache", "workdir*", "runs", "*.egg-info")


def jax_pin() -> str:
  """The jax version setup.py pins, so the TPU workers run what was tested."""
  match = re.search(r'"jax==([^"]+)"', (common.REPO / "setup.py").read_text())
  if not match:
    raise ValueError(f"no jax==<version> pin found in {common.REPO / 'setup.py'}")
  return match.group(1)


def build(args: argparse.Namespace, passthrough: list[str]) -> dict[str, list[list[str]] | list[str]]:
  """The commands of each step; `exists` and `create` form one `describe || create` step."""
  where = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]

  def ssh_all(remote: str) -> list[str]:
    return tpu + ["ssh", args.name, *where, "--worker=all", f"--command={remote}"]

  steps: dict = {
      "exists": tpu + ["describe", args.name, *where],
      "create": tpu
      + ["create", args.name, *where, f"--accelerator-type={args.accelerator_type}", f"--version={args.version}"]
      + (["--spot"] if args.spot else []),
  }
  d = shlex.quote(args.remote_dir)
  if args.git_url:
    url, ref = shlex.quote(args.git_url), shlex.quote(args.git_ref)
    fetch = (
        f"(test -d {d}/.git || git clone --quiet {url} {d}) && git -C {d} fetch --quiet origin {ref} "
        f"&& git -C {d} checkout --quiet --force FETCH_HEAD"
    )
    steps["ship"] = []
  else:
    local_archive = f"/tmp/{args.name}-{REMOTE_ARCHIVE}"
    steps["ship"] = [
        ["tar", "-czf", local_archive, *[f"--exclude={e}" for e in TAR_EXCLUDES], "-C", str(common.REPO), "."],
        tpu + ["scp", local_archive, f"{args.name}:{REMOTE_ARCHIVE}", *where, "--worker=all"],
    ]
    fetch = f"rm -rf {d} && mkdir -p {d} && tar -xzf {REMOTE_ARCHIVE} -C {d}"
  py = shlex.quote(args.python)
  steps["ship"].append(
      ssh_all(f"{fetch} && cd {d} && {py} -m pip install --quiet -e . {shlex.quote(f'jax[tpu]=={jax_pin()}')}")
  )

  trainer = [args.python, "-m", common.TRAINER_MODULE, *common.trainer_args(args, passthrough)]
  train = " ".join(shlex.quote(a) for a in trainer)
  if args.detach:  # setsid + no stdin: the job survives the ssh session ending
    train = f"setsid nohup {train} > train.log 2>&1 < /dev/null &"
  steps["train"] = ssh_all(f"cd {d} && SCALENET_DISTRIBUTED=auto {train}")
  return steps


def compile_check(args: argparse.Namespace, passthrough: list[str]) -> list[str]:
  """The local `--mode compile` command for the slice: the run's config and its `--config.*` overrides."""
  overrides = [a for a in common.trainer_args(args, passthrough) if a.startswith("--config.")]
  return [sys.executable, "-m", common.TRAINER_MODULE, "--config", args.config, "--mode", "compile"] + [
      "--topology",
      args.accelerator_type,
      *overrides,
  ]


def main(argv: list[str]) -> int:
  own, passthrough = common.split_passthrough(argv)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--name", required=True, help="TPU VM name")
  parser.add_argument("--zone", required=True)
  parser.add_argument(
      "--accelerator-type",
      "--accelerator_type",
      dest="accelerator_type",
      required=True,
      help="e.g. v4-32, v5p-64 (used only when the slice is created)",
  )
  parser.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM software version (create only)")
  parser.add_argument("--project", default=None)
  parser.add_argument("--spot", action="store_true", help="create a spot (preemptible) slice")
  parser.add_argument(
      "--git-url", "--git_url", dest="git_url", help="clone this on the workers instead of " "copying the local tree"
  )
  parser.add_argument("--git-ref", "--git_ref", dest="git_ref", default="main", help="branch, tag or commit")
  parser.add_argument(
      "--remote-dir",
      "--remote_dir",
      dest="remote_dir",
      default="scalenet_jax",
      help="code directory on the workers, relative to the home directory",
  )
  parser.add_argument("--python", default="python3", help="python on the workers")
  parser.add_argument("--detach", action="store_true", help="keep training after ssh returns")
  parser.add_argument(
      "--compile-check",
      "--compile_check",
      dest="compile_check",
      action=argparse.BooleanOptionalAction,
      default=True,
      help="compile the step for the slice on this host first and refuse a config that does not fit (step 0)",
  )
  common.add_trainer_flags(parser)
  args = parser.parse_args(own)
  steps = build(args, passthrough)
  if args.compile_check:
    check = compile_check(args, passthrough)
    print(f"compile check: {common.shell_line(check)}", file=sys.stderr, flush=True)
    code = subprocess.run(check, cwd=common.REPO).returncode
    if code:
      print(f"compile check failed (exit {code}): no cloud command was run", file=sys.stderr)
      return code

  if args.dry_run:
    print(f"{common.shell_line(steps['exists'])} >/dev/null 2>&1 || {common.shell_line(steps['create'])}")
  else:
    found = subprocess.run(steps["exists"], capture_output=True).returncode == 0
    print(f"TPU VM {args.name}: {'found' if found else 'not found, creating it'}", file=sys.stderr)
    if not found:
      common.run(steps["create"], dry_run=False)
  for cmd in steps["ship"]:
    common.run(cmd, args.dry_run)
  return common.run(steps["train"], args.dry_run, check=False)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
