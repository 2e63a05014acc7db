"""Run logging: `metrics.jsonl` and TensorBoard events in the workdir, and progress lines on stdout.

Both files go through `scalenet_jax.paths` (etils.epath), so a gs:// workdir works: `metrics.jsonl` is
rewritten atomically at every log step (a run resumed after preemption keeps the lines written before),
and TensorBoard events are written to a local staging directory and mirrored to `<workdir>/tb` when the
workdir is not local (tensorboardX writes local files only).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time

import jax
from etils import epath

from scalenet_jax import paths
from scalenet_jax.jax_utils import print0


def read(workdir) -> list[dict]:
  """Every line of `<workdir>/metrics.jsonl` (empty when the run has not logged yet)."""
  f = paths.path(workdir) / "metrics.jsonl"
  return [json.loads(l) for l in f.read_text().splitlines()] if f.exists() else []


def final(workdir, steps: int) -> dict | None:
  """What a run finished at `steps` logged, so that it can be reported without restoring it.

  Args:
    workdir: the run's directory.
    steps: the run's total steps.

  Returns:
    Its last train metrics and its final evaluation (`top1` ...) merged into one dict, or None while the
    run is unfinished (no evaluation logged at `steps`).
  """
  at = [l for l in read(workdir) if l["step"] == steps]
  if not any("top1" in l for l in at):
    return None
  return {k: v for l in at for k, v in l.items()}


class Writer:
  """`metrics.jsonl` + TensorBoard event files in `workdir` (process 0 only).

  An existing `metrics.jsonl` is kept and appended to (a resumed run). On a remote workdir (gs://) the
  event files are written to a local staging dir and copied to `<workdir>/tb` after every write.

  Args:
    workdir: the run's directory (local or gs://).
  """

  def __init__(self, workdir):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    workdir = paths.path(workdir)
    self.jsonl = workdir / "metrics.jsonl"
    self.lines = self.jsonl.read_text().splitlines() if self.jsonl.exists() else []
    self.tb_dir = workdir / "tb"
    self.staging = None if paths.is_local(workdir) else tempfile.mkdtemp(prefix="scalenet_tb_")
    self.tb = SummaryWriter(str(self.tb_dir) if self.staging is None else self.staging)

  def write(self, step: int, metrics: dict) -> None:
    """Appends `{"step": step, **metrics}` to `metrics.jsonl` and logs the numeric (non-bool) values."""
    if not self.active:
      return
    self.lines.append(json.dumps({"step": int(step), **metrics}))
    paths.write_text(self.jsonl, "\n".join(self.lines) + "\n")
    for k, v in metrics.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        self.tb.add_scalar(k, v, int(step))
    self.tb.flush()
    self._mirror()

  def _mirror(self) -> None:
    if self.staging is None:
      return
    self.tb_dir.mkdir(parents=True, exist_ok=True)
    for f in epath.Path(self.staging).iterdir():
      (self.tb_dir / f.name).write_bytes(f.read_bytes())

  def close(self) -> None:
    """Closes the TensorBoard writer (and copies its last events to a remote workdir)."""
    if self.active:
      self.tb.close()
      self._mirror()
      if self.staging is not None:
        shutil.rmtree(self.staging, ignore_errors=True)


class Progress:
  """One line per log step with loss, accuracy, rate and ETA (plain text: works in logs and CI).

  Args:
    total: the run's total steps.
    tag: prefix of every line (e.g. the task's label).
  """

  def __init__(self, total: int, tag: str = ""):
    self.total, self.tag, self.t0 = total, f"[{tag}] " if tag else "", time.perf_counter()

  def __call__(self, done: int, m: dict) -> None:
    """Prints the line of step `done` from the logged metrics `m` (`loss`, `accuracy`, optional `lr`)."""
    rate = m.get("steps_per_sec") or 0.0
    eta = (self.total - done) / rate if rate else float("nan")
    print0(
        f"{self.tag}step {done:>6}/{self.total} loss {m['loss']:.4f} acc {m['accuracy']:.3f} "
        f"lr {m.get('lr', 0):.2e} {rate:6.2f} it/s eta {eta:6.0f}s elapsed {time.perf_counter() - self.t0:6.0f}s"
    )
