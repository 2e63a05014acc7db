"""Export of searched architectures as JSON, and the released ScaleNet ImageNet models.

The JSON format of `save_arch` / `load_arch` and the released S0..S5 (`RELEASED`, with their MACs and
parameters vs paper Table 1) are described in `docs/nas.md` §9.
"""

from __future__ import annotations

import math

from scalenet_jax import paths
from scalenet_jax.errors import ConfigError, MissingInputError
from scalenet_jax.nas.space import (
    Alpha,
    Arch,
    Scaling,
    SearchSpace,
    apply_scaling,
    count_macs,
    count_params,
    get_space,
    official_macs,
    space_kwargs,
)
from scalenet_jax.nas.supernet import PathNet

FORMAT = "scalenet_jax.nas/arch/v1"

S0_ALPHA = Alpha(depths=(1, 1, 4, 2, 2, 3, 1), kernels=((5,), (5,), (7, 7, 5, 3), (5, 5), (7, 7), (7, 5, 7), (5,)))
# (d, w, resolution multiplier) as released; r = ceil(224 · multiplier) (docs/nas.md §9).
_RELEASED_MULTS = {
    "s0": (1.0, 1.0, 1.0),
    "s1": (1.04, 1.04, 1.14),
    "s2": (1.36, 1.20, 1.355),
    "s3": (1.40, 1.40, 1.58),
    "s4": (1.653, 1.534, 2.042),
    "s5": (1.848, 1.688, 2.378),
}
RELEASED = {k: (S0_ALPHA, Scaling(d, w, math.ceil(224 * r - 1e-9))) for k, (d, w, r) in _RELEASED_MULTS.items()}
PAPER_GFLOPS = {"s0": 0.35, "s1": 0.80, "s2": 1.45, "s3": 2.76, "s4": 5.97, "s5": 10.22}
PAPER_PARAMS_M = {"s0": 4.4, "s1": 7.4, "s2": 10.2, "s3": 13.2, "s4": 16.1, "s5": 20.9}
# Block definitions: the supernet's (what `apply_scaling` builds by default) and the one the paper's
# retrained models follow (its parameter counts): subnet hidden widths, SE squeeze from the input.
DEFINITIONS = {"supernet": {}, "paper": {"hidden_rule": "subnet", "se_rule": "input"}}


def arch_record(alpha: Alpha, S: Scaling, space: SearchSpace) -> dict:
  arch = apply_scaling(alpha, S, space)
  return {
      "format": FORMAT,
      "space": space.name,
      "in_channels": space.in_channels,
      "space_kwargs": space_kwargs(space),
      "alpha": alpha.to_dict(),
      "scaling": S.to_dict(),
      "arch": arch.to_dict(),
      "macs": count_macs(arch),
      "macs_official": official_macs(alpha, S, space),
      "params": count_params(arch),
  }


def save_arch(path: str, alpha: Alpha, S: Scaling, space: SearchSpace) -> dict:
  rec = arch_record(alpha, S, space)
  paths.write_json(path, rec)
  return rec


def load_record(path: str) -> dict:
  if not paths.path(path).exists():
    raise MissingInputError(f"architecture file not found: {path}")
  rec = paths.read_json(path)
  if rec.get("format") != FORMAT:
    raise ConfigError(f"{path}: format {rec.get('format')!r} is not {FORMAT!r}")
  return rec


def load_arch(path: str) -> Arch:
  """The Arch stored in `path`, re-derived from (space, α, S) and checked against the stored copy."""
  rec = load_record(path)
  legacy = {} if rec["space"] == "imagenet" else {"in_channels": rec["in_channels"]}
  space = get_space(rec["space"], **rec.get("space_kwargs", legacy))
  arch = apply_scaling(Alpha.from_dict(rec["alpha"]), Scaling.from_dict(rec["scaling"]), space)
  if arch != Arch.from_dict(rec["arch"]):
    raise ValueError(f"{path}: stored arch differs from the one space {space.name!r} builds now")
  return arch


def build_model(arch: Arch, **kwargs) -> PathNet:
  return PathNet(arch, **kwargs)


def released_arch(name: str, definition: str = "supernet") -> Arch:
  """A released ScaleNet model 's0'..'s5' in one of the block `DEFINITIONS`."""
  if name not in RELEASED or definition not in DEFINITIONS:
    raise ValueError(f"unknown released model {name!r} / definition {definition!r}")
  return apply_scaling(*RELEASED[name], get_space("imagenet"), **DEFINITIONS[definition])


def released_table() -> list[dict]:
  """Rows of the released-models table in `docs/nas.md` §9."""
  space = get_space("imagenet")
  rows = []
  for name, (alpha, S) in RELEASED.items():
    official = official_macs(alpha, S, space)
    rows.append(
        {
            "model": name,
            "d": S.d,
            "w": S.w,
            "r": S.r,
            "mmacs_official": official / 1e6,
            "mmacs": count_macs(released_arch(name)) / 1e6,
            "paper_gflops": PAPER_GFLOPS[name],
            "ratio": official / 1e9 / PAPER_GFLOPS[name],
            "params_m": count_params(released_arch(name)) / 1e6,
            "params_m_paper_def": count_params(released_arch(name, "paper")) / 1e6,
            "paper_params_m": PAPER_PARAMS_M[name],
        }
    )
  return rows
