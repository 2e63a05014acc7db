"""The one path API for workdirs, exports and reports: `etils.epath`, so gs:// works like a local path.

Every read and write of a workdir goes through `epath.Path` (Orbax uses it too); the helpers here add
what runs need on top: JSON files, and atomic replacement of small files that are rewritten while a run
goes on (a preempted write never leaves a truncated `metrics.jsonl` or `mcea.json`): a temp file and a
rename on local disks; on object stores (gs://, s3://) an upload is already all-or-nothing.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

from etils import epath

PathLike = Any  # str | os.PathLike | epath.Path

# The checkout the package runs from (an editable install, as the README sets up): where `configs/`
# and the released bases in `pretrained/` live.
REPO_ROOT = epath.Path(__file__).resolve().parents[1]


def path(p: PathLike) -> epath.Path:
  """`p` as an `epath.Path`; a relative local path is made absolute (Orbax requires it)."""
  out = epath.Path(p)
  return out if not is_local(out) else out.absolute()


def is_local(p: PathLike) -> bool:
  return "://" not in str(p)


def write_bytes(p: PathLike, data: bytes) -> None:
  """Writes `data` to `p` atomically (see the module docstring)."""
  p = path(p)
  p.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(p):
    p.write_bytes(data)
    return
  tmp = p.parent / f".{p.name}.{uuid.uuid4().hex[:8]}.tmp"
  tmp.write_bytes(data)
  tmp.replace(p)


def write_text(p: PathLike, text: str) -> None:
  write_bytes(p, text.encode())


def write_json(p: PathLike, obj: Any, indent: int | None = 1) -> None:
  write_text(p, json.dumps(obj, indent=indent, default=float))


def read_json(p: PathLike) -> Any:
  return json.loads(path(p).read_text())


def pyplot():
  """`matplotlib.pyplot` on the Agg backend (figures are only written to files, no display needed): the
  one place that chooses the backend. matplotlib is imported here, on first use (slow to import)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def save_figure(fig, p: PathLike, dpi: int = 120) -> str:
  """A matplotlib figure as PNG at `p` (rendered in memory: matplotlib writes local files only)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  write_bytes(p, buf.getvalue())
  return str(p)
