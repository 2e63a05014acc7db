"""DeiT / ViT (class token, learned position embedding), timm-compatible layout."""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from scalenet_jax.models import stack as stack_lib


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  img_size: int = 224
  patch_size: int = 16
  in_chans: int = 3
  num_classes: int = 1000
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  norm_eps: float = 1e-6

  @property
  def num_patches(self):
    return (self.img_size // self.patch_size) ** 2


class ViT(nn.Module):
  """Vision transformer; `layout` (default: identity) makes it a ScaleNet-expanded model."""

  config: ViTConfig
  layout: Optional[stack_lib.StackLayout] = None
  drop_path_rate: float = 0.0
  rank: int = 16
  adapter_act: str = "gelu"
  dtype: stack_lib.Dtype = jnp.float32
  remat: bool = False
  unroll: Optional[bool] = None  # None: unroll short block stacks (stack.UNROLL_MAX_BLOCKS)

  @property
  def stack_layouts(self):
    return (self.layout or stack_lib.StackLayout.identity(self.config.depth),)

  @nn.compact
  def __call__(self, images, train: bool = False):
    cfg = self.config
    x = stack_lib.patch_embed(images, cfg, self.dtype)
    x = x.reshape(x.shape[0], -1, cfg.embed_dim)
    cls = self.param("cls_token", stack_lib.trunc_normal(1e-6), (1, 1, cfg.embed_dim))
    pos = self.param("pos_embed", stack_lib.trunc_normal(), (1, cfg.num_patches + 1, cfg.embed_dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, cfg.embed_dim)).astype(x.dtype), x], 1)
    x = x + pos.astype(x.dtype)
    layout = self.stack_layouts[0]
    x = stack_lib.BlockStack(
        layout,
        cfg.embed_dim,
        cfg.num_heads,
        cfg.mlp_ratio,
        drop_path=tuple(np.linspace(0, self.drop_path_rate, layout.depth)),
        rank=self.rank,
        adapter_act=self.adapter_act,
        norm_eps=cfg.norm_eps,
        qkv_bias=cfg.qkv_bias,
        dtype=self.dtype,
        remat=self.remat,
        unroll=self.unroll,
        name="blocks",
    )(x, train)
    x = nn.LayerNorm(cfg.norm_eps, dtype=self.dtype, name="norm")(x)
    return nn.Dense(cfg.num_classes, dtype=self.dtype, name="head", kernel_init=stack_lib.trunc_normal())(
        x[:, 0]
    ).astype(jnp.float32)
