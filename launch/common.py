"""Pieces shared by the launchers: the trainer command line, argument splitting, dry-run printing.

Every launcher runs the same entry point on every process:

    python -m scalenet_jax.main --config CONFIG --workdir WORKDIR [overrides ...]

and tells `scalenet_jax.train.distributed.maybe_initialize` how to reach its peers through environment
variables (see that module for the contract). Overrides go after `--` (or one per `--extra`) and are passed
through verbatim, quoted for each shell they cross.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINER_MODULE = "scalenet_jax.main"


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
  """(launcher args, args after the first `--`)."""
  if "--" in argv:
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]
  return argv, []


def add_trainer_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
  parser.add_argument("--config", required=required, help="config file, relative to the repo root")
  parser.add_argument("--workdir", required=required, help="checkpoints and logs (gs:// allowed on TPU)")
  parser.add_argument(
      "--extra",
      action="append",
      default=[],
      metavar="ARG",
      help="one extra trainer argument, e.g. --extra=--config.batch_size=256 (repeatable); "
      "arguments after `--` are appended too",
  )
  parser.add_argument(
      "--dry-run",
      "--dry_run",
      dest="dry_run",
      action="store_true",
      help="print the exact commands instead of running them",
  )


def trainer_args(args: argparse.Namespace, passthrough: list[str]) -> list[str]:
  """`--config C --workdir W` (when given) followed by the extra arguments, unquoted."""
  out = []
  if args.config:
    out += ["--config", args.config]
  if args.workdir:
    out += ["--workdir", args.workdir]
  return out + list(args.extra) + list(passthrough)


def shell_line(argv: list[str], env: dict[str, str] | None = None) -> str:
  """One POSIX shell line that runs `argv` with `env` added, each word quoted exactly once."""
  assignments = [f"{k}={shlex.quote(str(v))}" for k, v in (env or {}).items()]
  return " ".join(assignments + [shlex.quote(a) for a in argv])


def run(argv: list[str], dry_run: bool, check: bool = True) -> int:
  """Prints (dry run) or runs one command; a failing step stops the launcher with its exit code."""
  if dry_run:
    print(shell_line(argv), flush=True)
    return 0
  print(f"+ {shell_line(argv)}", file=sys.stderr, flush=True)
  rc = subprocess.run(argv, check=False).returncode
  if check and rc:
    sys.exit(f"command failed with exit code {rc}: {shell_line(argv)}")
  return rc
