"""What every model built on the block stack shares: runtime fields, structure, params, weight-key tables.

A model family (ViT, Swin, ...) subclasses `StackedModel` and says four things about itself: its
`family` name, `plain_depths()` (blocks per stack of the unexpanded architecture), `stack_names()`
(the param collection of each stack) and `key_table()` (every foreign checkpoint key with the Flax
param it maps to, the way timm keeps `checkpoint_filter_fn` next to each model). Everything else that
needs the model's structure (expansion, conversion, counting, summaries, the trainer) asks the model.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scalenet_jax import jax_utils
from scalenet_jax.models.stack import Dtype, StackLayout


class StackedModel(nn.Module):
  """Base of the models in this package: one `BlockStack` per entry of `layouts`.

  A family subclass adds its `config` field (the architecture) and its `__call__`.

  Attributes:
    layouts: one `StackLayout` per stack (None = identity); non-identity layouts make a model
      ScaleNet-expanded. None = a plain model.
    drop_path_rate: stochastic depth rate (linear over the blocks).
    rank: rank of the adjustment modules.
    adapter_act: activation of the adapters.
    dtype: compute dtype.
    remat: rematerialise each block in the backward pass.
    unroll: None unrolls short block stacks (`stack.unroll_segment`), True every stack (cost analysis:
      XLA does not multiply loop bodies), False none.
    family: (class variable) the registry family name, e.g. `'vit'`.
  """

  layouts: Optional[tuple[Optional[StackLayout], ...]] = None
  drop_path_rate: float = 0.0
  rank: int = 16
  adapter_act: str = "gelu"
  dtype: Dtype = jnp.float32
  remat: bool = False
  unroll: Optional[bool] = None

  family: ClassVar[str] = ""

  # -- what a family defines ------------------------------------------------------------------------
  def plain_depths(self) -> tuple[int, ...]:
    """Blocks per stack of the unexpanded architecture (from `config`)."""
    raise NotImplementedError

  def stack_names(self) -> tuple[str, ...]:
    """The top-level param collection of each stack, in forward order."""
    raise NotImplementedError

  def with_plain_depths(self, depths: Sequence[int]) -> "StackedModel":
    """The same plain architecture with other stack depths."""
    raise NotImplementedError

  def key_table(self) -> list["Entry"]:
    """Every key of the family's foreign checkpoint format with the Flax param it maps to."""
    raise NotImplementedError

  def checkpoint_filter(self, state_dict: dict) -> dict:
    """The family's foreign state dict in the layout of `key_table` (e.g. an original-release layout).

    Args:
      state_dict: `{key: numpy array}` as read from the checkpoint.

    Returns:
      The state dict with `key_table` keys (the base class returns it unchanged).

    Raises:
      CheckpointError: a checkpoint of another variant the family cannot load, saying what it is.
    """
    return state_dict

  def input_spec(self, batch: int = 1) -> jax.ShapeDtypeStruct:
    """Shape and dtype of a model input batch of `batch` examples (images NHWC float32, or token ids)."""
    raise NotImplementedError

  # -- structure --------------------------------------------------------------------------------------
  @property
  def stack_layouts(self) -> tuple[StackLayout, ...]:
    """The layout of every stack (identity where `layouts` gives None); raises ValueError on a count that
    is not the number of stacks."""
    depths = self.plain_depths()
    given = self.layouts or (None,) * len(depths)
    if len(given) != len(depths):
      raise ValueError(f"{type(self).__name__} has {len(depths)} stacks but {len(given)} layouts were given")
    return tuple(l or StackLayout.identity(d) for l, d in zip(given, depths))

  @property
  def depths(self) -> tuple[int, ...]:
    """Blocks per stack as built (expanded depths for an expanded model)."""
    return tuple(l.depth for l in self.stack_layouts)

  @property
  def is_plain(self) -> bool:
    """Whether every stack has the identity layout (an unexpanded model)."""
    return all(l == StackLayout.identity(l.depth) for l in self.stack_layouts)

  def with_layouts(self, layouts: Optional[Sequence[Optional[StackLayout]]], **fields) -> "StackedModel":
    """A clone with `layouts` (None = plain) and other fields replaced (e.g. `rank`, `adapter_act`)."""
    return self.clone(layouts=None if layouts is None else tuple(layouts), **fields)

  # -- params -----------------------------------------------------------------------------------------
  def abstract_params(self) -> dict:
    """Param shapes and dtypes (`jax.ShapeDtypeStruct` leaves), without computing anything."""
    return abstract_variables(self)["params"]

  def init_params(self, seed: int) -> dict:
    """Freshly initialised params as host numpy arrays (one cheaply compiled init) from `jax.random.key(seed)`."""
    x = np.zeros(self.input_spec().shape, self.input_spec().dtype)
    params = jax_utils.run_once(self.init, jax.random.key(seed), x)["params"]
    return jax.tree.map(np.asarray, params)


def abstract_variables(model: nn.Module) -> dict:
  """Shapes and dtypes of every variable collection `model.init` creates on `model.input_spec()`.

  Args:
    model: an unbound module with an `input_spec()` (the models of this package).

  Returns:
    A fresh nested dict of `jax.ShapeDtypeStruct` leaves (callers may edit it).
  """
  try:
    hash(model)
  except TypeError:  # a field that cannot be hashed (a list, ...): trace without the memo
    return _abstract_variables.__wrapped__(model)
  return jax.tree.map(lambda s: s, _abstract_variables(model))


@functools.lru_cache(maxsize=64)
def _abstract_variables(model: nn.Module) -> dict:
  # Tracing a model's init is the slow part of building a run (0.1-0.5 s for a micro model, seconds at
  # full size), and a run asks for the same model's shapes many times (parameter counts, the matched
  # baselines' search, summaries, the state's shapes). A module is a frozen dataclass whose value is its
  # whole architecture, so the value is the key.
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), model.input_spec())


def image_input_spec(cfg, batch: int = 1) -> jax.ShapeDtypeStruct:
  """Float32 NHWC images `(batch, img_size, img_size, in_chans)` of an image config (`ViTConfig`, `SwinConfig`)."""
  return jax.ShapeDtypeStruct((batch, cfg.img_size, cfg.img_size, cfg.in_chans), jnp.float32)


# ----------------------------------------------------------------------------------------------------
# Key tables: foreign checkpoint key <-> Flax param path (+ index along a stacked axis, + layout).
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Entry:
  """One foreign checkpoint key and the Flax param it maps to.

  Attributes:
    key: key in the foreign (timm / Hugging Face) state dict.
    path: Flax param path.
    index: index along the stacked (scan / core) axis, None for unstacked params.
    kind: how the tensor converts: `'linear'` (out, in) -> transposed, `'conv'` (O, I, kh, kw) -> HWIO,
      `'same'` unchanged.
    optional: a second name of a param another entry already maps (a tied LM head): a checkpoint may omit
      it; when present it must equal that param.
  """

  key: str  # key in the foreign (timm / Hugging Face) state dict
  path: tuple[str, ...]  # Flax param path
  index: Optional[int]  # index along the stacked (scan / core) axis, None for unstacked params
  kind: str  # 'linear' (out, in) | 'conv' (O, I, kh, kw) | 'same'
  # A second name of a param another entry already maps (a tied LM head): a checkpoint may omit it;
  # when present it must equal that param.
  optional: bool = False


def linear_entries(key: str, path: tuple[str, ...], index: Optional[int] = None, bias: bool = True) -> list[Entry]:
  """Entries of a linear layer: `<key>.weight` -> `path/kernel` (and `<key>.bias` -> `path/bias`)."""
  out = [Entry(f"{key}.weight", path + ("kernel",), index, "linear")]
  if bias:
    out.append(Entry(f"{key}.bias", path + ("bias",), index, "same"))
  return out


def norm_entries(key: str, path: tuple[str, ...], index: Optional[int] = None, bias: bool = True) -> list[Entry]:
  """Entries of a norm layer: `<key>.weight` -> `path/scale` (and `<key>.bias` -> `path/bias`)."""
  out = [Entry(f"{key}.weight", path + ("scale",), index, "same")]
  if bias:
    out.append(Entry(f"{key}.bias", path + ("bias",), index, "same"))
  return out


def adjust_entries(prefix: str, segment: tuple[str, ...], position: int, kind: str, names: Sequence[str]):
  """Keys of one block's adjustment modules: `<prefix>.adjust.<linear>.{A,B}` (not part of timm/HF models).

  Args:
    prefix: the block's key prefix, e.g. `'blocks.3'`.
    segment: Flax path of the block's segment (`(..., 'seg1')`).
    position: the block's index inside its segment.
    kind: `'adapter'` or `'lora'`.
    names: the adjusted linears (`ADJUSTED_LINEARS[kind]`).

  Returns:
    The entries (`<kind>_<linear>/{A,B}/kernel`, no biases).
  """
  out = []
  for n in names:
    for ab in ("A", "B"):
      out += linear_entries(f"{prefix}.adjust.{n}.{ab}", segment + (f"{kind}_{n}", ab), position, bias=False)
  return out


def transformer_stack_entries(
    prefix: str, root: tuple[str, ...], layout: StackLayout, window: bool, qkv_bias: bool = True
) -> list[Entry]:
  """timm keys of the blocks of one ViT/Swin stack.

  Args:
    prefix: `'blocks'` or `'layers.i.blocks'`.
    root: Flax path of the stack.
    layout: its layout: block l reads core `layout.mapping[l]` and owns its norms and adjustment modules.
    window: Swin blocks (with a relative position bias table).
    qkv_bias: whether the qkv linear has a bias.

  Returns:
    The entries of every block, in block order.
  """
  out = []
  core = root + ("core",)
  for l, c in enumerate(layout.mapping):
    seg, pos = layout.locate(l)
    segp = root + (f"seg{seg}",)
    b = f"{prefix}.{l}"
    out += norm_entries(f"{b}.norm1", segp + ("norm1",), pos) + norm_entries(f"{b}.norm2", segp + ("norm2",), pos)
    out += linear_entries(f"{b}.attn.qkv", core + ("qkv",), c, bias=qkv_bias)
    out += linear_entries(f"{b}.attn.proj", core + ("proj",), c)
    out += linear_entries(f"{b}.mlp.fc1", core + ("fc1",), c) + linear_entries(f"{b}.mlp.fc2", core + ("fc2",), c)
    if window:
      out.append(Entry(f"{b}.attn.relative_position_bias_table", core + ("rel_pos_bias_table",), c, "same"))
    kind = layout.adjust[l]
    if kind != "none":
      out += adjust_entries(b, segp, pos, kind, ADJUSTED_LINEARS[kind])
  return out


# Which linears of a ViT/Swin block carry an adjustment module: adapters on the MLP (the paper's
# default), LoRA (ablation) on all four.
ADJUSTED_LINEARS: dict[str, tuple[str, ...]] = {"adapter": ("fc1", "fc2"), "lora": ("qkv", "proj", "fc1", "fc2")}


def patch_embed_entries() -> list[Entry]:
  """Entries of the `patch_embed.proj` conv."""
  t = linear_entries("patch_embed.proj", ("patch_embed",))
  return [dataclasses.replace(t[0], kind="conv"), t[1]]
