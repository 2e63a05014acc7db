r"""ScaleNet 2x swin-tiny (paper Table I row): last stage stacked 2x, adapters r=16 on fc1/fc2.

Baselines of the same row: pass the kind as config argument (random|stack|interpolate|swa|scratch):
python -m scalenet_jax.main --config configs/swin_tiny_2x.py --workdir /tmp/swin_tiny_2x
python -m scalenet_jax.main --config configs/swin_tiny_2x.py:swa --workdir /tmp/swin_tiny_2x_swa
"""

from scalenet_jax import config_lib


def get_config(kind="scalenet"):
  return config_lib.grow_paper_config("swin_tiny_patch4_window7_224", kind)
