"""DeiT / ViT (class token, learned position embedding), timm-compatible layout."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from scalenet_jax.errors import CheckpointError
from scalenet_jax.models import common
from scalenet_jax.models import features
from scalenet_jax.models import stack as stack_lib


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """ViT / DeiT architecture (timm `VisionTransformer` argument names).

  Attributes:
    img_size: input height = width in pixels.
    patch_size: patch size (the patch embedding's kernel and stride).
    in_chans: input channels.
    num_classes: classifier outputs.
    embed_dim: token width.
    depth: blocks.
    num_heads: attention heads.
    mlp_ratio: MLP width / token width.
    qkv_bias: whether qkv has a bias.
    norm_eps: LayerNorm epsilon.
  """

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
    """Patch tokens per image (without the class token)."""
    return (self.img_size // self.patch_size) ** 2


class ViT(common.StackedModel):
  """Vision transformer (one block stack, `blocks`); `layouts` make it a ScaleNet-expanded model.

  `out_indices=(0,)` makes it a single-scale feature backbone: the final-norm output of the patch tokens as
  one NCHW map, no head (timm's keys otherwise; `models/features.py`).

  Attributes:
    config: the architecture.
    out_indices: `(0,)` for the feature backbone; None = the classifier.
    (and the `StackedModel` runtime fields)

  `__call__(images, train=False)`: images (B, img_size, img_size, in_chans) float -> logits of the class
  token (B, num_classes) float32, or `[map (B, embed_dim, img_size / p, img_size / p)]` with `out_indices`.
  """

  config: ViTConfig = ViTConfig()
  out_indices: Optional[tuple[int, ...]] = None  # None: the classifier
  family: ClassVar[str] = "vit"

  def plain_depths(self):
    return (self.config.depth,)

  def stack_names(self):
    return ("blocks",)

  def with_plain_depths(self, depths):
    return self.clone(config=dataclasses.replace(self.config, depth=int(depths[0])), layouts=None)

  def input_spec(self, batch: int = 1):
    return common.image_input_spec(self.config, batch)

  def checkpoint_filter(self, state_dict):
    """The state dict unchanged; a distilled DeiT checkpoint raises `CheckpointError`."""
    # The DeiT release's distilled models (deit_*_distilled_patch16_224) carry a distillation token and
    # head: a different architecture (two output heads), not supported here.
    if "dist_token" in state_dict or any(k.startswith("head_dist.") for k in state_dict):
      raise CheckpointError(
          "this is a distilled DeiT checkpoint (dist_token, head_dist): distilled models are not supported; "
          "use the non-distilled release of the same model (e.g. deit_base_patch16_224)"
      )
    return state_dict

  def key_table(self):
    """timm `VisionTransformer` keys (DeiT / ViT with class token)."""
    t = common.patch_embed_entries()
    t += [
        common.Entry("cls_token", ("cls_token",), None, "same"),
        common.Entry("pos_embed", ("pos_embed",), None, "same"),
    ]
    t += common.transformer_stack_entries(
        "blocks", ("blocks",), self.stack_layouts[0], window=False, qkv_bias=self.config.qkv_bias
    )
    t += common.norm_entries("norm", ("norm",))
    return t if self.out_indices is not None else t + common.linear_entries("head", ("head",))

  @nn.compact
  def __call__(self, images, train: bool = False):
    cfg = self.config
    features.check_out_indices(self.out_indices, 1, "vit")
    x = stack_lib.patch_embed(images, cfg, self.dtype)
    grid = x.shape[1:3]
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
    if self.out_indices is not None:
      return [features.nchw(x[:, 1:].reshape(x.shape[0], *grid, cfg.embed_dim))]
    return nn.Dense(cfg.num_classes, dtype=self.dtype, name="head", kernel_init=stack_lib.trunc_normal())(
        x[:, 0]
    ).astype(jnp.float32)
