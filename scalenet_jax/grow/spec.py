"""ExpansionSpec: what a ScaleNet-grow (or baseline) depth expansion does, and the layouts it implies.

Mappings (0-based; L = layers of the reused stack, R = reuse times, S = reused subset):
* interpolate: every reused layer is followed by its R-1 copies: 0,0,1,1,2,2,...
* stack:       the R-1 extra rounds of S follow the last layer of S (for S = all: 0..L-1,0..L-1).
* explicit:    a list of core indices, one per scaled layer.
Adjustment scope: `reused` = every instance of a reused layer gets an adjustment module, layers outside S
get none (the paper's DeiT counts); `all` = every block of the model gets one (the paper's Swin counts).
For Swin, S is a set of *stages* (default: the last one) and each chosen stage is expanded as a whole.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

from scalenet_jax.models.stack import ADJUST_KINDS, StackLayout
from scalenet_jax.errors import ConfigError

KINDS = ("scalenet", "random", "stack", "interpolate", "swa", "scratch")
MAPPINGS = ("interpolate", "stack")
# Which blocks carry adjustment modules (scalenet_grow.md §2, the paper's parameter counts): the instances
# of reused layers only (DeiT), or every block of the model, reused or not (Swin).
ADJUST_SCOPES = ("reused", "all")
FAMILY_ADJUST_SCOPE = {"swin": "all"}  # default of other families: reused


def default_adjust_scope(family: str) -> str:
  """The adjustment scope of a model family when the config leaves it empty: `all` for Swin, else `reused`."""
  return FAMILY_ADJUST_SCOPE.get(family, "reused")


TRAINABLE = ("all", "adjust_ln_head", "adjust_ln")  # adjust_ln: adjustment modules and norms only


@dataclasses.dataclass(frozen=True)
class ExpansionSpec:
  """What a depth expansion does; validated on construction.

  Attributes:
    kind: one of `KINDS`: `scalenet`, the baselines `random` / `stack` / `interpolate` / `swa`, or
      `scratch` (an R-times deeper random init).
    reuse: R, how many times each reused layer runs.
    mapping: `interpolate`, `stack` or an explicit tuple of core indices, one per scaled layer (module
      docstring).
    subset: ViT / decoder: the reused layer indices (default all); Swin: the expanded stages (default the
      last).
    adjust: adjustment module of the reused layers, one of `models.stack.ADJUST_KINDS`.
    adjust_scope: `reused` | `all` (see `ADJUST_SCOPES`).
    rank: rank of the adjustment modules (> 0 unless `adjust` is `none`).
    act: activation of the adapter.
    trainable: one of `TRAINABLE`: everything, or the adjustment modules and norms (and the head).
    num_new_layers: baselines: new layers per grown stack; 0 = parameter-matched to the ScaleNet model.
    seed: init of adjustment modules / random and SWA layers.

  Raises:
    ConfigError: an unknown kind, mapping, adjustment, scope or trainable set, R < 1, rank <= 0, or
      a negative `num_new_layers`.
  """

  kind: str = "scalenet"
  reuse: int = 2  # R
  mapping: Union[str, tuple[int, ...]] = "interpolate"
  subset: Optional[tuple[int, ...]] = None  # ViT: layer indices (default all); Swin: stages (default last)
  adjust: str = "adapter"
  adjust_scope: str = "reused"  # reused | all (see ADJUST_SCOPES)
  rank: int = 16
  act: str = "gelu"
  trainable: str = "all"
  num_new_layers: int = 0  # baselines: 0 = parameter-matched to the ScaleNet model
  seed: int = 0  # init of adjustment modules / random and SWA layers

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ConfigError(f"unknown expansion kind {self.kind!r}; choose one of {KINDS}")
    if int(self.reuse) < 1:
      raise ConfigError(f"reuse times R must be >= 1, got {self.reuse}")
    if isinstance(self.mapping, str) and self.mapping not in MAPPINGS:
      raise ConfigError(f"unknown mapping {self.mapping!r}; choose one of {MAPPINGS} or give a list of layer indices")
    if self.adjust not in ADJUST_KINDS:
      raise ConfigError(f"unknown adjustment {self.adjust!r}; choose one of {ADJUST_KINDS}")
    if self.adjust_scope not in ADJUST_SCOPES:
      raise ConfigError(f"unknown adjustment scope {self.adjust_scope!r}; choose one of {ADJUST_SCOPES}")
    if self.adjust != "none" and self.rank <= 0:
      raise ConfigError(f"adjustment rank must be > 0, got {self.rank}")
    if self.trainable not in TRAINABLE:
      raise ConfigError(f"unknown trainable set {self.trainable!r}; choose one of {TRAINABLE}")
    if self.num_new_layers < 0:
      raise ConfigError(f"num_new_layers must be >= 0, got {self.num_new_layers}")


def stack_layout(num_layers: int, spec: ExpansionSpec, subset: Optional[Sequence[int]] = None) -> StackLayout:
  """ScaleNet layout of one stack of `num_layers` pretrained layers.

  Args:
    num_layers: L, the stack's pretrained depth.
    spec: the expansion (reuse R, mapping, adjustment and its scope).
    subset: the reused layer indices S; None = all.

  Returns:
    The `StackLayout`: the mapping (one core index per scaled layer) and the adjustment kind of each.

  Raises:
    ConfigError: an empty or out-of-range subset, or an explicit mapping of the wrong length (L + (R-1)·|S|)
      or with out-of-range indices.
  """
  subset = sorted(set(range(num_layers) if subset is None else subset))
  bad = [s for s in subset if not 0 <= s < num_layers]
  if bad:
    raise ConfigError(f"reused layer index {bad[0]} out of range: the stack has {num_layers} layers")
  if not subset:
    raise ConfigError("the reused subset is empty")
  r = int(spec.reuse)
  if isinstance(spec.mapping, tuple):
    mapping = list(spec.mapping)
    want = num_layers + (r - 1) * len(subset)
    if len(mapping) != want:
      raise ConfigError(
          f"explicit mapping has {len(mapping)} entries; expected L' = {want} "
          f"(L={num_layers}, R={r}, |subset|={len(subset)})"
      )
    bad = [m for m in mapping if not 0 <= m < num_layers]
    if bad:
      raise ConfigError(f"explicit mapping index {bad[0]} out of range [0, {num_layers})")
  elif spec.mapping == "interpolate":
    mapping = [l for l in range(num_layers) for _ in range(r if l in subset else 1)]
  else:  # stack
    last = subset[-1]
    mapping = list(range(last + 1)) + subset * (r - 1) + list(range(last + 1, num_layers))
  carries = set(range(num_layers)) if spec.adjust_scope == "all" else set(subset)
  adjust = tuple(spec.adjust if m in carries else "none" for m in mapping)
  return StackLayout(num_layers, tuple(mapping), adjust)


def expanded_stacks(depths: Sequence[int], spec: ExpansionSpec) -> tuple[int, ...]:
  """Indices of the stacks that grow.

  Args:
    depths: the depth of every stack of the plain model.
    spec: the expansion (`subset` names the stages of a hierarchical model).

  Returns:
    `(0,)` for a single-stack model (ViT, decoder LM), else the chosen stages (Swin; default the last).

  Raises:
    ConfigError: a stage out of range.
  """
  if len(depths) == 1:
    return (0,)
  stages = tuple(spec.subset) if spec.subset is not None else (len(depths) - 1,)
  bad = [s for s in stages if not 0 <= s < len(depths)]
  if bad:
    raise ConfigError(f"stage {bad[0]} out of range: the model has stages 0..{len(depths) - 1}")
  return stages


def model_layouts(depths: Sequence[int], spec: ExpansionSpec) -> tuple[StackLayout, ...]:
  """Layouts of every stack of a model.

  A single stack (ViT) reuses `spec.subset` of its layers; a hierarchical model (Swin) expands each
  chosen stage as a whole, and with scope `all` the other stages still give every block an adjustment.

  Args:
    depths: the depth of every stack of the plain model.
    spec: the expansion.

  Returns:
    One `StackLayout` per stack.

  Raises:
    ConfigError: as in `stack_layout` and `expanded_stacks`.
  """
  if len(depths) == 1:
    return (stack_layout(depths[0], spec, spec.subset),)
  grown = expanded_stacks(depths, spec)
  # With scope 'all' the stages that do not grow still give every block an adjustment module.
  kept = lambda d: StackLayout(d, tuple(range(d)), (spec.adjust,) * d if spec.adjust_scope == "all" else ("none",) * d)
  return tuple(stack_layout(d, spec) if i in grown else kept(d) for i, d in enumerate(depths))
