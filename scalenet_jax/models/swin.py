"""Swin Transformer (shifted windows, relative position bias, patch merging), timm-compatible layout."""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from scalenet_jax.models import stack as stack_lib


@dataclasses.dataclass(frozen=True)
class SwinConfig:
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
    return self.embed_dim * 2**i

  def stage_resolution(self, i):
    r = self.img_size // self.patch_size // 2**i
    return (r, r)


class PatchMerging(nn.Module):
  """2x2 neighbourhood concat (timm order: (h0,w0),(h1,w0),(h0,w1),(h1,w1)) -> LN -> Linear(4C->2C)."""

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


class Swin(nn.Module):
  """Swin; `layouts` (one per stage, None = identity) make it a ScaleNet-expanded model."""

  config: SwinConfig
  layouts: Optional[tuple[Optional[stack_lib.StackLayout], ...]] = None
  drop_path_rate: float = 0.0
  rank: int = 16
  adapter_act: str = "gelu"
  dtype: stack_lib.Dtype = jnp.float32
  remat: bool = False
  unroll: Optional[bool] = None  # None: unroll short block stacks (stack.UNROLL_MAX_BLOCKS)

  @property
  def stack_layouts(self):
    given = self.layouts or (None,) * len(self.config.depths)
    if len(given) != len(self.config.depths):
      raise ValueError(f"Swin has {len(self.config.depths)} stages but {len(given)} layouts were given")
    return tuple(l or stack_lib.StackLayout.identity(d) for l, d in zip(given, self.config.depths))

  @nn.compact
  def __call__(self, images, train: bool = False):
    cfg = self.config
    x = stack_lib.patch_embed(images, cfg, self.dtype)
    x = nn.LayerNorm(cfg.norm_eps, dtype=self.dtype, name="patch_norm")(x)
    layouts = self.stack_layouts
    # Stochastic depth grows linearly over the *scaled* depth of the whole network.
    dpr = np.linspace(0, self.drop_path_rate, sum(l.depth for l in layouts))
    offset = 0
    for i, layout in enumerate(layouts):
      if i > 0:
        x = PatchMerging(cfg.norm_eps, self.dtype, name=f"merge{i}")(x)
      b, h, w, c = x.shape
      window = stack_lib.WindowSpec.for_stage((h, w), cfg.window_size)
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
    x = nn.LayerNorm(cfg.norm_eps, dtype=self.dtype, name="norm")(x)
    return nn.Dense(cfg.num_classes, dtype=self.dtype, name="head", kernel_init=stack_lib.trunc_normal())(
        x.mean(axis=(1, 2))
    ).astype(jnp.float32)
