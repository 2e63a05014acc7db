"""timm (PyTorch) state dicts <-> Flax params, for every model of the registry.

Each model family keeps its key table next to the model (`model.key_table()`, see `models/common.py`):
every timm key with the Flax param it maps to (path, index along the stacked axis, layout transform). Import and export are both driven by it,
so they cannot drift apart. Loading is strict: a missing, unexpected or mis-shaped key raises a
`ValueError` naming the key. `.pth` files are read with `torch.load(weights_only=True)`,
which refuses pickles that would execute code.

Expanded (ScaleNet) models export *unrolled*: block `l` is written with the weights of its core
layer `mapping[l]`; their adjustment modules are written under extra `...adjust.*` keys that
plain timm ignores only if loaded with `strict=False` (they are not part of a timm model).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import jax
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
  """Strictly convert a timm state dict to Flax params of `model` (a plain, unexpanded model).

  `ignore`: timm keys that may be missing from `state_dict` (their Flax params keep a fresh
  init of zeros; typically the classifier head when fine-tuning to a new number of classes).
  """
  if not model.is_plain:
    raise ValueError("timm weights load into a plain model; expand it afterwards with scalenet_jax.grow")
  sd = {k: np.asarray(_to_numpy(v)) for k, v in state_dict.items()}
  abstract = model.abstract_params()
  params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
  table = model.key_table()
  known = {e.key for e in table}
  unexpected = sorted(k for k in sd if k not in known and not _non_persistent(k))
  if unexpected:
    raise CheckpointError(
        f"unexpected key in checkpoint: {unexpected[0]!r} "
        f"({len(unexpected)} unexpected keys; is this the right model?)"
    )
  for e in table:
    if e.key not in sd:
      if e.key in ignore:
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
    target[...] = value
  return params


def flax_to_timm(params, model) -> dict[str, np.ndarray]:
  """Flax params of `model` -> timm-named numpy state dict (expanded models export unrolled)."""
  out = {}
  for e in model.key_table():
    leaf = np.asarray(_get(params, e.path))
    out[e.key] = np.ascontiguousarray(_TO_TIMM[e.kind](leaf if e.index is None else leaf[e.index]))
  return out


def _non_persistent(key):
  # Buffers some timm versions store: recomputed here from the geometry.
  return key.endswith(("relative_position_index", "attn_mask"))


def _to_numpy(v):
  if hasattr(v, "detach"):  # torch tensor
    return v.detach().cpu().float().numpy() if v.dtype.is_floating_point else v.cpu().numpy()
  return v


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Read a timm checkpoint: `.safetensors`, or `.pth`/`.pt`/`.bin` (weights only, no code)."""
  if not os.path.exists(path):
    raise MissingInputError(f"checkpoint not found: {path}")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file

    return load_file(path)
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
