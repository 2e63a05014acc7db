"""Export of searched architectures as JSON, and the released ScaleNet ImageNet models.

# Format (`save_arch` / `load_arch`)
```json
{"format": "scalenet_jax.nas/arch/v1", "space": "imagenet", "in_channels": 3,
 "alpha": {"depths": [...], "kernels": [[...], ...]}, "scaling": {"d": 1.0, "w": 1.0, "r": 224},
 "arch": {... Arch.to_dict() ...}, "macs": 354933888, "params": 6686680}
```
`load_arch(path) -> Arch` rebuilds the concrete architecture from (space, α, S) and checks it against the
stored `arch` (a stale file from a changed space definition is rejected); `build_model(arch)` returns the
stand-alone `PathNet`.

# Released ImageNet models (`RELEASED`)
α of ScaleNet-S0 from the official repository's retraining configs (stage depths 1,1,4,2,2,3,1; kernels
5 | 5 | 7,7,5,3 | 5,5 | 7,7 | 7,5,7 | 5) and the S1..S5 multipliers (d, w, resolution multiplier ×224,
rounded). Counted with `count_macs` / `count_params` (1000 classes), vs. paper Table 1 FLOPs:

| model | d | w | r | MMACs (ours) | paper GFLOPs | ours / paper | params (M) |
|---|---|---|---|---|---|---|---|
| S0 | 1.00 | 1.00 | 224 | 354.9 | 0.35 | 1.01 | 6.69 |
| S1 | 1.04 | 1.04 | 255 | 698.0 | 0.80 | 0.87 | 9.02 |
| S2 | 1.36 | 1.20 | 304 | 1415.2 | 1.45 | 0.98 | 13.17 |
| S3 | 1.40 | 1.40 | 354 | 2642.0 | 2.76 | 0.96 | 17.25 |
| S4 | 1.653 | 1.534 | 457 | 5652.3 | 5.97 | 0.95 | 21.64 |
| S5 | 1.848 | 1.688 | 533 | 9688.2 | 10.22 | 0.95 | 29.18 |

S0, S2–S5 are within 5 % of the paper; S1 is 13 % lower (its resolution multiplier 1.14 gives
255 px; the gap is not explained by rounding). `tests/test_nas_export.py` checks this table.
"""

from __future__ import annotations

import json
import math
import os

from scalenet_jax.nas.space import (
    Alpha,
    Arch,
    Scaling,
    SearchSpace,
    apply_scaling,
    count_macs,
    count_params,
    get_space,
)
from scalenet_jax.nas.supernet import PathNet

FORMAT = "scalenet_jax.nas/arch/v1"

S0_ALPHA = Alpha(depths=(1, 1, 4, 2, 2, 3, 1), kernels=((5,), (5,), (7, 7, 5, 3), (5, 5), (7, 7), (7, 5, 7), (5,)))
# (d, w, resolution multiplier) as released; r = round(224 · multiplier).
_RELEASED_MULTS = {
    "s0": (1.0, 1.0, 1.0),
    "s1": (1.04, 1.04, 1.14),
    "s2": (1.36, 1.20, 1.355),
    "s3": (1.40, 1.40, 1.58),
    "s4": (1.653, 1.534, 2.042),
    "s5": (1.848, 1.688, 2.378),
}
RELEASED = {k: (S0_ALPHA, Scaling(d, w, int(round(224 * r)))) for k, (d, w, r) in _RELEASED_MULTS.items()}
PAPER_GFLOPS = {"s0": 0.35, "s1": 0.80, "s2": 1.45, "s3": 2.76, "s4": 5.97, "s5": 10.22}


def arch_record(alpha: Alpha, S: Scaling, space: SearchSpace) -> dict:
  arch = apply_scaling(alpha, S, space)
  return {
      "format": FORMAT,
      "space": space.name,
      "in_channels": space.in_channels,
      "alpha": alpha.to_dict(),
      "scaling": S.to_dict(),
      "arch": arch.to_dict(),
      "macs": count_macs(arch),
      "params": count_params(arch),
  }


def save_arch(path: str, alpha: Alpha, S: Scaling, space: SearchSpace) -> dict:
  rec = arch_record(alpha, S, space)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(rec, f, indent=1)
  return rec


def load_record(path: str) -> dict:
  if not os.path.exists(path):
    raise FileNotFoundError(f"architecture file not found: {path}")
  with open(path) as f:
    rec = json.load(f)
  if rec.get("format") != FORMAT:
    raise ValueError(f"{path}: format {rec.get('format')!r} is not {FORMAT!r}")
  return rec


def load_arch(path: str) -> Arch:
  """The Arch stored in `path`, re-derived from (space, α, S) and checked against the stored copy."""
  rec = load_record(path)
  space = get_space(rec["space"], **({"in_channels": rec["in_channels"]} if rec["space"] != "imagenet" else {}))
  arch = apply_scaling(Alpha.from_dict(rec["alpha"]), Scaling.from_dict(rec["scaling"]), space)
  if arch != Arch.from_dict(rec["arch"]):
    raise ValueError(f"{path}: stored arch differs from the one space {space.name!r} builds now")
  return arch


def build_model(arch: Arch, **kwargs) -> PathNet:
  return PathNet(arch, **kwargs)


def released_table() -> list[dict]:
  """Rows of the table in the module docstring."""
  space = get_space("imagenet")
  rows = []
  for name, (alpha, S) in RELEASED.items():
    arch = apply_scaling(alpha, S, space)
    macs = count_macs(arch)
    rows.append(
        {
            "model": name,
            "d": S.d,
            "w": S.w,
            "r": S.r,
            "mmacs": macs / 1e6,
            "paper_gflops": PAPER_GFLOPS[name],
            "ratio": macs / 1e9 / PAPER_GFLOPS[name],
            "params_m": count_params(arch) / 1e6,
        }
    )
  return rows
