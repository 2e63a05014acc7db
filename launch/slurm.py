"""Submit a multi-node GPU job to Slurm: one trainer process per GPU, joined through the Slurm environment.

    python launch/slurm.py --nodes 2 --gpus_per_node 8 --partition gpu --time 24:00:00 \
        --config scalenet_jax/configs/search.py --workdir /shared/runs/search -- --config.seed=1
    ... --dry-run        print the sbatch command (script included) instead of submitting it

The generated batch script `cd`s to this repo (it must be on a filesystem the nodes share), runs the
`--setup` lines (module loads, venv activation), then `srun --ntasks-per-node=GPUS python -m
scalenet_jax.main ...`. Each task sees all GPUs of its node and drives GPU SLURM_LOCALID; the coordinator
is the first node of the step (see scalenet_jax/train/distributed.py). The script goes to sbatch on stdin;
the job log is <log_dir>/<job_name>-<jobid>.out.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import common

HEREDOC_END = "SCALENET_SBATCH_EOF"


def batch_script(args: argparse.Namespace, passthrough: list[str]) -> str:
  directives = {
      "job-name": args.job_name,
      "nodes": args.nodes,
      "ntasks-per-node": args.gpus_per_node,
      "gpus-per-node": args.gpus_per_node,
      "cpus-per-task": args.cpus_per_task,
      "time": args.time,
      "partition": args.partition,
      "account": args.account,
      "output": f"{args.log_dir}/%x-%j.out",
  }
  lines = ["#!/bin/bash"]
  lines += [f"#SBATCH --{k}={v}" for k, v in directives.items() if v]
  lines += ["set -euo pipefail", f"cd {shlex.quote(str(common.REPO))}"]
  lines += list(args.setup)
  if args.port:
    lines.append(f"export SCALENET_COORDINATOR_PORT={args.port}")
  srun = [
      "srun",
      f"--nodes={args.nodes}",
      f"--ntasks-per-node={args.gpus_per_node}",
      "--kill-on-bad-exit=1",
      args.python,
      "-u",
      "-m",
      common.TRAINER_MODULE,
      *common.trainer_args(args, passthrough),
  ]
  lines.append(common.shell_line(srun))
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
  own, passthrough = common.split_passthrough(argv)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--nodes", type=int, default=1)
  parser.add_argument("--gpus_per_node", "--gpus-per-node", dest="gpus_per_node", type=int, default=8)
  parser.add_argument("--cpus_per_task", "--cpus-per-task", dest="cpus_per_task", type=int, default=None)
  parser.add_argument("--time", default=None, help="wall-clock limit, e.g. 24:00:00")
  parser.add_argument("--partition", default=None)
  parser.add_argument("--account", default=None)
  parser.add_argument("--job_name", "--job-name", dest="job_name", default="scalenet")
  parser.add_argument(
      "--log_dir",
      "--log-dir",
      dest="log_dir",
      default=None,
      help="where Slurm writes the job log (default: <workdir>/slurm)",
  )
  parser.add_argument(
      "--setup",
      action="append",
      default=[],
      metavar="LINE",
      help="shell line run before srun, e.g. 'source .venv/bin/activate' (repeatable)",
  )
  parser.add_argument("--python", default="python", help="python on the compute nodes")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (default: from the job id)")
  common.add_trainer_flags(parser)
  args = parser.parse_args(own)
  if args.nodes < 1 or args.gpus_per_node < 1:
    parser.error("--nodes and --gpus_per_node must be >= 1")
  args.log_dir = args.log_dir or f"{args.workdir.rstrip('/')}/slurm"
  script = batch_script(args, passthrough)

  if args.dry_run:
    print(f"sbatch <<'{HEREDOC_END}'\n{script}{HEREDOC_END}")
    return 0
  Path(args.log_dir).mkdir(parents=True, exist_ok=True)  # Slurm does not create the log directory
  print("+ sbatch  # script on stdin:\n" + script, file=sys.stderr, flush=True)
  return subprocess.run(["sbatch"], input=script, text=True, check=False).returncode


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
