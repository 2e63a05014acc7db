"""Feature-backbone mode of the vision models (`out_indices`), and Swin's mmdet/mmseg checkpoint names.

A model built with `out_indices` (indices into its block stacks, `stack_names()`) returns a list of NCHW
feature maps instead of logits, and has no classifier head: Swin gives the output of each chosen stage through
its own LayerNorm `norm{i}` (as mmdet/mmseg's Swin does), ViT its one stack's output after the final norm
(a single-scale map, class token dropped). The blocks are the classifier's scanned, shareable stacks, so a
backbone grows under an `ExpansionSpec` like the classifier does (every stage for the dense setting of the
paper: `subset=(0, 1, 2, 3)`).

Swin's feature backbone reads and writes the layout of mmdet/mmseg's `SwinTransformer` (its own state dict;
a detector or segmentor prefixes it with `backbone.`, see `scalenet_jax.dense`). The names, next to timm's
(`i` stage, `j` block of the stage, `c = mapping[j]` the block's core layer, `(k, p)` = `layout.locate(j)`):

| mmdet / mmseg key                                    | timm key                             | Flax param              |
|------------------------------------------------------|--------------------------------------|-------------------------|
| `patch_embed.projection.{weight,bias}`               | `patch_embed.proj.*`                 | `patch_embed`           |
| `patch_embed.norm.*`                                 | `patch_embed.norm.*`                 | `patch_norm`            |
| `stages.i.blocks.j.norm{1,2}.*`                      | `layers.i.blocks.j.norm{1,2}.*`      | `stage{i}/seg{k}/norm{1,2}[p]` |
| `stages.i.blocks.j.attn.w_msa.qkv.*`                 | `layers.i.blocks.j.attn.qkv.*`       | `stage{i}/core/qkv[c]`  |
| `stages.i.blocks.j.attn.w_msa.proj.*`                | `layers.i.blocks.j.attn.proj.*`      | `stage{i}/core/proj[c]` |
| `stages.i.blocks.j.attn.w_msa.relative_position_bias_table` | `...attn.relative_position_bias_table` | `stage{i}/core/rel_pos_bias_table[c]` |
| `stages.i.blocks.j.attn.w_msa.relative_position_index` | (buffer)                           | recomputed: ignored on load, written on export |
| `stages.i.blocks.j.ffn.layers.0.0.*`                 | `layers.i.blocks.j.mlp.fc1.*`        | `stage{i}/core/fc1[c]`  |
| `stages.i.blocks.j.ffn.layers.1.*`                   | `layers.i.blocks.j.mlp.fc2.*`        | `stage{i}/core/fc2[c]`  |
| `stages.i.downsample.norm.*` (i < last)              | `layers.{i+1}.downsample.norm.*`     | `merge{i+1}/norm` (unfold order) |
| `stages.i.downsample.reduction.weight` (i < last)    | `layers.{i+1}.downsample.reduction.weight` | `merge{i+1}/reduction` (unfold order) |
| `norm{i}.*` (i in `out_indices`)                     | (none)                               | `norm{i}`               |
| (none)                                               | `norm.*`, `head.fc.*`                | classifier only         |

mmseg keeps each patch merging at the end of stage i, timm at the start of stage i + 1 (same tensors), and
merges a 2x2 neighbourhood with `nn.Unfold`, whose 4C channels run channel-major (c, kh, kw) where timm
concatenates the four positions (kw, kh, c): the merge norm and reduction are permuted on the way in and out
(`convert`'s `unfold_norm` / `unfold_linear`). An expanded backbone exports unrolled, its adjustment modules
under `stages.i.blocks.j.adjust.*` as the classifier's do.

Geometry: window attention follows timm where the two agree (a stage that fits in one window shrinks the
window and never shifts), and pads as mmseg's Swin does where timm refuses: a stage grid that is not a
multiple of the window (ADE20K's 512 px crops: 128, 64, 32, 16 tokens for window 7) is zero-padded at the
bottom and right after `norm1`, shifted, windowed and masked over the padded grid, and cropped back
(`stack.WindowSpec.pad`). That is mmseg's computation whenever every stage is larger than the window (mmseg
never shrinks a window).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax.numpy as jnp

from scalenet_jax.models import common

# Suffixes of a Swin block's keys inside `stages.i.blocks.j`: timm's -> mmdet/mmseg's.
_MMSEG_BLOCK_NAMES = (
    ("attn.qkv.", "attn.w_msa.qkv."),
    ("attn.proj.", "attn.w_msa.proj."),
    ("attn.relative_position_bias_table", "attn.w_msa.relative_position_bias_table"),
    ("mlp.fc1.", "ffn.layers.0.0."),
    ("mlp.fc2.", "ffn.layers.1."),
)


def check_out_indices(out_indices: Optional[Sequence[int]], num_stacks: int, family: str):
  """`out_indices` (None = classifier) must be increasing stack indices of the model.

  Args:
    out_indices: the requested feature maps, or None.
    num_stacks: stacks of the model.
    family: named in the error.

  Raises:
    ValueError: empty, not strictly increasing, or out of [0, num_stacks).
  """
  if out_indices is None:
    return
  idx = tuple(out_indices)
  if not idx or list(idx) != sorted(set(idx)) or not all(0 <= i < num_stacks for i in idx):
    raise ValueError(f"{family} out_indices must be increasing stack indices in [0, {num_stacks}), got {idx}")


def nchw(grid):
  """(B, H, W, C) -> (B, C, H, W): the feature-map layout of mmdet/mmseg and timm."""
  return jnp.transpose(grid, (0, 3, 1, 2))


def _rename_block_key(key: str) -> str:
  for old, new in _MMSEG_BLOCK_NAMES:
    if f".{old}" in key:
      return key.replace(f".{old}", f".{new}")
  return key


def mmseg_swin_entries(model) -> list[common.Entry]:
  """Key table of a Swin feature backbone in mmdet/mmseg's names (module doc).

  Args:
    model: a `Swin` with `out_indices` set.

  Returns:
    The entries (`common.Entry`) of the patch embedding, every stage's blocks and patch merging, and the
    `norm{i}` of each output.
  """
  t = common.patch_embed_entries()
  t = [dataclasses.replace(e, key=e.key.replace("patch_embed.proj.", "patch_embed.projection.")) for e in t]
  t += common.norm_entries("patch_embed.norm", ("patch_norm",))
  last = len(model.stack_layouts) - 1
  for i, layout in enumerate(model.stack_layouts):
    blocks = common.transformer_stack_entries(
        f"stages.{i}.blocks", (f"stage{i}",), layout, window=True, qkv_bias=model.config.qkv_bias
    )
    t += [dataclasses.replace(e, key=_rename_block_key(e.key)) for e in blocks]
    if i < last:
      t += [
          common.Entry(f"stages.{i}.downsample.norm.weight", (f"merge{i + 1}", "norm", "scale"), None, "unfold_norm"),
          common.Entry(f"stages.{i}.downsample.norm.bias", (f"merge{i + 1}", "norm", "bias"), None, "unfold_norm"),
          common.Entry(
              f"stages.{i}.downsample.reduction.weight", (f"merge{i + 1}", "reduction", "kernel"), None, "unfold_linear"
          ),
      ]
  for i in model.out_indices:
    t += common.norm_entries(f"norm{i}", (f"norm{i}",))
  return t
