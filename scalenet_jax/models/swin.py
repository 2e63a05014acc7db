"""Swin Transformer (shifted windows, relative position bias, patch merging), timm-compatible layout."""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from scalenet_jax.models import common
from scalenet_jax.models import features
from scalenet_jax.models import stack as stack_lib


@dataclasses.dataclass(frozen=True)
class SwinConfig:
  """Swin architecture (timm `SwinTransformer` argument names).

  Attributes:
    img_size: input height = width in pixels.
    patch_size: patch embedding stride.
    in_chans: input channels.
    num_classes: classifier outputs.
    embed_dim: width of stage 0 (doubled per stage).
    depths: blocks per stage.
    num_heads: attention heads per stage.
    window_size: attention window (clipped to a stage's resolution when smaller).
    mlp_ratio: MLP width / block width.
    qkv_bias: whether qkv has a bias.
    norm_eps: LayerNorm epsilon.
  """

  img_size: int = 224
  patch_size: int = 4
  in_chans: int = 3
  num_classes: int = 1000
  embed_dim: int = 96
  depths: tuple[int, ...] = (2, 2, 6, 2)
  num_heads: tuple[int, ...] = (3, 6, 12, 24)
  window_size: int = 7
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  norm_eps: float = 1e-5

  def stage_dim(self, i):
    """Width of stage `i`: embed_dim · 2^i."""
    return self.embed_dim * 2**i

  def stage_resolution(self, i):
    """(H, W) token grid of stage `i`."""
    r = self.img_size // self.patch_size // 2**i
    return (r, r)


class PatchMerging(nn.Module):
  """2x2 neighbourhood concat (timm order: (h0,w0),(h1,w0),(h0,w1),(h1,w1)) -> LN -> Linear(4C->2C).

  Attributes:
    norm_eps: LayerNorm epsilon.
    dtype: compute dtype.

  `__call__(x)`: (B, H, W, C) -> (B, H/2, W/2, 2C).
  """

  norm_eps: float
  dtype: stack_lib.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
    x = nn.LayerNorm(self.norm_eps, dtype=self.dtype, name="norm")(x)
    # Flattened to 2-D: XLA:CPU builds a (4C, tokens) transposed copy for the weight gradient otherwise.
    y = nn.Dense(2 * c, use_bias=False, dtype=self.dtype, name="reduction", kernel_init=stack_lib.trunc_normal())(
        x.reshape(-1, 4 * c)
    )
    return y.reshape(b, h // 2, w // 2, 2 * c)


class Swin(common.StackedModel):
  """Swin (one block stack per stage, `stage{i}`); `layouts` make it a ScaleNet-expanded model.

  Attributes:
    config: the architecture.
    out_indices: stage indices that make it a feature backbone in mmdet/mmseg's layout
      (`models/features.py`); None = the classifier.
    (and the `StackedModel` runtime fields)

  `__call__(images, train=False)`: images (B, img_size, img_size, in_chans) float -> logits
  (B, num_classes) float32, or with `out_indices` a list of NCHW feature maps (B, stage_dim(i), H_i, W_i),
  each through its own LayerNorm `norm{i}`.
  """

  config: SwinConfig = SwinConfig()
  out_indices: Optional[tuple[int, ...]] = None  # None: the classifier
  family: ClassVar[str] = "swin"

  def plain_depths(self):
    return tuple(self.config.depths)

  def stack_names(self):
    return tuple(f"stage{i}" for i in range(len(self.config.depths)))

  def with_plain_depths(self, depths):
    return self.clone(config=dataclasses.replace(self.config, depths=tuple(int(d) for d in depths)), layouts=None)

  def input_spec(self, batch: int = 1):
    return common.image_input_spec(self.config, batch)

  def checkpoint_filter(self, state_dict):
    """The original Swin release (microsoft/Swin-Transformer) keeps each patch merging at the *end* of
    stage i (`layers.i.downsample`, i < last) and names the classifier `head`; timm puts it at the start
    of stage i + 1 and names it `head.fc`. Same tensors, other names: renamed to timm's."""
    if self.out_indices is not None:  # a feature backbone reads mmdet/mmseg's layout as it is
      return state_dict
    if "head.fc.weight" in state_dict or "head.weight" not in state_dict:
      return state_dict
    out = {}
    for k, v in state_dict.items():
      m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
      if m:
        k = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
      elif k.startswith("head."):
        k = "head.fc." + k[len("head.") :]
      out[k] = v
    return out

  def key_table(self):
    """timm `SwinTransformer` keys (a feature backbone: mmdet/mmseg's, `features.mmseg_swin_entries`)."""
    if self.out_indices is not None:
      return features.mmseg_swin_entries(self)
    t = common.patch_embed_entries() + common.norm_entries("patch_embed.norm", ("patch_norm",))
    for i, layout in enumerate(self.stack_layouts):
      if i > 0:
        t += common.norm_entries(f"layers.{i}.downsample.norm", (f"merge{i}", "norm"))
        t += common.linear_entries(f"layers.{i}.downsample.reduction", (f"merge{i}", "reduction"), bias=False)
      t += common.transformer_stack_entries(
          f"layers.{i}.blocks", (f"stage{i}",), layout, window=True, qkv_bias=self.config.qkv_bias
      )
    return t + common.norm_entries("norm", ("norm",)) + common.linear_entries("head.fc", ("head",))

  @nn.compact
  def __call__(self, images, train: bool = False):
    cfg = self.config
    features.check_out_indices(self.out_indices, len(cfg.depths), "swin")
    x = stack_lib.patch_embed(images, cfg, self.dtype)
    x = nn.LayerNorm(cfg.norm_eps, dtype=self.dtype, name="patch_norm")(x)
    layouts = self.stack_layouts
    maps = []
    # Stochastic depth grows linearly over the *scaled* depth of the whole network.
    dpr = np.linspace(0, self.drop_path_rate, sum(l.depth for l in layouts))
    offset = 0
    for i, layout in enumerate(layouts):
      if i > 0:
        x = PatchMerging(cfg.norm_eps, self.dtype, name=f"merge{i}")(x)
      b, h, w, c = x.shape
      # A feature backbone pads its window grids as mmseg's Swin does (ADE20K's 512 px crops: 128 tokens).
      window = stack_lib.WindowSpec.for_stage((h, w), cfg.window_size, pad=self.out_indices is not None)
      x = stack_lib.BlockStack(
          layout,
          c,
          cfg.num_heads[i],
          cfg.mlp_ratio,
          drop_path=tuple(dpr[offset : offset + layout.depth]),
          rank=self.rank,
          adapter_act=self.adapter_act,
          norm_eps=cfg.norm_eps,
          window=window,
          qkv_bias=cfg.qkv_bias,
          dtype=self.dtype,
          remat=self.remat,
          unroll=self.unroll,
          name=f"stage{i}",
      )(x.reshape(b, h * w, c), train).reshape(b, h, w, c)
      offset += layout.depth
      if self.out_indices is not None and i in self.out_indices:
        maps.append(features.nchw(nn.LayerNorm(cfg.norm_eps, dtype=self.dtype, name=f"norm{i}")(x)))
    if self.out_indices is not None:
      return maps
    x = nn.LayerNorm(cfg.norm_eps, dtype=self.dtype, name="norm")(x)
    return nn.Dense(cfg.num_classes, dtype=self.dtype, name="head", kernel_init=stack_lib.trunc_normal())(
        x.mean(axis=(1, 2))
    ).astype(jnp.float32)
