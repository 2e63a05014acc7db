"""Dense prediction (§IV-E): feature backbones and UPerNet weights in and out, growth, and the freezing recipes.

* Weights: mmdet / mmseg checkpoints (the whole model under `backbone.`, `decode_head.`, `auxiliary_head.`,
  `neck.`, `roi_head.` ...; optionally wrapped as mmcv saves them, `{"meta": ..., "state_dict": ...}`) in and
  out, strict: a missing, unexpected or mis-shaped key is a `CheckpointError` naming it, and a detector's
  other parts are skipped only when named (`skip`). The Swin names are in `models/features.py`, the heads'
  in `models/upernet.py`. An ImageNet classifier's params become a feature backbone by
  `backbone_from_classifier` (mmseg's start: the classifier's norm and head dropped, fresh norm0..norm3).
* Growth: `expand_segmentor` grows the backbone of a segmentor with an `ExpansionSpec` (the paper's dense
  setting: every stage 2x, all layers reused, `subset=(0, 1, 2, 3)`); the heads are kept.
* Freezing: `trainable_mask` = the expansion's trainable set on the backbone + the heads by recipe:
  `segmentation` trains the whole decode and auxiliary heads; `detection` freezes a head except its final
  layers. Those are the layers that map features to the task's outputs: in mmdet's Mask R-CNN
  `roi_head.bbox_head.fc_cls` / `fc_reg`, `roi_head.mask_head.conv_logits` and `rpn_head.rpn_cls` /
  `rpn_reg`; in UPerNet (and its FCN auxiliary head) the 1x1 classifier `conv_seg` (`HEAD_FINAL_LAYERS`).
  BatchNorm running statistics are not parameters: a recipe that freezes a head should also run its
  BatchNorms with running statistics (mmdet's `norm_eval`), which is the training loop's choice.

The segmentation pipeline over these pieces (`pipeline = "segment"`) is `scalenet_jax.segmenter`
(docs/dense.md).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional, Sequence

import jax
import numpy as np

from scalenet_jax import convert
from scalenet_jax.errors import CheckpointError, ConfigError
from scalenet_jax.grow import expand as expand_lib
from scalenet_jax.grow.spec import ExpansionSpec
from scalenet_jax.models import stack as stack_lib
from scalenet_jax.models.upernet import Segmentor
from scalenet_jax.train import optim

BACKBONE = "backbone."
RECIPES = ("segmentation", "detection")
HEAD_FINAL_LAYERS = (r"^(decode_head|auxiliary_head)/cls/conv_seg/",)


# ----------------------------------------------------------------------------------------------------
# mmcv checkpoints
# ----------------------------------------------------------------------------------------------------
def unwrap(checkpoint: dict) -> dict:
  """The state dict of an mmcv / mmengine checkpoint (`state_dict` next to `meta`, `optimizer`), or the dict."""
  if isinstance(checkpoint.get("state_dict"), dict):
    return checkpoint["state_dict"]
  if "meta" in checkpoint:
    raise CheckpointError(f"checkpoint has 'meta' but no 'state_dict' (top-level keys: {sorted(checkpoint)[:8]})")
  return checkpoint


def _split(state_dict: dict, prefix: str, skip: Sequence[str]) -> dict:
  """The keys under `prefix`, prefix removed; any other key that no `skip` prefix names is an error."""
  ours, other = {}, []
  for k, v in state_dict.items():
    if k.startswith(prefix):
      ours[k[len(prefix) :]] = v
    elif not k.startswith(tuple(skip)):
      other.append(k)
  if other:
    raise CheckpointError(
        f"unexpected key in checkpoint: {other[0]!r} ({len(other)} keys outside {prefix!r}; "
        f"name the parts to leave out with skip=, e.g. ('neck.', 'rpn_head.', 'roi_head.') for Mask R-CNN)"
    )
  return ours


def _buffers(backbone, prefix: str) -> dict[str, np.ndarray]:
  """Buffers mmseg's Swin keeps in its state dict (so that torch's strict load accepts our exports)."""
  if backbone.family != "swin":
    return {}
  cfg, out = backbone.config, {}
  for i, layout in enumerate(backbone.stack_layouts):
    index = stack_lib.WindowSpec.for_stage(cfg.stage_resolution(i), cfg.window_size, pad=True).rel_pos_index()
    for j in range(layout.depth):
      out[f"{prefix}stages.{i}.blocks.{j}.attn.w_msa.relative_position_index"] = index.astype(np.int64)
  return out


def load_backbone(state_dict: dict, backbone, *, prefix: str = BACKBONE, skip: Sequence[str] = ()) -> dict:
  """Params of the plain feature `backbone` from an mmdet/mmseg state dict (strict; `prefix=''` for a bare
  backbone state dict). Keys outside `prefix` must be named by `skip` (e.g. `('decode_head.',
  'auxiliary_head.')`)."""
  return convert.timm_to_flax(_split(unwrap(state_dict), prefix, skip), backbone)


def backbone_to_mmseg(params, backbone, *, prefix: str = BACKBONE) -> dict[str, np.ndarray]:
  """mmdet/mmseg-named state dict of a feature backbone (an expanded one unrolled, with its adapters)."""
  out = {prefix + k: v for k, v in convert.flax_to_timm(params, backbone).items()}
  return {**out, **_buffers(backbone, prefix)}


def backbone_from_classifier(params: dict, backbone) -> dict:
  """A classifier's params (same architecture) as the feature `backbone`'s: what the backbone has is taken
  (Swin drops the final norm, both drop the head), each `norm{i}` it adds starts fresh (ones, zeros: a
  LayerNorm's init, as mmseg starts from an ImageNet checkpoint)."""
  out = {}
  for k, a in backbone.abstract_params().items():
    if k in params:
      out[k] = params[k]
    elif re.fullmatch(r"norm\d+", k):
      out[k] = {"scale": np.ones(a["scale"].shape, np.float32), "bias": np.zeros(a["bias"].shape, np.float32)}
    else:
      raise CheckpointError(f"the classifier's params have no {k!r} for the feature backbone")
  return out


@dataclasses.dataclass(frozen=True)
class _Variables:
  """A segmentor seen by `convert`'s table-driven strict loops: `params` and `batch_stats` as one tree."""

  segmentor: Segmentor
  family = "upernet"

  @property
  def is_plain(self):
    return self.segmentor.backbone.is_plain

  def abstract_params(self):
    return self.segmentor.abstract_variables()

  def key_table(self):
    backbone = [
        dataclasses.replace(e, key=BACKBONE + e.key, path=("params", "backbone") + e.path)
        for e in self.segmentor.backbone.key_table()
    ]
    return backbone + self.segmentor.head_entries()

  def checkpoint_filter(self, state_dict):
    # A counter of batches seen: torch's BatchNorm reads it only without a momentum (mmseg's has 0.1).
    return {k: v for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}


def load_segmentor(state_dict: dict, segmentor: Segmentor) -> dict:
  """`{"params", "batch_stats"}` of a segmentor (plain backbone) from an mmseg state dict, strictly."""
  return convert.timm_to_flax(unwrap(state_dict), _Variables(segmentor))


def segmentor_to_mmseg(variables: dict, segmentor: Segmentor) -> dict[str, np.ndarray]:
  """mmseg-named state dict of a segmentor, with the buffers torch's strict `load_state_dict` expects."""
  out = convert.flax_to_timm(variables, _Variables(segmentor))
  for k in [k for k in out if k.endswith(".bn.running_mean")]:
    out[k.replace(".running_mean", ".num_batches_tracked")] = np.zeros((), np.int64)
  return {**out, **_buffers(segmentor.backbone, BACKBONE)}


# ----------------------------------------------------------------------------------------------------
# Growth and freezing
# ----------------------------------------------------------------------------------------------------
def expanded_segmentor(segmentor: Segmentor, spec: ExpansionSpec) -> Segmentor:
  """The structure `expand_segmentor` produces (no params: for counting)."""
  return segmentor.clone(backbone=expand_lib.expanded_model(segmentor.backbone, spec))


def expand_segmentor(variables: dict, segmentor: Segmentor, spec: ExpansionSpec):
  """(grown segmentor, its variables): the backbone expanded by `grow.expand`, the heads unchanged."""
  grown, params = expand_lib.expand(variables["params"]["backbone"], segmentor.backbone, spec)
  return segmentor.clone(backbone=grown), {**variables, "params": {**variables["params"], "backbone": params}}


def trainable_mask(params, base_backbone, spec: Optional[ExpansionSpec], recipe: str = "segmentation") -> dict:
  """Bool pytree like a segmentor's `params`: the backbone under `spec`'s trainable set (`grow.expand`'s
  patterns; for baselines under a frozen set, bool rows on the stacked core leaves as `builder.trainable_mask`
  gives), the heads by `recipe` (module doc). `base_backbone` is the plain backbone the spec expanded."""
  if recipe not in RECIPES:
    raise ConfigError(f"unknown freezing recipe {recipe!r}; choose one of {RECIPES}")
  mask = {}
  if spec is None:
    mask["backbone"] = optim.trainable_mask(params["backbone"], "all")
  else:
    # The classifier's `adjust_ln_head` trains its head; here the recipe decides about the heads.
    backbone_spec = dataclasses.replace(spec, trainable="adjust_ln") if spec.trainable == "adjust_ln_head" else spec
    mask["backbone"] = optim.trainable_mask(params["backbone"], list(expand_lib.trainable_patterns(backbone_spec)))
    for name, rows in expand_lib.trainable_rows(base_backbone, backbone_spec).items():
      mask["backbone"][name]["core"] = jax.tree.map(lambda _: rows, mask["backbone"][name]["core"])
  heads = {k: v for k, v in params.items() if k != "backbone"}
  mask.update(optim.trainable_mask(heads, "all" if recipe == "segmentation" else list(HEAD_FINAL_LAYERS)))
  return mask
