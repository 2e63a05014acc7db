"""timm (PyTorch) state dicts <-> Flax params, for every model of the registry.

One table (`key_table`) lists, for a model, every timm key with the Flax param it maps to
(path, index along the stacked axis, layout transform). Import and export are both driven by it,
so they cannot drift apart. Loading is strict: a missing, unexpected or mis-shaped key raises a
`ValueError` naming the key. `.pth` files are read with `torch.load(weights_only=True)`,
which refuses pickles that would execute code.

Expanded (ScaleNet) models export *unrolled*: block `l` is written with the weights of its core
layer `mapping[l]`; their adjustment modules are written under extra `...adjust.*` keys that
plain timm ignores only if loaded with `strict=False` (they are not part of a timm model).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Optional

import jax
import numpy as np

from scalenet_jax.models import stack as stack_lib

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


@dataclasses.dataclass(frozen=True)
class Entry:
  timm_key: str
  path: tuple[str, ...]  # Flax param path
  index: Optional[int]  # index along the stacked (scan / core) axis, None for unstacked params
  kind: str  # 'linear' | 'conv' | 'same'


def _linear(tk, path, index=None, bias=True):
  out = [Entry(f"{tk}.weight", path + ("kernel",), index, "linear")]
  if bias:
    out.append(Entry(f"{tk}.bias", path + ("bias",), index, "same"))
  return out


def _norm(tk, path, index=None):
  return [Entry(f"{tk}.weight", path + ("scale",), index, "same"), Entry(f"{tk}.bias", path + ("bias",), index, "same")]


def _stack_entries(
    prefix: str, root: tuple[str, ...], layout: stack_lib.StackLayout, window: bool, qkv_bias: bool = True
):
  """timm keys of the blocks of one stack (`prefix` = 'blocks' or 'layers.i.blocks')."""
  out = []
  core = root + ("core",)
  for l, c in enumerate(layout.mapping):
    seg, pos = layout.locate(l)
    segp = root + (f"seg{seg}",)
    b = f"{prefix}.{l}"
    out += _norm(f"{b}.norm1", segp + ("norm1",), pos) + _norm(f"{b}.norm2", segp + ("norm2",), pos)
    out += _linear(f"{b}.attn.qkv", core + ("qkv",), c, bias=qkv_bias)
    out += _linear(f"{b}.attn.proj", core + ("proj",), c)
    out += _linear(f"{b}.mlp.fc1", core + ("fc1",), c) + _linear(f"{b}.mlp.fc2", core + ("fc2",), c)
    if window:
      out.append(Entry(f"{b}.attn.relative_position_bias_table", core + ("rel_pos_bias_table",), c, "same"))
    kind = layout.adjust[l]
    if kind != "none":
      names = ("fc1", "fc2") if kind == "adapter" else ("qkv", "proj", "fc1", "fc2")
      for n in names:
        for ab in ("A", "B"):
          out += _linear(f"{b}.adjust.{n}.{ab}", segp + (f"{kind}_{n}", ab), pos, bias=False)
  return out


def key_table(model) -> list[Entry]:
  """Every (timm key -> Flax param) pair of `model` (a ViT or Swin module)."""
  from scalenet_jax.models import swin, vit  # local: avoid import cycles

  t = _linear("patch_embed.proj", ("patch_embed",))
  t[0] = dataclasses.replace(t[0], kind="conv")
  if isinstance(model, vit.ViT):
    t += [Entry("cls_token", ("cls_token",), None, "same"), Entry("pos_embed", ("pos_embed",), None, "same")]
    t += _stack_entries("blocks", ("blocks",), model.stack_layouts[0], window=False, qkv_bias=model.config.qkv_bias)
    head = "head"
  elif isinstance(model, swin.Swin):
    t += _norm("patch_embed.norm", ("patch_norm",))
    for i, layout in enumerate(model.stack_layouts):
      if i > 0:
        t += _norm(f"layers.{i}.downsample.norm", (f"merge{i}", "norm"))
        t += _linear(f"layers.{i}.downsample.reduction", (f"merge{i}", "reduction"), bias=False)
      t += _stack_entries(f"layers.{i}.blocks", (f"stage{i}",), layout, window=True, qkv_bias=model.config.qkv_bias)
    head = "head.fc"
  else:
    raise TypeError(f"no timm key table for {type(model).__name__}")
  return t + _norm("norm", ("norm",)) + _linear(head, ("head",))


def _is_plain(model):
  return all(l == stack_lib.StackLayout.identity(l.depth) for l in model.stack_layouts)


def abstract_params(model):
  cfg = model.config
  x = jax.ShapeDtypeStruct((1, cfg.img_size, cfg.img_size, cfg.in_chans), np.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def timm_to_flax(state_dict: dict[str, Any], model, ignore: tuple[str, ...] = ()) -> dict:
  """Strictly convert a timm state dict to Flax params of `model` (a plain, unexpanded model).

  `ignore`: timm keys that may be missing from `state_dict` (their Flax params keep a fresh
  init of zeros; typically the classifier head when fine-tuning to a new number of classes).
  """
  if not _is_plain(model):
    raise ValueError("timm weights load into a plain model; expand it afterwards with scalenet_jax.grow")
  sd = {k: np.asarray(_to_numpy(v)) for k, v in state_dict.items()}
  abstract = abstract_params(model)
  params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
  table = key_table(model)
  known = {e.timm_key for e in table}
  unexpected = sorted(k for k in sd if k not in known and not _non_persistent(k))
  if unexpected:
    raise ValueError(
        f"unexpected key in checkpoint: {unexpected[0]!r} "
        f"({len(unexpected)} unexpected keys; is this the right model?)"
    )
  for e in table:
    if e.timm_key not in sd:
      if e.timm_key in ignore:
        continue
      raise ValueError(f"missing key in checkpoint: {e.timm_key!r}")
    value = _TO_FLAX[e.kind](sd[e.timm_key])
    leaf = _get(params, e.path)
    target = leaf if e.index is None else leaf[e.index]
    if value.shape != target.shape:
      want = _TO_TIMM[e.kind](np.zeros(target.shape)).shape
      raise ValueError(
          f"shape mismatch for key {e.timm_key!r}: checkpoint has {tuple(sd[e.timm_key].shape)},"
          f" model expects {tuple(want)}"
      )
    target[...] = value
  return params


def flax_to_timm(params, model) -> dict[str, np.ndarray]:
  """Flax params of `model` -> timm-named numpy state dict (expanded models export unrolled)."""
  out = {}
  for e in key_table(model):
    leaf = np.asarray(_get(params, e.path))
    out[e.timm_key] = np.ascontiguousarray(_TO_TIMM[e.kind](leaf if e.index is None else leaf[e.index]))
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
    raise FileNotFoundError(f"checkpoint not found: {path}")
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
      raise ValueError(
          f"refusing to load {path}: it is not a weights-only checkpoint "
          f"(unpickling would run arbitrary code): {str(e).splitlines()[0]}"
      ) from None
    for wrapper in ("model", "state_dict", "model_ema"):
      if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
        sd = sd[wrapper]
        break
    return {k: _to_numpy(v) for k, v in sd.items()}
  raise ValueError(f"unsupported checkpoint format {path!r}: use .safetensors, .pth, .pt or .bin")


def save_safetensors(path: str, state_dict: dict[str, np.ndarray]):
  from safetensors.numpy import save_file

  save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path)
