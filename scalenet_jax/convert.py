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

import argparse
import warnings
from typing import Any, Optional

import jax
import numpy as np

from scalenet_jax import paths
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


def _unfold_to_concat(a):
  """Last axis (4C) from torch `nn.Unfold`'s 2x2 order (c, kh, kw: mmdet/mmseg's Swin patch merging) to the
  concat order of timm and the Swin release (x0..x3 = (kh, kw) = (0,0), (1,0), (0,1), (1,1): kw, kh, c)."""
  c = a.shape[-1] // 4
  return np.swapaxes(a.reshape(*a.shape[:-1], c, 2, 2), -1, -3).reshape(a.shape)


def _concat_to_unfold(a):
  c = a.shape[-1] // 4
  return np.swapaxes(a.reshape(*a.shape[:-1], 2, 2, c), -1, -3).reshape(a.shape)


# The patch-merging tensors of mmdet/mmseg's Swin: same weights, input channels in unfold order.
_TO_FLAX.update(unfold_linear=lambda a: _unfold_to_concat(a).T, unfold_norm=_unfold_to_concat)
_TO_TIMM.update(unfold_linear=lambda a: _concat_to_unfold(a.T), unfold_norm=_concat_to_unfold)


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def head_keys(model) -> tuple[str, ...]:
  """The checkpoint keys of the model's classifier head (Flax params under `head`)."""
  return tuple(e.key for e in model.key_table() if e.path[0] == "head")


def timm_to_flax(state_dict: dict[str, Any], model, *, new_head: bool = False, init=None) -> dict:
  """Strictly convert a timm (or Hugging Face) state dict to Flax params of `model` (plain, unexpanded).

  The state dict first goes through the family's `model.checkpoint_filter` (other layouts of the same
  weights, e.g. the original Swin release). `new_head=True` does not load the classifier head (fine-tuning
  to another number of classes): it keeps its values from `init` (a fresh init of `model`; default
  zeros), and the checkpoint's head may have any shape.
  """
  if not model.is_plain:
    raise ValueError("checkpoint weights load into a plain model; expand it afterwards with scalenet_jax.grow")
  sd = model.checkpoint_filter({k: np.asarray(_to_numpy(v)) for k, v in state_dict.items()})
  abstract = model.abstract_params()
  params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract) if init is None else init
  params = jax.tree.map(lambda a: np.array(a, copy=True), params)
  table = model.key_table()
  head = set(head_keys(model)) if new_head else set()
  table = [e for e in table if e.key not in head]
  sd = {k: v for k, v in sd.items() if k not in head}
  known = {e.key for e in table}
  unexpected = sorted(k for k in sd if k not in known and not _non_persistent(k))
  if unexpected:
    raise CheckpointError(
        f"unexpected key in checkpoint: {unexpected[0]!r} "
        f"({len(unexpected)} unexpected keys; is this a {model.family} checkpoint of this size?)"
    )
  for e in sorted(table, key=lambda e: e.optional):  # aliases last: they are checked against the param
    if e.key not in sd:
      if e.optional:
        continue
      raise CheckpointError(f"missing key in checkpoint: {e.key!r}")
    value = _TO_FLAX[e.kind](sd[e.key])
    leaf = _get(params, e.path)
    target = leaf if e.index is None else leaf[e.index]
    if value.shape != target.shape:
      want = _TO_TIMM[e.kind](np.zeros(target.shape)).shape
      hint = " (another number of classes? set --config.init_new_head=True)" if e.path[0] == "head" else ""
      raise CheckpointError(
          f"shape mismatch for key {e.key!r}: checkpoint has {tuple(sd[e.key].shape)}, model expects {tuple(want)}"
          + hint
      )
    if e.optional:
      if not np.array_equal(target, value):
        raise CheckpointError(f"key {e.key!r} is tied to another key of the model but holds different values")
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
  shard index (`*.safetensors.index.json`), or a directory holding `model.safetensors` or the index.
  Local or on an object store (gs://...), through the path API."""
  path = str(path)
  where = paths.path(path)
  if not where.exists():
    raise MissingInputError(f"checkpoint not found: {path}")
  if where.is_dir():
    return load_state_dict(_checkpoint_in_dir(path))
  if path.endswith(".safetensors.index.json"):
    return _load_sharded(path)
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  if path.endswith((".pth", ".pt", ".bin")):
    import pickle

    import torch  # optional dependency: pip install -e .[torch]

    try:
      # Training checkpoints of the DeiT release also pickle their argparse options: plain data, allowed.
      with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]), where.open("rb") as f:
        warnings.simplefilter("ignore")  # e.g. pickle-protocol notices: the error below is the message
        sd = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
      raise CheckpointError(
          f"refusing to load {path}: it is not a weights-only checkpoint "
          f"(unpickling would run arbitrary code): {str(e).splitlines()[0]}"
      ) from None
    return {k: _to_numpy(v) for k, v in _unwrap(sd, path).items()}
  raise CheckpointError(f"unsupported checkpoint format {path!r}: use .safetensors, .pth, .pt or .bin")


# Where training checkpoints keep the weights: the DeiT and Swin releases and timm's train script use
# `model` (next to `optimizer`, `epoch`, ...), others `state_dict`; `model_ema` only when nothing else is there.
_WRAPPERS = ("model", "state_dict", "model_ema")


def _unwrap(sd, path) -> dict:
  """The state dict inside a training checkpoint (or `sd` itself when it is one)."""
  if not isinstance(sd, dict):
    raise CheckpointError(f"{path} holds a {type(sd).__name__}, not a state dict")
  for wrapper in _WRAPPERS:
    if isinstance(sd.get(wrapper), dict):
      return sd[wrapper]
  tensors = {k: v for k, v in sd.items() if hasattr(v, "shape")}
  if not tensors:
    raise CheckpointError(f"{path} holds no tensors (top-level keys: {sorted(sd)[:8]})")
  return sd


def save_safetensors(path: str, state_dict: dict[str, np.ndarray]):
  from safetensors.numpy import save, save_file

  arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
  if paths.is_local(path):
    save_file(arrays, path)  # streamed to the file: no second copy of the weights in memory
  else:
    paths.write_bytes(path, save(arrays))


# ----------------------------------------------------------------------------------------------------
# safetensors files: one file, or Hugging Face shards with an index
# ----------------------------------------------------------------------------------------------------
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a `.safetensors` file (bfloat16 as `ml_dtypes.bfloat16`); a damaged file is a
  `CheckpointError` naming it."""
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load, load_file  # pylint: disable=g-import-not-at-top

  try:
    return load_file(path) if paths.is_local(path) else load(paths.path(path).read_bytes())
  except SafetensorError as e:
    raise CheckpointError(f"cannot read safetensors file {path}: {e}") from None


def _checkpoint_in_dir(directory: str) -> str:
  for name in (SINGLE_FILE, INDEX_FILE):
    if (paths.path(directory) / name).is_file():
      return str(paths.path(directory) / name)
  raise MissingInputError(f"no {SINGLE_FILE} or {INDEX_FILE} in checkpoint directory {directory}")


def _load_sharded(index_path: str) -> dict[str, np.ndarray]:
  """The shards a Hugging Face index lists (`weight_map`: key -> shard file), checked against it."""
  weight_map = paths.read_json(index_path).get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise CheckpointError(f"{index_path} has no weight_map")
  root = paths.path(index_path).parent
  shards = sorted(set(weight_map.values()))
  missing = [s for s in shards if not (root / s).is_file()]
  if missing:
    raise MissingInputError(
        f"shard {missing[0]} listed in {index_path} not found ({len(missing)} of {len(shards)} missing)"
    )
  out = {}
  for shard in shards:
    tensors = read_safetensors(str(root / shard))
    want = {k for k, s in weight_map.items() if s == shard}
    if want - set(tensors):
      raise CheckpointError(f"shard {shard} lacks key {sorted(want - set(tensors))[0]!r} that {index_path} puts there")
    out.update((k, tensors[k]) for k in sorted(want))
  return out


def save_state_dict_dir(directory: str, state_dict: dict[str, np.ndarray], max_shard_bytes: Optional[int] = None):
  """Write `state_dict` the way Hugging Face lays out a checkpoint: `model.safetensors`, or shards
  `model-0000i-of-0000n.safetensors` of at most `max_shard_bytes` each (a larger tensor gets its own)
  with `model.safetensors.index.json`."""
  root = paths.path(directory)
  root.mkdir(parents=True, exist_ok=True)
  if max_shard_bytes is None:
    save_safetensors(str(root / SINGLE_FILE), state_dict)
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
    save_safetensors(str(root / name), {k: state_dict[k] for k in keys})
    weight_map.update((k, name) for k in keys)
  total = int(sum(v.nbytes for v in state_dict.values()))
  paths.write_json(root / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)


# The same strict converters serve Hugging Face checkpoints (the model's key table names HF keys); read
# them with `timm_to_flax` (`builder.read_pretrained`).
flax_to_hf = flax_to_timm
