"""Device mesh, state shardings (replicated or FSDP by rule) and global batches from per-host data.

The mesh has two axes, ('data', 'model'). The batch is split over 'data'. Parameters (and every state leaf
of the same shape: optimizer moments, EMA, accumulation buffers) are either replicated or FSDP-sharded:
the largest axis divisible by the 'data' size is split over 'data'; leaves smaller than `min_size`
elements stay replicated, since gathering tiny arrays costs more than it saves. The rule only looks at
shapes, so it needs no knowledge of the model, and a param and its Adam moments always get the same
sharding. Choosing between the two modes is a config switch (`mode`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from scalenet_jax.errors import ConfigError

DATA, MODEL = "data", "model"
MODEL_KWARGS = "model_kwargs"  # batch entry whose arrays are replicated, not split over 'data'
MODES = ("replicate", "fsdp")


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
  """Mesh with axes ('data', 'model') over `devices` (default: all global devices).

  Axis types are Auto: shardings are given explicitly at jit boundaries and XLA propagates them inside
  (models need no sharding-in-types annotations).

  Args:
    data: size of the 'data' axis; -1 takes all devices not used by 'model'.
    model: size of the 'model' axis.
    devices: the devices to lay out (default: all global devices).

  Returns:
    The `Mesh` of shape (data, model).

  Raises:
    ConfigError: the axis sizes do not match the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  if model < 1 or len(devices) % model:
    raise ConfigError(f"model axis size {model} does not divide the {len(devices)} devices")
  if data == -1:
    data = len(devices) // model
  if data * model != len(devices):
    raise ConfigError(f"mesh data={data} x model={model} != {len(devices)} devices")
  return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(AxisType.Auto,) * 2, devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated sharding on `mesh`."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', replicated over 'model'."""
  return NamedSharding(mesh, P(DATA))


def fsdp_spec(shape, data_size: int, min_size: int) -> P:
  """FSDP rule for one leaf: split the largest axis divisible by `data_size` (first one on ties).

  Args:
    shape: the leaf's shape.
    data_size: size of the mesh's 'data' axis.
    min_size: leaves with fewer elements stay replicated.

  Returns:
    The `PartitionSpec`: `P()` (replicated) or 'data' on the chosen axis.
  """
  if data_size == 1 or math.prod(shape) < min_size:
    return P()
  candidates = [(dim, -i) for i, dim in enumerate(shape) if dim % data_size == 0]
  if not candidates:
    return P()
  axis = -max(candidates)[1]
  return P(*([None] * axis + [DATA]))


def param_shardings(abstract_tree, mesh: Mesh, mode: str = "replicate", min_size: int = 2**14):
  """NamedSharding per leaf of `abstract_tree`.

  Args:
    abstract_tree: pytree of anything with `.shape` (params or a whole train state).
    mesh: the device mesh.
    mode: `'replicate'` (every leaf replicated) or `'fsdp'` (`fsdp_spec` per leaf).
    min_size: FSDP leaves smaller than this stay replicated.

  Returns:
    A pytree of `NamedSharding`s like `abstract_tree`.

  Raises:
    ConfigError: an unknown mode.
  """
  if mode not in MODES:
    raise ConfigError(f"param sharding mode must be one of {MODES}, got {mode!r}")
  data_size = mesh.shape[DATA]

  def one(x):
    spec = fsdp_spec(x.shape, data_size, min_size) if mode == "fsdp" else P()
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map(one, abstract_tree)


def batch_shardings(batch: Mapping[str, Any], mesh: Mesh):
  """Sharding pytree for a batch dict: top-level arrays on P('data'), `model_kwargs` replicated.

  Args:
    batch: the step batch, a dict of arrays (and a `model_kwargs` dict of arrays).
    mesh: the device mesh.

  Returns:
    A dict of `NamedSharding` pytrees like `batch`.

  Raises:
    ValueError: `batch` is not a dict.
  """
  if not isinstance(batch, Mapping):
    raise ValueError(f"batch must be a dict of arrays, got {type(batch).__name__}")
  out = {}
  for key, value in batch.items():
    sharding = replicated(mesh) if key == MODEL_KWARGS else batch_sharding(mesh)
    out[key] = jax.tree_util.tree_map(lambda _: sharding, value)
  return out


def local_batch_slice(mesh: Mesh, global_batch_size: int) -> slice:
  """Rows of the global batch that this process must load (contiguous for meshes from `make_mesh`).

  Args:
    mesh: the device mesh.
    global_batch_size: rows of the global batch.

  Returns:
    The slice of this process's rows.

  Raises:
    ValueError: the rows are not contiguous on this mesh.
  """
  index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
  starts = sorted({idx[0].indices(global_batch_size)[:2] for idx in index_map.values()})
  lo, hi = starts[0][0], starts[-1][1]
  if sum(stop - start for start, stop in starts) != hi - lo:
    raise ValueError(f"this process's batch rows are not contiguous on the mesh: {starts}")
  return slice(lo, hi)


def make_global_batch(local_batch: Mapping[str, Any], mesh: Mesh):
  """Global jax.Arrays from this process's numpy slice of the batch.

  Args:
    local_batch: this process's rows (consecutive slices in process order, `local_batch_slice`) of the
      data-split entries, and the *same full* arrays under `model_kwargs` on every process (e.g. a NAS
      path sampled from a step-seeded host RNG).
    mesh: the device mesh.

  Returns:
    The batch dict of global `jax.Array`s, sharded as `batch_shardings`.
  """
  shardings = batch_shardings(local_batch, mesh)
  return jax.tree_util.tree_map(
      lambda s, x: jax.make_array_from_process_local_data(s, np.asarray(x)), shardings, dict(local_batch)
  )
