"""Search spaces, architecture encoding, scaling and MACs/params counting for ScaleNet-search.

The space (IR+SE stages, kernels, scaling candidates, budgets), the encodings `Alpha`, `Scaling` and
`Arch`, the hidden-width and SE rules of `apply_scaling`, the MACs/params counters and the supernet
buffer choice (`coupling`) are described in `docs/nas.md` §1.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

KERNELS = (3, 5, 7)
COUPLINGS = ("bcnet", "left")
COUNTERS = ("conv", "official")
HIDDEN_RULES = ("supernet", "subnet")
SE_RULES = ("hidden", "input")


# ----------------------------------------------------------------------------------------------------
# Space definitions
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One stage of IR+SE blocks. `t` is the expansion ratio (1 ⇒ no expand conv)."""

  c_out: int
  stride: int
  t: int
  depth_choices: tuple[int, ...]

  @property
  def searchable(self) -> bool:
    """Only stages with several depth choices have their base depth searched (all are depth-scaled)."""
    return len(self.depth_choices) > 1


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """A ScaleNet search space (see `docs/nas.md` §1)."""

  name: str
  in_channels: int
  num_classes: int
  stem_channels: int
  stem_kernel: int
  stem_stride: int
  head_channels: int
  stages: tuple[StageSpec, ...]
  mult_candidates: tuple[tuple[float, ...], ...]
  res_candidates: tuple[tuple[int, ...], ...]
  base_target: float
  base_tol: float
  stage_tol: float
  kernels: tuple[int, ...] = KERNELS
  se_reduction: int = 4
  coupling: str = "bcnet"  # 'bcnet' | 'left' (docs/nas.md §1, §2)
  counter: str = "conv"  # MACs counter of the budgets: 'conv' | 'official'

  def __post_init__(self):
    if len(self.mult_candidates) != len(self.res_candidates):
      raise ValueError(f"space {self.name!r}: mult_candidates and res_candidates differ in length")
    if self.mult_candidates[0] != (1.0,):
      raise ValueError(f"space {self.name!r}: scaling stage 0 must have the single multiplier 1.0")
    if self.coupling not in COUPLINGS:
      raise ValueError(f"space {self.name!r}: coupling {self.coupling!r} not in {COUPLINGS}")
    if self.counter not in COUNTERS:
      raise ValueError(f"space {self.name!r}: counter {self.counter!r} not in {COUNTERS}")

  @property
  def num_scaling_stages(self) -> int:
    """M + 1 (stages j = 0..M)."""
    return len(self.mult_candidates)

  @property
  def max_mult(self) -> float:
    return max(max(c) for c in self.mult_candidates)

  @property
  def base_resolution(self) -> int:
    return self.res_candidates[0][0]

  def max_layers(self, s: int, j: int | None = None) -> int:
    """Layer slots of stage s in the supernet (or, with `j`, in the paths of scaling stages 0..j)."""
    m = self.max_mult if j is None else max(self.mult_candidates[j])
    return scaled_depth(max(self.stages[s].depth_choices), m)

  def stage_budget(self, j: int, base_macs: float) -> tuple[float, float]:
    """(target, tolerance) MACs of scaling stage j for a base model of `base_macs`."""
    return (2**j) * base_macs, (2**j) * self.stage_tol

  def width_counts(self) -> tuple[int, ...]:
    return tuple(len(c) for c in self.mult_candidates)

  def scalings(self, j: int) -> list["Scaling"]:
    """Every S of scaling stage j (grid of d × w × r)."""
    m, rs = self.mult_candidates[j], self.res_candidates[j]
    return [Scaling(d, w, r) for d in m for w in m for r in rs]


def _imagenet_space(coupling: str = "bcnet") -> SearchSpace:
  def st(c, s, t, deps):
    return StageSpec(c, s, t, tuple(deps))

  four = (1, 2, 3, 4)
  return SearchSpace(
      name="imagenet",
      in_channels=3,
      num_classes=1000,
      stem_channels=32,
      stem_kernel=3,
      stem_stride=2,
      head_channels=1280,
      stages=(
          st(16, 1, 1, (1,)),
          st(32, 2, 6, four),
          st(40, 2, 6, four),
          st(80, 2, 6, four),
          st(96, 1, 6, four),
          st(192, 2, 6, four),
          st(320, 1, 6, (1,)),
      ),
      mult_candidates=(
          (1.0,),
          (1.04, 1.08, 1.12, 1.16),
          (1.20, 1.24, 1.28, 1.32, 1.36),
          (1.40, 1.44, 1.48, 1.52, 1.56, 1.60, 1.64),
      ),
      res_candidates=((224,), (224, 240, 256), (272, 288, 304), (320, 336, 354)),
      base_target=306e6,
      base_tol=25e6,
      stage_tol=50e6,
      counter="official",
      coupling=coupling,
  )


# (base_target, base_tol, stage_tol) of the fmnist space per stem stride: centred on the median base
# model of 3,000 sampled α at 32 px (9.07 MMACs at stride 1, range 5.3-14.0M; 2.30 at stride 2, range
# 1.3-3.6M), the tolerances the same fractions of it (1/6 and 2/9).
_FMNIST_BUDGETS = {1: (9.0e6, 1.5e6, 2.0e6), 2: (2.3e6, 0.38e6, 0.51e6)}


def _fmnist_space(in_channels: int = 1, coupling: str = "bcnet", stem_stride: int = 1) -> SearchSpace:
  """Small space for 32×32 Fashion-MNIST (28 padded to 32). The budget is centred on the median base
  model so that a good share of random α are feasible; the stage-1/2 grids span ≈1.6–4.4× and ≈3.3–8.7×
  the base MACs so that 2× and 4× sit inside them. `stem_stride=2` (as the ImageNet space's stem)
  halves every feature map: ~4× fewer MACs, what a supernet trained for several epochs on 2 CPU cores
  needs (`configs/nas_fmnist_search.py`); its budgets are re-centred (`_FMNIST_BUDGETS`)."""
  if stem_stride not in _FMNIST_BUDGETS:
    raise ValueError(f"fmnist space: stem_stride must be one of {sorted(_FMNIST_BUDGETS)}, got {stem_stride}")
  target, base_tol, stage_tol = _FMNIST_BUDGETS[stem_stride]

  def st(c, s, t, deps):
    return StageSpec(c, s, t, tuple(deps))

  return SearchSpace(
      name="fmnist",
      in_channels=in_channels,
      num_classes=10,
      stem_channels=16,
      stem_kernel=3,
      stem_stride=stem_stride,
      head_channels=256,
      stages=(st(16, 1, 1, (1,)), st(24, 2, 4, (1, 2, 3)), st(40, 2, 4, (1, 2, 3)), st(64, 1, 4, (1,))),
      mult_candidates=((1.0,), (1.05, 1.1, 1.15, 1.2), (1.25, 1.3, 1.35, 1.4, 1.45)),
      res_candidates=((32,), (32, 36, 40), (40, 44, 48)),
      base_target=target,
      base_tol=base_tol,
      stage_tol=stage_tol,
      coupling=coupling,
  )


def _tiny_space(in_channels: int = 1, coupling: str = "bcnet", stem_stride: int = 2) -> SearchSpace:
  """Same structure, a few thousand MACs-scale layers: for unit tests and one-step trainer tests. Its stem
  has stride 2 only; `stem_stride` is accepted so that a config of the stride-2 fmnist space runs on it
  (`configs/nas_fmnist_search.py`'s quick mode swaps in this space and keeps the space's kwargs)."""
  if stem_stride != 2:
    raise ValueError(f"tiny space: the stem has stride 2 only, got stem_stride={stem_stride}")

  def st(c, s, t, deps):
    return StageSpec(c, s, t, tuple(deps))

  return SearchSpace(
      name="tiny",
      in_channels=in_channels,
      num_classes=10,
      stem_channels=8,
      stem_kernel=3,
      stem_stride=2,
      head_channels=32,
      stages=(st(8, 1, 1, (1,)), st(16, 2, 3, (1, 2)), st(24, 2, 3, (1, 2))),
      mult_candidates=((1.0,), (1.25, 1.5)),
      res_candidates=((16,), (16, 20)),
      base_target=110e3,
      base_tol=45e3,
      stage_tol=60e3,
      coupling=coupling,
  )


_SPACES = {"imagenet": _imagenet_space, "fmnist": _fmnist_space, "tiny": _tiny_space}


def space_kwargs(space: SearchSpace) -> dict:
  """The `get_space(space.name, **kwargs)` arguments that rebuild `space`'s architectures (coupling, which
  changes only the supernet's buffers, is left out)."""
  if space.name == "imagenet":
    return {}
  kwargs = {"in_channels": space.in_channels}
  if space.stem_stride != _SPACES[space.name](in_channels=space.in_channels).stem_stride:
    kwargs["stem_stride"] = space.stem_stride
  return kwargs


def get_space(name: str, **kwargs) -> SearchSpace:
  """A registered search space by name ('imagenet' | 'fmnist' | 'tiny'); kwargs: `coupling` (all),
  `in_channels` ('fmnist', 'tiny'), `stem_stride` ('fmnist': 1 or 2; 'tiny': 2)."""
  if name not in _SPACES:
    raise ValueError(f"unknown search space {name!r}; known: {sorted(_SPACES)}")
  return _SPACES[name](**kwargs)


# ----------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Alpha:
  """Base architecture: per-stage base depth and per-layer kernel sizes (len(kernels[s]) == depths[s])."""

  depths: tuple[int, ...]
  kernels: tuple[tuple[int, ...], ...]

  def to_dict(self) -> dict:
    return {"depths": list(self.depths), "kernels": [list(k) for k in self.kernels]}

  @classmethod
  def from_dict(cls, d: dict) -> "Alpha":
    return cls(tuple(int(x) for x in d["depths"]), tuple(tuple(int(k) for k in ks) for ks in d["kernels"]))


@dataclasses.dataclass(frozen=True)
class Scaling:
  """Scaling strategy S = (d, w, r): depth and width multipliers, input resolution in pixels."""

  d: float
  w: float
  r: int

  def to_dict(self) -> dict:
    return {"d": self.d, "w": self.w, "r": self.r}

  @classmethod
  def from_dict(cls, d: dict) -> "Scaling":
    return cls(float(d["d"]), float(d["w"]), int(d["r"]))


def validate_alpha(alpha: Alpha, space: SearchSpace) -> None:
  """Raises ValueError naming the first inconsistency between `alpha` and `space`."""
  if len(alpha.depths) != len(space.stages) or len(alpha.kernels) != len(space.stages):
    raise ValueError(f"alpha has {len(alpha.depths)} stages, space {space.name!r} has {len(space.stages)}")
  for s, (n, ks, st) in enumerate(zip(alpha.depths, alpha.kernels, space.stages)):
    if n not in st.depth_choices:
      raise ValueError(f"alpha stage {s}: depth {n} not in {st.depth_choices}")
    if len(ks) != n:
      raise ValueError(f"alpha stage {s}: {len(ks)} kernels for depth {n}")
    for k in ks:
      if k not in space.kernels:
        raise ValueError(f"alpha stage {s}: kernel {k} not in {space.kernels}")


def left_sides(space: SearchSpace) -> dict:
  """BCNet slice sides with every module left-aligned: {'stem': 0, 'head': 0, 'stages': per stage one
  0/1 per layer slot (`space.max_layers(s)`)} (1 = right-aligned)."""
  return {"stem": 0, "head": 0, "stages": tuple((0,) * space.max_layers(s) for s in range(len(space.stages)))}


def validate_sides(sides: dict, space: SearchSpace) -> None:
  """Raises ValueError unless `sides` has the `left_sides` structure with 0/1 values (only 0 when
  `space.coupling` is 'left', whose supernet has no right-aligned slices)."""
  ref = left_sides(space)
  if set(sides) != set(ref) or [len(x) for x in sides["stages"]] != [len(x) for x in ref["stages"]]:
    raise ValueError(f"sides must have the structure of left_sides(space) {ref}, got {sides}")
  values = {sides["stem"], sides["head"], *(v for st in sides["stages"] for v in st)}
  allowed = {0} if space.coupling == "left" else {0, 1}
  if not values <= allowed:
    raise ValueError(f"sides take values {sorted(allowed)} with coupling {space.coupling!r}, got {sorted(values)}")


# ----------------------------------------------------------------------------------------------------
# Concrete architecture
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LayerArch:
  c_in: int
  c_out: int
  hidden: int
  se: int
  kernel: int
  stride: int
  expand: bool  # t > 1: has the 1×1 expand conv
  residual: bool  # stride 1 and same base channels


@dataclasses.dataclass(frozen=True)
class Arch:
  """A concrete network: exactly the shapes a stand-alone model is built with."""

  in_channels: int
  num_classes: int
  resolution: int
  stem_channels: int
  stem_kernel: int
  stem_stride: int
  head_channels: int
  stages: tuple[tuple[LayerArch, ...], ...]

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "Arch":
    d = dict(d)
    d["stages"] = tuple(tuple(LayerArch(**l) for l in st) for st in d["stages"])
    return cls(**d)


def scaled_depth(n_base: int, d: float) -> int:
  # The -1e-9 guards against float products such as 50 * 1.1 = 55.00000000000001. The official code
  # takes a plain ceil; no product of the ImageNet grid (depths, channels, multipliers) lands on such
  # a value, so both agree there.
  return math.ceil(n_base * d - 1e-9)


def scaled_channels(c: int, w: float) -> int:
  # Same guard and the same agreement with the official ceil on the ImageNet grid.
  return math.ceil(c * w - 1e-9)


def hidden_channels(c_in_base: int, t: int, w: float, rule: str = "supernet") -> int:
  """Expanded width of an IR block with base input `c_in_base` (`docs/nas.md` §1: the two rules)."""
  if rule == "supernet":
    return scaled_channels(int(round(c_in_base * t)), w)
  if rule == "subnet":
    return int(round(scaled_channels(c_in_base, w) * t))
  raise ValueError(f"hidden_rule {rule!r} not in {HIDDEN_RULES}")


def se_channels(hidden: int, t: int, space: SearchSpace, rule: str = "hidden") -> int:
  """SE squeeze width of a block with `hidden` expanded channels (`docs/nas.md` §1: the two rules)."""
  if rule == "hidden":
    return hidden // space.se_reduction
  if rule == "input":
    return max(1, round(hidden / (space.se_reduction * t)))
  raise ValueError(f"se_rule {rule!r} not in {SE_RULES}")


def apply_scaling(
    alpha: Alpha, S: Scaling, space: SearchSpace, hidden_rule: str = "supernet", se_rule: str = "hidden"
) -> Arch:
  """Concrete architecture of base model `alpha` scaled by `S` (see `docs/nas.md` §1)."""
  validate_alpha(alpha, space)
  stem = scaled_channels(space.stem_channels, S.w)
  c_in_base, c_in = space.stem_channels, stem
  stages = []
  for s, st in enumerate(space.stages):
    n_base = alpha.depths[s]
    n = scaled_depth(n_base, S.d)
    kernels = tuple(alpha.kernels[s]) + (alpha.kernels[s][-1],) * (n - n_base)
    c_out = scaled_channels(st.c_out, S.w)
    layers = []
    for l in range(n):
      # t = 1: the depthwise acts on the input directly (both rules give c_in).
      hidden = hidden_channels(c_in_base, st.t, S.w, hidden_rule)
      stride = st.stride if l == 0 else 1
      layers.append(
          LayerArch(
              c_in=c_in,
              c_out=c_out,
              hidden=hidden,
              se=se_channels(hidden, st.t, space, se_rule),
              kernel=kernels[l],
              stride=stride,
              expand=st.t != 1,
              residual=(stride == 1 and c_in_base == st.c_out),
          )
      )
      c_in_base, c_in = st.c_out, c_out
    stages.append(tuple(layers))
  return Arch(
      in_channels=space.in_channels,
      num_classes=space.num_classes,
      resolution=int(S.r),
      stem_channels=stem,
      stem_kernel=space.stem_kernel,
      stem_stride=space.stem_stride,
      head_channels=space.head_channels,
      stages=tuple(stages),
  )


# ----------------------------------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------------------------------
def _out(h: int, stride: int, k: int = 1, out_size: str = "conv") -> int:
  """Output size of a k×k conv with padding k//2: ceil(h / stride) ('conv'), or the official counter's
  (h + 2p − k + 1) // stride ('official'; floor(h / stride) for odd k)."""
  if out_size == "official":
    return (h + 2 * (k // 2) - k + 1) // stride
  if out_size != "conv":
    raise ValueError(f"out_size must be 'conv' or 'official', got {out_size!r}")
  return -(-h // stride)


def _taps(h: int, k: int, stride: int, include_padding: bool, out_size: str = "conv") -> int:
  """Σ over output positions of the kernel taps that are multiplied (2-D, square), padding k//2."""
  n = _out(h, stride, k, out_size)
  if include_padding:
    return n * n * k * k
  p = k // 2
  t1 = sum(min(i * stride - p + k, h) - max(i * stride - p, 0) for i in range(n))
  return t1 * t1


def count_macs(arch: Arch, include_padding: bool = True, out_size: str = "conv") -> int:
  """Multiply-accumulates of all convs and linears of `arch` at `arch.resolution` (one image).

  `include_padding=False` counts only the taps that fall inside the image (what XLA's cost analysis
  counts); the default counts the full k×k window at every output position (the usual convention).
  `out_size='official'`: the official counter's output-size formula (`docs/nas.md` §1)."""
  if out_size == "official" and not include_padding:
    raise ValueError("out_size='official' counts full windows; it has no include_padding=False form")
  ip, o = include_padding, out_size
  h = arch.resolution
  macs = _taps(h, arch.stem_kernel, arch.stem_stride, ip, o) * arch.in_channels * arch.stem_channels
  h = _out(h, arch.stem_stride, arch.stem_kernel, o)
  for st in arch.stages:
    for l in st:
      if l.expand:
        macs += h * h * l.c_in * l.hidden
      macs += _taps(h, l.kernel, l.stride, ip, o) * l.hidden  # depthwise
      h = _out(h, l.stride, l.kernel, o)
      macs += 2 * l.hidden * l.se  # SE squeeze + excite on the pooled vector
      macs += h * h * l.hidden * l.c_out  # project
  c_last = arch.stages[-1][-1].c_out
  macs += h * h * c_last * arch.head_channels
  macs += arch.head_channels * arch.num_classes
  return int(macs)


def count_params(arch: Arch) -> int:
  """Trainable parameters: conv/linear weights, SE and classifier biases, BN scale+bias."""
  p = arch.stem_kernel**2 * arch.in_channels * arch.stem_channels + 2 * arch.stem_channels
  for st in arch.stages:
    for l in st:
      if l.expand:
        p += l.c_in * l.hidden + 2 * l.hidden
      p += l.kernel**2 * l.hidden + 2 * l.hidden
      p += (l.hidden * l.se + l.se) + (l.se * l.hidden + l.hidden)
      p += l.hidden * l.c_out + 2 * l.c_out
  c_last = arch.stages[-1][-1].c_out
  p += c_last * arch.head_channels + 2 * arch.head_channels
  p += arch.head_channels * arch.num_classes + arch.num_classes
  return int(p)


def official_macs(alpha: Alpha, S: Scaling, space: SearchSpace) -> int:
  """The official search-time FLOPs counter: `'subnet'` hidden widths, (h + 2p − k + 1) // s outputs."""
  return count_macs(apply_scaling(alpha, S, space, hidden_rule="subnet"), out_size="official")


@functools.lru_cache(maxsize=200_000)
def _path_macs_cached(alpha: Alpha, S: Scaling, space: SearchSpace) -> int:
  if space.counter == "official":
    return official_macs(alpha, S, space)
  return count_macs(apply_scaling(alpha, S, space))


def path_macs(alpha: Alpha, S: Scaling, space: SearchSpace) -> int:
  """MACs of path (α, S) by the budgets' counter `space.counter`, memoised (all arguments hashable)."""
  return _path_macs_cached(alpha, S, space)


def base_macs(alpha: Alpha, space: SearchSpace) -> int:
  return path_macs(alpha, Scaling(1.0, 1.0, space.base_resolution), space)


def base_feasible(alpha: Alpha, space: SearchSpace) -> bool:
  return abs(base_macs(alpha, space) - space.base_target) <= space.base_tol


def stage_feasible(alpha: Alpha, S: Scaling, j: int, space: SearchSpace) -> bool:
  target, tol = space.stage_budget(j, base_macs(alpha, space))
  return abs(path_macs(alpha, S, space) - target) <= tol


def scaling_stage_of(S: Scaling, space: SearchSpace) -> int:
  """The scaling stage j whose candidate grid contains S (ValueError if none)."""
  for j in range(space.num_scaling_stages):
    if S.d in space.mult_candidates[j] and S.w in space.mult_candidates[j] and S.r in space.res_candidates[j]:
      return j
  raise ValueError(f"scaling {S} is in no scaling stage of space {space.name!r}")


def to_jsonable(obj: Any) -> Any:
  """Alpha/Scaling/Arch (or sequences of them) → plain JSON data."""
  if hasattr(obj, "to_dict"):
    return obj.to_dict()
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(o) for o in obj]
  return obj


def largest_alpha(space: SearchSpace, kernel: int = 7) -> Alpha:
  """Every stage at its largest base depth with one kernel (handy for tests and bounds)."""
  deps = tuple(max(st.depth_choices) for st in space.stages)
  return Alpha(deps, tuple((kernel,) * n for n in deps))


def smallest_alpha(space: SearchSpace, kernel: int = 3) -> Alpha:
  deps = tuple(min(st.depth_choices) for st in space.stages)
  return Alpha(deps, tuple((kernel,) * n for n in deps))


def all_resolutions(space: SearchSpace) -> Sequence[int]:
  return sorted({r for rs in space.res_candidates for r in rs})
