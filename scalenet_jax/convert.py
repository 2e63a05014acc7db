"""Foreign state dicts (timm, Hugging Face `transformers`) <-> Flax params, for every model of the registry.

Each model family keeps its key table next to the model (`model.key_table()`, see `models/common.py`):
every foreign key with the Flax param it maps to (path, index along the stacked axis, layout transform).
Import and export are both driven by it, so they cannot drift apart. Loading is strict: a missing,
unexpected or mis-shaped key raises a `ValueError` naming the key. `.pth` files are read with
`torch.load(weights_only=True)`, which refuses pickles that would execute code; `.safetensors` files
(one file, or Hugging Face shards listed by `model.safetensors.index.json`) by a reader of their own
that also handles bfloat16.

Expanded (ScaleNet) models export *unrolled*: block `l` is written with the weights of its core
layer `mapping[l]`; their adjustment modules are written under extra `...adjust.*` keys that
plain timm ignores only if loaded with `strict=False` (they are not part of a timm model).
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Optional

import jax
import ml_dtypes
import numpy as np

from scalenet_jax.errors import CheckpointError, MissingInputError

# How a timm tensor is laid out relative to its Flax twin.
_TO_FLAX = {
    "linear": lambda a: a.T,  # (out, in) -> (in, out)
    "conv": lambda a: a.transpose(2, 3, 1, 0),  # (O, I, kh, kw) -> (kh, kw, I, O)
    "same": lambda a: a,
}
_TO_TIMM = {
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(3, 2, 0, 1),
    "same": lambda a: a,
}


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def timm_to_flax(state_dict: dict[str, Any], model, ignore: tuple[str, ...] = ()) -> dict:
  """Strictly convert a timm (or Hugging Face) state dict to Flax params of `model` (plain, unexpanded).

  `ignore`: keys that may be missing from `state_dict` (their Flax params keep a fresh
  init of zeros; typically the classifier head when fine-tuning to a new number of classes).
  """
  if not model.is_plain:
    raise ValueError("checkpoint weights load into a plain model; expand it afterwards with scalenet_jax.grow")
  sd = {k: np.asarray(_to_numpy(v)) for k, v in state_dict.items()}
  abstract = model.abstract_params()
  params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
  table = model.key_table()
  known = {e.key for e in table}
  unexpected = sorted(k for k in sd if k not in known and not _non_persistent(k))
  if unexpected:
    raise CheckpointError(
        f"unexpected key in checkpoint: {unexpected[0]!r} "
        f"({len(unexpected)} unexpected keys; is this a {model.family} checkpoint of this size?)"
    )
  for e in sorted(table, key=lambda e: e.optional):  # aliases last: they are checked against the param
    if e.key not in sd:
      if e.key in ignore or e.optional:
        continue
      raise CheckpointError(f"missing key in checkpoint: {e.key!r}")
    value = _TO_FLAX[e.kind](sd[e.key])
    leaf = _get(params, e.path)
    target = leaf if e.index is None else leaf[e.index]
    if value.shape != target.shape:
      want = _TO_TIMM[e.kind](np.zeros(target.shape)).shape
      raise CheckpointError(
          f"shape mismatch for key {e.key!r}: checkpoint has {tuple(sd[e.key].shape)}," f" model expects {tuple(want)}"
      )
    if e.optional:
      if not np.array_equal(target, value):
        raise ValueError(f"key {e.key!r} is tied to another key of the model but holds different values")
      continue
    target[...] = value
  return params


def flax_to_timm(params, model, aliases: bool = True) -> dict[str, np.ndarray]:
  """Flax params of `model` -> timm/HF-named numpy state dict (expanded models export unrolled).

  `aliases=False` leaves out tied second names (what `save_pretrained` writes; `state_dict()` has them).
  """
  out = {}
  for e in model.key_table():
    if e.optional and not aliases:
      continue
    leaf = np.asarray(_get(params, e.path))
    out[e.key] = np.ascontiguousarray(_TO_TIMM[e.kind](leaf if e.index is None else leaf[e.index]))
  return out


def _non_persistent(key):
  # Buffers some timm / transformers versions store: recomputed here from the geometry / config.
  return key.endswith(("relative_position_index", "attn_mask", "rotary_emb.inv_freq"))


def _to_numpy(v):
  if hasattr(v, "detach"):  # torch tensor
    return v.detach().cpu().float().numpy() if v.dtype.is_floating_point else v.cpu().numpy()
  return v


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Read a checkpoint: `.safetensors`, `.pth`/`.pt`/`.bin` (weights only, no code), a Hugging Face
  shard index (`*.safetensors.index.json`), or a directory holding `model.safetensors` or the index."""
  if not os.path.exists(path):
    raise MissingInputError(f"checkpoint not found: {path}")
  if os.path.isdir(path):
    return load_state_dict(_checkpoint_in_dir(path))
  if path.endswith(".safetensors.index.json"):
    return _load_sharded(path)
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  if path.endswith((".pth", ".pt", ".bin")):
    import pickle

    import torch  # optional dependency: pip install -e .[torch]

    try:
      with warnings.catch_warnings():  # e.g. pickle-protocol notices: the error below is the message
        warnings.simplefilter("ignore")
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
      raise CheckpointError(
          f"refusing to load {path}: it is not a weights-only checkpoint "
          f"(unpickling would run arbitrary code): {str(e).splitlines()[0]}"
      ) from None
    for wrapper in ("model", "state_dict", "model_ema"):
      if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
        sd = sd[wrapper]
        break
    return {k: _to_numpy(v) for k, v in sd.items()}
  raise CheckpointError(f"unsupported checkpoint format {path!r}: use .safetensors, .pth, .pt or .bin")


def save_safetensors(path: str, state_dict: dict[str, np.ndarray]):
  from safetensors.numpy import save_file

  save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path)


# ----------------------------------------------------------------------------------------------------
# safetensors files: one file, or Hugging Face shards with an index
# ----------------------------------------------------------------------------------------------------
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# The format's dtype names. bfloat16 is why this reader exists: `safetensors.numpy` has no numpy bf16.
_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a `.safetensors` file as a read-only numpy view of the memory-mapped file.

  Layout: a little-endian u64 header size, a JSON header `{name: {dtype, shape, data_offsets}}`,
  then the raw little-endian data (offsets relative to its start)."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    if size < 8 or not 0 < n <= size - 8:
      raise ValueError(f"not a safetensors file (bad header size): {path}")
    header = json.loads(f.read(n))
  data = np.memmap(path, np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
  out = {}
  for key, info in header.items():
    if key == "__metadata__":
      continue
    if info["dtype"] not in _ST_DTYPES:
      raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
    begin, end = info["data_offsets"]
    dtype = np.dtype(_ST_DTYPES[info["dtype"]]).newbyteorder("<")
    if end > len(data) or (end - begin) != dtype.itemsize * int(np.prod(info["shape"])):
      raise ValueError(f"{path}: tensor {key!r} does not fit the file (truncated?)")
    out[key] = np.frombuffer(data[begin:end], dtype).reshape(info["shape"])
  return out


def _checkpoint_in_dir(directory: str) -> str:
  for name in (SINGLE_FILE, INDEX_FILE):
    if os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name)
  raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in checkpoint directory {directory}")


def _load_sharded(index_path: str) -> dict[str, np.ndarray]:
  """The shards a Hugging Face index lists (`weight_map`: key -> shard file), checked against it."""
  with open(index_path) as f:
    weight_map = json.load(f).get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise ValueError(f"{index_path} has no weight_map")
  root = os.path.dirname(index_path)
  shards = sorted(set(weight_map.values()))
  missing = [s for s in shards if not os.path.isfile(os.path.join(root, s))]
  if missing:
    raise FileNotFoundError(
        f"shard {missing[0]} listed in {index_path} not found ({len(missing)} of {len(shards)} missing)"
    )
  out = {}
  for shard in shards:
    tensors = read_safetensors(os.path.join(root, shard))
    want = {k for k, s in weight_map.items() if s == shard}
    if want - set(tensors):
      raise ValueError(f"shard {shard} lacks key {sorted(want - set(tensors))[0]!r} that {index_path} puts there")
    out.update((k, tensors[k]) for k in sorted(want))
  return out


def save_state_dict_dir(directory: str, state_dict: dict[str, np.ndarray], max_shard_bytes: Optional[int] = None):
  """Write `state_dict` the way Hugging Face lays out a checkpoint: `model.safetensors`, or shards
  `model-0000i-of-0000n.safetensors` of at most `max_shard_bytes` each (a larger tensor gets its own)
  with `model.safetensors.index.json`."""
  os.makedirs(directory, exist_ok=True)
  if max_shard_bytes is None:
    save_safetensors(os.path.join(directory, SINGLE_FILE), state_dict)
    return
  groups, size = [[]], 0
  for k, v in state_dict.items():
    if groups[-1] and size + v.nbytes > max_shard_bytes:
      groups.append([])
      size = 0
    groups[-1].append(k)
    size += v.nbytes
  weight_map = {}
  for i, keys in enumerate(groups):
    name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
    save_safetensors(os.path.join(directory, name), {k: state_dict[k] for k in keys})
    weight_map.update((k, name) for k in keys)
  total = int(sum(v.nbytes for v in state_dict.values()))
  with open(os.path.join(directory, INDEX_FILE), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


# The same strict converters serve Hugging Face checkpoints (the model's key table names HF keys).
hf_to_flax = timm_to_flax
flax_to_hf = flax_to_timm
