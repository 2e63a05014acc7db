"""Runs several `python -m scalenet_jax.main ...` invocations in one process, as a user would run them one
after the other: each one is parsed and dispatched by `scalenet_jax.main.cli()` itself (absl flags,
ml_collections config file + overrides, the pipelines, the exit code), with the flags reset in between.

One process instead of one per invocation saves the ~7 s of imports each would pay (and lets later
invocations reuse programs the earlier ones compiled), which is what lets the suite run every config's
train / resume / eval / export on 2 cores.

    python tests/tfds_mock.py tests/cli_session.py SESSION.json [--keep-going]
    SESSION.json: [["--config", "configs/x.py", "--workdir", "W", ...], ...]

Each invocation's stdout/stderr go to `<SESSION>.<i>.out` / `.err` and its exit code to
`<SESSION>.codes.json`; the session stops at the first nonzero exit, unless `--keep-going` (a session of
invocations that are each expected to fail, with one import of the package for all of them).

Tests call `run(...)`, which writes the session file, runs it and reads the results back.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import traceback
from pathlib import Path


def run(
    invocations: list[list[str]],
    session: Path,
    env: dict,
    launcher: list[str] | None = None,
    keep_going: bool = True,
    timeout: float = 1800,
    cwd: Path | None = None,
) -> tuple[list[int], list[str], list[str]]:
  """Runs the invocations as one session in a subprocess (`launcher`: the interpreter command, e.g.
  `tfds_mock.command()` to run it under the TFDS mock; `cwd`: its working directory, default the
  repository); returns their exit codes, stdouts and stderrs (as many as ran: all with `keep_going`)."""
  import subprocess

  session.write_text(json.dumps(invocations))
  cmd = [*(launcher or [sys.executable]), str(Path(__file__).resolve()), str(session)]
  cmd += ["--keep-going"] if keep_going else []
  repo = Path(__file__).resolve().parents[1]
  proc = subprocess.run(cmd, cwd=cwd or repo, env=env, capture_output=True, text=True, timeout=timeout, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  codes = json.loads(Path(f"{session}.codes.json").read_text())
  assert len(codes) == len(invocations) or not keep_going
  read = lambda ext: [Path(f"{session}.{i}.{ext}").read_text() for i in range(len(codes))]
  return codes, read("out"), read("err")


def main(session: str, keep_going: bool = False) -> int:
  from absl import flags

  from scalenet_jax import main as cli_main

  invocations = json.loads(Path(session).read_text())
  codes, seconds = [], []
  for i, args in enumerate(invocations):
    t0 = time.perf_counter()
    out, err = Path(f"{session}.{i}.out"), Path(f"{session}.{i}.err")
    # Every invocation starts from the defaults, as a new process would. ml_collections defines one flag
    # per config field (`--config.<field>`) while parsing a config file: remove them before the next.
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
      delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    sys.argv = ["scalenet_jax.main", *args]
    with out.open("w") as o, err.open("w") as e, contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
      try:
        cli_main.cli()
        code = 0
      except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
      except BaseException:  # noqa: BLE001 - a bug: its traceback goes where the process's would
        traceback.print_exc()
        code = 1
    codes.append(code)
    seconds.append(round(time.perf_counter() - t0, 1))
    Path(f"{session}.codes.json").write_text(json.dumps(codes))
    Path(f"{session}.seconds.json").write_text(json.dumps(seconds))
    if code and not keep_going:
      break
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1], "--keep-going" in sys.argv[2:]))
