"""Start N trainer processes on this machine, joined by jax.distributed through a localhost coordinator.

For multi-process debugging on one box (CPU or several GPUs) and for the multi-process tests:

    python launch/local.py --num_processes 2 --config scalenet_jax/configs/quick.py --workdir /tmp/run \
        -- --config.batch_size=64
    python launch/local.py --num_processes 2 --host_devices 4 --script my_check.py   # any script

Process i gets SCALENET_COORDINATOR=localhost:PORT, SCALENET_NUM_PROCESSES=N, SCALENET_PROCESS_ID=i (see
scalenet_jax/train/distributed.py). Output lines are prefixed with [p<i>]. If one process fails, the others
are stopped (they would otherwise wait forever in a collective) and the launcher exits with its code.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import common


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def build(args: argparse.Namespace, passthrough: list[str]) -> list[tuple[dict[str, str], list[str]]]:
  """(added environment, argv) for every process."""
  program = [args.python] + (["-u", args.script] if args.script else ["-u", "-m", args.module])
  argv = program + common.trainer_args(args, passthrough)
  pythonpath = os.pathsep.join(p for p in (str(common.REPO), os.environ.get("PYTHONPATH", "")) if p)
  commands = []
  for i in range(args.num_processes):
    env = {
        "SCALENET_COORDINATOR": f"localhost:{args.port}",
        "SCALENET_NUM_PROCESSES": str(args.num_processes),
        "SCALENET_PROCESS_ID": str(i),
        "PYTHONPATH": pythonpath,
    }
    if args.host_devices:
      env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.host_devices}"
    commands.append((env, argv))
  return commands


def _pump(stream, prefix: str) -> None:
  for line in iter(stream.readline, ""):
    sys.stdout.write(f"{prefix} {line}")
    sys.stdout.flush()


def _interrupt(signum, frame):
  raise KeyboardInterrupt  # SIGTERM to the launcher (e.g. `timeout`) also stops the children


def launch(commands, grace_s: float = 5.0) -> int:
  signal.signal(signal.SIGTERM, _interrupt)
  procs, pumps = [], []
  for i, (env, argv) in enumerate(commands):
    p = subprocess.Popen(
        argv,
        env={**os.environ, **env},
        cwd=common.REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    procs.append(p)
    pumps.append(threading.Thread(target=_pump, args=(p.stdout, f"[p{i}]"), daemon=True))
    pumps[-1].start()
  rc = 0
  try:
    while True:
      codes = [p.poll() for p in procs]  # poll every process: each call updates its returncode
      failed = [c for c in codes if c]
      if failed or all(c is not None for c in codes):
        rc = failed[0] if failed else 0
        break
      time.sleep(0.05)
  except KeyboardInterrupt:
    rc = 130
  _stop(procs, grace_s)
  for t in pumps:
    t.join(timeout=2)
  return rc


def _stop(procs, grace_s: float) -> None:
  """SIGTERM the process groups still running, SIGKILL after `grace_s` seconds."""
  alive = [p for p in procs if p.poll() is None]
  for p in alive:
    _signal_group(p, signal.SIGTERM)
  deadline = time.time() + grace_s
  for p in alive:
    try:
      p.wait(timeout=max(0.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      _signal_group(p, signal.SIGKILL)
      p.wait()


def _signal_group(p: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(p.pid, sig)
  except ProcessLookupError:  # exited since it was polled
    pass


def main(argv: list[str]) -> int:
  own, passthrough = common.split_passthrough(argv)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", "-n", type=int, required=True)
  parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
  parser.add_argument(
      "--host_devices", type=int, default=0, help="simulate this many CPU devices per process (XLA_FLAGS)"
  )
  parser.add_argument("--python", default=sys.executable)
  what = parser.add_mutually_exclusive_group()
  what.add_argument("--module", default=common.TRAINER_MODULE, help="module to run with -m")
  what.add_argument("--script", help="run this script instead of the trainer module")
  common.add_trainer_flags(parser, required=False)
  args = parser.parse_args(own)
  if args.num_processes < 1:
    parser.error("--num_processes must be >= 1")
  if not args.script and args.module == common.TRAINER_MODULE and not (args.config and args.workdir):
    parser.error("the trainer needs --config and --workdir")
  args.port = args.port or free_port()
  commands = build(args, passthrough)
  if args.dry_run:
    print(f"cd {shlex.quote(str(common.REPO))}")
    for env, cmd in commands:
      print(common.shell_line(cmd, env) + " &")
    print("wait")
    return 0
  return launch(commands)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
