"""Subprocess entry point for the multi-device / multi-process train-step tests (prints one JSON line).

  python tests/mp_worker.py layouts 8           # every mp_common.CONFIGS run on its 8-device mesh
  python tests/mp_worker.py layouts 1           # the same runs on 1 device (the reference)
  python tests/mp_worker.py multiprocess 1      # mp_common.MULTIPROCESS on 1 device (the reference)
  python tests/mp_worker.py process PID PORT    # one of 2 jax.distributed processes, 2 CPU devices each

Device counts must be fixed before jax initialises its backend, hence one process per layout. The tests
set --xla_backend_optimization_level=0 for these processes: it only shortens compilation.
"""

import json
import os
import sys

from mp_launch import MARK


def _single_host(what: str, ndev: int):
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ndev}"
  import jax
  import mp_common
  from scalenet_jax.train import sharding

  assert jax.device_count() == ndev, jax.devices()
  if what == "layouts":
    out = {
        name: mp_common.run(sharding.make_mesh(*(shape if ndev > 1 else (1, 1))), **kwargs)
        for name, shape, kwargs in mp_common.CONFIGS
    }
  elif what == "multiprocess":
    out = mp_common.run(sharding.make_mesh(), **mp_common.MULTIPROCESS)
  else:
    raise SystemExit(f"unknown mode {what!r}")
  print(MARK + json.dumps(out), flush=True)


def process(pid: int, port: int):
  import jax

  jax.config.update("jax_num_cpu_devices", 2)
  # CPU cross-process collectives (gradient all-reduce, FSDP all-gathers) need an implementation; gloo
  # is the default in jax 0.10 but is set explicitly so an older default ('none') fails loudly instead.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid, initialization_timeout=60
  )
  import mp_common
  from scalenet_jax.train import sharding

  assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.devices())
  mesh = sharding.make_mesh(data=4)

  def global_batch(b):
    rows = sharding.local_batch_slice(mesh, len(b["images"]))
    local = {k: (v if k == sharding.MODEL_KWARGS else v[rows]) for k, v in b.items()}
    return sharding.make_global_batch(local, mesh)

  result = mp_common.run(mesh, global_batch_fn=global_batch, **mp_common.MULTIPROCESS)
  rows = sharding.local_batch_slice(mesh, 16)
  result["rows"] = [rows.start, rows.stop]
  print(MARK + json.dumps(result), flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  if sys.argv[1] == "process":
    process(int(sys.argv[2]), int(sys.argv[3]))
  else:
    _single_host(sys.argv[1], int(sys.argv[2]))
