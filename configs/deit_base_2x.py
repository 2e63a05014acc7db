r"""ScaleNet 2x deit-base (paper Table I row): interpolate mapping, adapters r=16 on fc1/fc2.

Baselines of the same row: pass the kind as config argument (random|stack|interpolate|swa|scratch):
python -m scalenet_jax.main --config configs/deit_base_2x.py --workdir /tmp/deit_base_2x
python -m scalenet_jax.main --config configs/deit_base_2x.py:stack --workdir /tmp/deit_base_2x_stack
"""

from scalenet_jax import config_lib


def get_config(kind="scalenet"):
  return config_lib.grow_paper_config("deit_base_patch16_224", kind)
