"""Multi-process start-up: decide from the environment whether and how to call `jax.distributed.initialize`.

The contract between the launchers in `launch/` and the trainer (checked in this order):

  SCALENET_DISTRIBUTED=off     never initialize (debugging one process of a job by hand).
  SCALENET_COORDINATOR=host:port, SCALENET_NUM_PROCESSES=N, SCALENET_PROCESS_ID=i
                               explicit set-up (launch/local.py); all three or none.
  SCALENET_DISTRIBUTED=auto    `jax.distributed.initialize()` with no arguments: JAX discovers the peers
                               itself (Cloud TPU pod slices; launch/tpu_pod.py sets this).
  SLURM_PROCID + SLURM_STEP_NUM_TASKS (or SLURM_NTASKS) > 1
                               one process per task under `srun` (launch/slurm.py): coordinator = first host
                               of SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST), port SCALENET_COORDINATOR_PORT
                               or 20000 + SLURM_JOB_ID % 10000 (so jobs sharing a node do not collide).
  otherwise                    single process: nothing to do.

SCALENET_LOCAL_DEVICE_IDS="0,1" picks the accelerators a process drives. Under SLURM it defaults to
[SLURM_LOCALID] (one process per GPU, every task sees all GPUs of its node), unless CUDA_VISIBLE_DEVICES
already names a single device (Slurm bound one GPU per task, which is then device 0 of that process).

`parse_env` is pure (tested on dicts); `maybe_initialize` must run before anything touches a JAX backend.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping

DISTRIBUTED = "SCALENET_DISTRIBUTED"
COORDINATOR = "SCALENET_COORDINATOR"
NUM_PROCESSES = "SCALENET_NUM_PROCESSES"
PROCESS_ID = "SCALENET_PROCESS_ID"
COORDINATOR_PORT = "SCALENET_COORDINATOR_PORT"
LOCAL_DEVICE_IDS = "SCALENET_LOCAL_DEVICE_IDS"


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
  """Arguments for `jax.distributed.initialize`; None fields are left for JAX to discover.

  Attributes:
    source: `"env"`, `"slurm"` or `"auto"`: which rule of the module docstring matched.
    coordinator_address: `host:port` of process 0.
    num_processes: processes of the job.
    process_id: this process's index.
    local_device_ids: the accelerators this process drives.
  """

  source: str  # "env", "slurm" or "auto": which rule matched
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None

  def initialize_kwargs(self) -> dict:
    """Keyword arguments of `jax.distributed.initialize`: the fields that are set."""
    kwargs = dict(
        coordinator_address=self.coordinator_address, num_processes=self.num_processes, process_id=self.process_id
    )
    if self.local_device_ids is not None:
      kwargs["local_device_ids"] = list(self.local_device_ids)
    return {k: v for k, v in kwargs.items() if v is not None}


def parse_env(env: Mapping[str, str]) -> DistributedSpec | None:
  """The multi-process set-up the environment asks for (the rules of the module docstring, in order).

  Args:
    env: environment variables (e.g. `os.environ`).

  Returns:
    The `DistributedSpec`, or None for a single process.

  Raises:
    ValueError: an inconsistent or malformed set-up (an unknown `SCALENET_DISTRIBUTED`, only some of the
      explicit variables, a non-integer, a bad address or hostlist, a process id out of range).
  """
  mode = env.get(DISTRIBUTED, "").strip().lower()
  if mode not in ("", "auto", "off"):
    raise ValueError(f"{DISTRIBUTED}={env[DISTRIBUTED]!r} is not one of 'auto', 'off' (or unset)")
  if mode == "off":
    return None
  local_ids = _device_ids(env[LOCAL_DEVICE_IDS], LOCAL_DEVICE_IDS) if env.get(LOCAL_DEVICE_IDS) else None

  explicit = [k for k in (COORDINATOR, NUM_PROCESSES, PROCESS_ID) if env.get(k)]
  if explicit:
    missing = [k for k in (COORDINATOR, NUM_PROCESSES, PROCESS_ID) if not env.get(k)]
    if missing:
      raise ValueError(f"{', '.join(explicit)} set but {', '.join(missing)} missing: set all three or none")
    num, pid = _int(env, NUM_PROCESSES), _int(env, PROCESS_ID)
    return _spec("env", _check_address(env[COORDINATOR]), num, pid, local_ids)

  if mode == "auto":
    return DistributedSpec("auto", local_device_ids=local_ids)

  if "SLURM_PROCID" in env:
    num_key = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    num = _int(env, num_key) if num_key in env else 1
    if num <= 1:
      return None
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not nodelist:
      raise ValueError("SLURM_PROCID is set but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is")
    port = _int(env, COORDINATOR_PORT) if env.get(COORDINATOR_PORT) else 20000 + _int(env, "SLURM_JOB_ID") % 10000
    if local_ids is None and "SLURM_LOCALID" in env:
      visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
      local_ids = None if len(visible) == 1 else (_int(env, "SLURM_LOCALID"),)
    return _spec("slurm", f"{expand_hostlist(nodelist)[0]}:{port}", num, _int(env, "SLURM_PROCID"), local_ids)
  return None


def maybe_initialize(env: Mapping[str, str] | None = None) -> DistributedSpec | None:
  """Calls `jax.distributed.initialize` if the environment describes a multi-process job.

  Safe to call twice. Must run before anything touches a JAX backend.

  Args:
    env: environment variables; None = `os.environ`.

  Returns:
    The `DistributedSpec` used, or None for a single process.

  Raises:
    ValueError: as in `parse_env`.
  """
  spec = parse_env(os.environ if env is None else env)
  if spec is None:
    return None
  import jax  # pylint: disable=g-import-not-at-top  # keep parse_env importable without touching JAX

  if not jax.distributed.is_initialized():
    jax.distributed.initialize(**spec.initialize_kwargs())
  return spec


def expand_hostlist(hostlist: str) -> list[str]:
  """Expands a Slurm hostlist, e.g. 'gpu[01-02,05],login1' -> ['gpu01', 'gpu02', 'gpu05', 'login1'].

  Same result as `scontrol show hostnames`, without needing Slurm installed; ranges keep zero padding and
  several bracket groups in one name expand as a product ('r[1-2]n[1-2]' -> r1n1 r1n2 r2n1 r2n2).

  Args:
    hostlist: a Slurm hostlist expression.

  Returns:
    The host names in order.

  Raises:
    ValueError: unbalanced brackets, a bad range or an empty list.
  """
  if hostlist.count("[") != hostlist.count("]"):
    raise ValueError(f"unbalanced brackets in Slurm hostlist {hostlist!r}")
  hosts = [h for item in _split_top_level(hostlist) for h in _expand_item(item, hostlist)]
  if not hosts:
    raise ValueError(f"empty Slurm hostlist {hostlist!r}")
  return hosts


def _split_top_level(hostlist: str) -> list[str]:
  """Splits on the commas that are not inside [...]."""
  items, depth, current = [], 0, ""
  for ch in hostlist:
    depth += {"[": 1, "]": -1}.get(ch, 0)
    if ch == "," and depth == 0:
      items.append(current)
      current = ""
    else:
      current += ch
  return [i.strip() for i in items + [current] if i.strip()]


def _expand_item(item: str, hostlist: str) -> list[str]:
  match = re.search(r"\[([^\[\]]*)\]", item)
  if not match:
    return [item]
  prefix, rest = item[: match.start()], item[match.end() :]
  tails = _expand_item(rest, hostlist)
  out = []
  for part in match.group(1).split(","):
    lo, _, hi = part.strip().partition("-")
    if not lo.isdigit() or (hi and not hi.isdigit()):
      raise ValueError(f"bad range {part!r} in Slurm hostlist {hostlist!r}")
    for n in range(int(lo), int(hi or lo) + 1):
      out += [f"{prefix}{n:0{len(lo)}d}{tail}" for tail in tails]
  return out


def _spec(source, address, num, pid, local_ids) -> DistributedSpec | None:
  if not 0 <= pid < num:
    raise ValueError(f"process id {pid} is outside [0, {num}) ({source} environment)")
  if num == 1:
    return None
  return DistributedSpec(source, address, num, pid, local_ids)


def _int(env: Mapping[str, str], key: str) -> int:
  try:
    return int(env[key])
  except KeyError:
    raise ValueError(f"environment variable {key} is required here but not set") from None
  except ValueError:
    raise ValueError(f"environment variable {key}={env[key]!r} is not an integer") from None


def _device_ids(text: str, key: str) -> tuple[int, ...]:
  try:
    return tuple(int(t) for t in text.split(",") if t.strip())
  except ValueError:
    raise ValueError(f"{key}={text!r} is not a comma-separated list of integers") from None


def _check_address(address: str) -> str:
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"{COORDINATOR}={address!r} is not of the form host:port")
  return address
