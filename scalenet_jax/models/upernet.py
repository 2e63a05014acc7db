"""UPerNet (mmseg's `UPerHead`, with its auxiliary `FCNHead`) on a feature backbone: the §IV-E segmentor.

`Segmentor(backbone, num_classes)` runs a feature backbone (a Swin or ViT built with `out_indices`,
`models/features.py`) and returns `{"decode_head": logits, "auxiliary_head": logits}` (the second only with
`aux_channels > 0`), NCHW at the resolution of the finest feature map (stride 4 for Swin) and of the auxiliary
head's input map, as mmseg's heads give them before the loss resizes them to the labels. Inputs and outputs are NCHW like mmseg's; the convolutions run
NHWC inside.

UPerHead (mmseg `decode_heads/uper_head.py`, `channels` = 512 in the upernet_swin configs):
* PPM on the last map: for each pool scale s in (1, 2, 3, 6), adaptive average pooling to s x s (torch's
  bins, overlapping when the size is not a multiple of s), a 1x1 ConvModule, bilinear resize back
  (`align_corners=False`); the map and the four pooled branches concatenated -> 3x3 `bottleneck`.
* FPN: a 1x1 lateral ConvModule per other map; top-down, each lateral += the upsampled coarser one; a 3x3
  `fpn_convs[i]` on each (not on the PPM level); every level upsampled to the finest and concatenated ->
  3x3 `fpn_bottleneck` -> Dropout2d(0.1) -> 1x1 `conv_seg` (with bias) to the classes.
A ConvModule is conv (no bias: BatchNorm follows) -> BatchNorm -> ReLU. FCNHead (mmseg's auxiliary head of
upernet_swin): one 3x3 ConvModule (256 channels) on feature map `aux_in_index` (stage 3 of Swin = index 2)
-> Dropout2d -> `conv_seg`. BatchNorm is SyncBN in mmseg: under `jax.jit` with a data-sharded batch the batch
statistics are already global. Its running statistics live in the `batch_stats` collection (Flax's momentum
0.9 = torch's 0.1); they are not parameters.

Parameter counts (Table IX, ADE20K, 150 classes; `test_dense.py` pins these to a hand count). Counted: every
trainable tensor: the backbone (mmseg's Swin: timm's Swin minus the classifier's final norm and head, plus
norm0..norm3), both heads, BatchNorm weight and bias; not counted: BatchNorm running statistics and
`num_batches_tracked` (buffers), Swin's `relative_position_index` (buffer).

| model                     | ours (with aux head) | without aux head | Table IX |
|---------------------------|----------------------|------------------|----------|
| UPerNet Swin-T            | 59,941,862           | 59,018,064       | 59.9 M   |
| UPerNet Swin-S            | 81,259,766           | 80,335,968       | 81.3 M   |
| ScaleNet Swin-T (2x all)  | 61,372,646           |                  | 63.1 M   |
| ScaleNet Swin-S (2x all)  | 84,183,542           |                  | 84.4 M   |

The base rows agree with the auxiliary head counted (mmseg's and the Swin paper's convention for UPerNet).
Grown: every stage 2x (stack mapping, all layers reused), an r = 16 adapter pair on fc1/fc2 of every block
(10 r C each) and two LayerNorms per new block (4 C): +1.43 M for Swin-T, +2.92 M for Swin-S. The paper adds
about 3.2 M to both; no rule that scales with the blocks (adapters of one rank on some set of blocks) gives
the same increment for Swin-T's 12 and Swin-S's 24 blocks, so the paper's grown rows are not reproduced by its
stated method (cf. Table I's Swin-T row, `scalenet_grow.md` §2): Swin-S is 0.2 M short, Swin-T 1.7 M.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scalenet_jax.models import common
from scalenet_jax.models.stack import Dtype

# mmcv's ConvModule initialises its conv with kaiming_init (fan_out, normal, ReLU gain); mmseg's conv_seg
# is normal(0, 0.01) with a zero bias.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_SEG_INIT = nn.initializers.normal(0.01)


def adaptive_avg_pool(x, size: int):
  """torch's `AdaptiveAvgPool2d(size)` on NHWC: bin i of n covers [floor(i n / s), ceil((i + 1) n / s)).

  Args:
    x: (B, H, W, C).
    size: s, output height = width.

  Returns:
    (B, s, s, C).
  """

  def bins(n):
    m = np.zeros((size, n), np.float32)
    for i in range(size):
      lo, hi = (i * n) // size, -(-(i + 1) * n // size)
      m[i, lo:hi] = 1.0 / (hi - lo)
    return m

  return jnp.einsum("ph,bhwc,qw->bpqc", bins(x.shape[1]), x, bins(x.shape[2])).astype(x.dtype)


def resize(x, hw):
  """Bilinear, `align_corners=False`, no antialiasing (torch's `F.interpolate`).

  Args:
    x: (B, H, W, C).
    hw: the output (H', W').

  Returns:
    (B, H', W', C).
  """
  if tuple(x.shape[1:3]) == tuple(hw):
    return x
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), "bilinear", antialias=False).astype(x.dtype)


class ConvModule(nn.Module):
  """conv (no bias) -> BatchNorm -> ReLU, `padding = kernel // 2`.

  Attributes:
    features: output channels.
    kernel: square kernel size.
    dtype: compute dtype.

  `__call__(x, train)`: NHWC -> NHWC with `features` channels; BN uses batch statistics (and updates
  `batch_stats`) when `train`, else its running averages.
  """

  features: int
  kernel: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    p = self.kernel // 2
    x = nn.Conv(
        self.features,
        (self.kernel, self.kernel),
        padding=((p, p), (p, p)),
        use_bias=False,
        dtype=self.dtype,
        kernel_init=_CONV_INIT,
        name="conv",
    )(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name="bn")(x)
    return nn.relu(x)


class ClsSeg(nn.Module):
  """Dropout2d (whole channels) -> 1x1 `conv_seg` to the classes (mmseg's `BaseDecodeHead.cls_seg`).

  Attributes:
    num_classes: output channels.
    dropout: channel dropout rate (training only; uses the 'dropout' rng).
    dtype: compute dtype.

  `__call__(x, train)`: NHWC -> float32 NHWC logits.
  """

  num_classes: int
  dropout: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
    x = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, kernel_init=_SEG_INIT, name="conv_seg")(x)
    return x.astype(jnp.float32)


class UPerHead(nn.Module):
  """mmseg's UPerHead (module doc) on a list of NHWC maps, finest first; NHWC logits at the finest scale.

  Attributes:
    num_classes: output classes.
    channels: width of every ConvModule.
    pool_scales: PPM output sizes on the coarsest map.
    dropout: of `ClsSeg`.
    dtype: compute dtype.

  `__call__(maps, train=False)`: maps, a list of (B, H_i, W_i, C_i) finest first -> float32 logits
  (B, H_0, W_0, num_classes).
  """

  num_classes: int
  channels: int = 512
  pool_scales: tuple[int, ...] = (1, 2, 3, 6)
  dropout: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, maps, train: bool = False):
    conv = lambda name, k=1: ConvModule(self.channels, k, self.dtype, name=name)
    top = maps[-1]
    pooled = [
        resize(conv(f"psp{i}")(adaptive_avg_pool(top, s), train), top.shape[1:3])
        for i, s in enumerate(self.pool_scales)
    ]
    laterals = [conv(f"lateral{i}")(m, train) for i, m in enumerate(maps[:-1])]
    laterals.append(conv("bottleneck", 3)(jnp.concatenate([top] + pooled, axis=-1), train))
    for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse into fine
      laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[1:3])
    outs = [conv(f"fpn{i}", 3)(l, train) for i, l in enumerate(laterals[:-1])] + [laterals[-1]]
    fine = outs[0].shape[1:3]
    x = conv("fpn_bottleneck", 3)(jnp.concatenate([resize(o, fine) for o in outs], axis=-1), train)
    return ClsSeg(self.num_classes, self.dropout, self.dtype, name="cls")(x, train)


class FCNHead(nn.Module):
  """mmseg's FCNHead with one 3x3 ConvModule and no input concat (upernet_swin's auxiliary head).

  Attributes:
    num_classes: output classes.
    channels: width of the ConvModule.
    dropout: of `ClsSeg`.
    dtype: compute dtype.

  `__call__(x, train=False)`: (B, H, W, C) -> float32 logits (B, H, W, num_classes).
  """

  num_classes: int
  channels: int = 256
  dropout: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = ConvModule(self.channels, 3, self.dtype, name="conv0")(x, train)
    return ClsSeg(self.num_classes, self.dropout, self.dtype, name="cls")(x, train)


class Segmentor(nn.Module):
  """Feature backbone + UPerHead (+ FCN auxiliary head). Params `backbone`, `decode_head`, `auxiliary_head`.

  Attributes:
    backbone: a `common.StackedModel` built with `out_indices`.
    num_classes: output classes.
    channels: width of the UPerHead.
    pool_scales: PPM output sizes.
    aux_channels: width of the auxiliary head; 0 = no auxiliary head.
    aux_in_index: which feature map (position in the backbone's outputs) the auxiliary head reads.
    dropout: of both heads' `ClsSeg`.
    dtype: compute dtype of the heads.

  `__call__(images, train=False)`: images (B, H, W, C) as the backbone takes them -> `{"decode_head": ...,
  "auxiliary_head": ...}` float32 NCHW logits at the finest map's resolution (the auxiliary one at its
  map's); raises ValueError when the backbone has no `out_indices`.
  """

  backbone: Any  # a `common.StackedModel` built with `out_indices`
  num_classes: int = 150
  channels: int = 512
  pool_scales: tuple[int, ...] = (1, 2, 3, 6)
  aux_channels: int = 256  # 0: no auxiliary head
  aux_in_index: int = 2  # which feature map (position in the backbone's outputs) the auxiliary head reads
  dropout: float = 0.1
  dtype: Dtype = jnp.float32

  family: ClassVar[str] = "upernet"

  @nn.compact
  def __call__(self, images, train: bool = False):
    if self.backbone.out_indices is None:
      raise ValueError("Segmentor needs a feature backbone: build it with out_indices")
    maps = [jnp.transpose(m, (0, 2, 3, 1)) for m in self.backbone(images, train)]
    head = UPerHead(self.num_classes, self.channels, self.pool_scales, self.dropout, self.dtype, name="decode_head")
    out = {"decode_head": head(maps, train)}
    if self.aux_channels:
      aux = FCNHead(self.num_classes, self.aux_channels, self.dropout, self.dtype, name="auxiliary_head")
      out["auxiliary_head"] = aux(maps[self.aux_in_index], train)
    return {k: jnp.transpose(v, (0, 3, 1, 2)) for k, v in out.items()}

  # -- structure and weights ---------------------------------------------------------------------------
  def input_spec(self, batch: int = 1):
    """The backbone's input batch spec."""
    return self.backbone.input_spec(batch)

  def abstract_variables(self) -> dict:
    """Shapes of `params` and `batch_stats`, without computing anything."""
    return common.abstract_variables(self)

  def abstract_params(self) -> dict:
    """Shapes of `params` (`jax.ShapeDtypeStruct` leaves)."""
    return self.abstract_variables()["params"]

  def init_variables(self, seed: int) -> dict:
    """Freshly initialised `params` and `batch_stats` as host numpy arrays."""
    x = np.zeros(self.input_spec().shape, self.input_spec().dtype)
    return jax.tree.map(np.asarray, jax.jit(self.init)(jax.random.key(seed), x))

  def head_entries(self) -> list[common.Entry]:
    """mmseg keys of the heads, with their paths in the variables tree ('params' / 'batch_stats' first)."""
    n_maps = len(self.backbone.out_indices)
    t = []
    for i in range(len(self.pool_scales)):
      t += _conv_module_entries(f"decode_head.psp_modules.{i}.1", ("decode_head", f"psp{i}"))
    t += _conv_module_entries("decode_head.bottleneck", ("decode_head", "bottleneck"))
    for i in range(n_maps - 1):
      t += _conv_module_entries(f"decode_head.lateral_convs.{i}", ("decode_head", f"lateral{i}"))
      t += _conv_module_entries(f"decode_head.fpn_convs.{i}", ("decode_head", f"fpn{i}"))
    t += _conv_module_entries("decode_head.fpn_bottleneck", ("decode_head", "fpn_bottleneck"))
    t += _conv_seg_entries("decode_head")
    if self.aux_channels:
      t += _conv_module_entries("auxiliary_head.convs.0", ("auxiliary_head", "conv0"))
      t += _conv_seg_entries("auxiliary_head")
    return t


def _conv_module_entries(key: str, path: tuple[str, ...]) -> list[common.Entry]:
  p, s = ("params",) + path, ("batch_stats",) + path
  return [
      common.Entry(f"{key}.conv.weight", p + ("conv", "kernel"), None, "conv"),
      common.Entry(f"{key}.bn.weight", p + ("bn", "scale"), None, "same"),
      common.Entry(f"{key}.bn.bias", p + ("bn", "bias"), None, "same"),
      common.Entry(f"{key}.bn.running_mean", s + ("bn", "mean"), None, "same"),
      common.Entry(f"{key}.bn.running_var", s + ("bn", "var"), None, "same"),
  ]


def _conv_seg_entries(head: str) -> list[common.Entry]:
  p = ("params", head, "cls", "conv_seg")
  return [
      common.Entry(f"{head}.conv_seg.weight", p + ("kernel",), None, "conv"),
      common.Entry(f"{head}.conv_seg.bias", p + ("bias",), None, "same"),
  ]


def swin_upernet(size: str, num_classes: int = 150, aux: bool = True, **backbone_kwargs) -> Segmentor:
  """UPerNet on `swin_{size}_patch4_window7_224` as mmseg's upernet_swin configs build it (all four stages
  out, channels 512, auxiliary FCN head on stage 3).

  Args:
    size: `'tiny'`, `'small'` or `'base'`.
    num_classes: segmentation classes (150: ADE20K).
    aux: with the auxiliary FCN head (256 channels).
    **backbone_kwargs: `StackedModel` runtime fields of the backbone (dtype, layouts, ...).

  Returns:
    The `Segmentor`.
  """
  from scalenet_jax.models import registry  # pylint: disable=g-import-not-at-top

  backbone = registry.create_model(f"swin_{size}_patch4_window7_224", out_indices=(0, 1, 2, 3), **backbone_kwargs)
  return Segmentor(backbone, num_classes, aux_channels=256 if aux else 0)
