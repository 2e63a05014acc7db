"""Released ScaleNet ImageNet architectures (S0 α and S0..S5 scalings) as configs.

`get_config('s3')` → ConfigDict(space='imagenet', alpha={...}, scaling={d, w, r}); build the model with

    arch = apply_scaling(Alpha.from_dict(c.alpha), Scaling.from_dict(c.scaling), get_space(c.space))
    model = scalenet_jax.nas.export.build_model(arch)
"""

import ml_collections

from scalenet_jax.nas.export import RELEASED


def get_config(arg: str = "s0") -> ml_collections.ConfigDict:
  if arg not in RELEASED:
    raise ValueError(f"unknown released ScaleNet model {arg!r}; known: {sorted(RELEASED)}")
  alpha, S = RELEASED[arg]
  cfg = ml_collections.ConfigDict()
  cfg.space = "imagenet"
  cfg.alpha = alpha.to_dict()
  cfg.scaling = S.to_dict()
  return cfg
