r"""ScaleNet-search on ImageNet-1k: the official super-supernet recipe, then MCEA with the official
search settings (population 64, 40 generations, 8 iterations, K = 20 random bases, tournament /
two-point crossover / polynomial mutation, per-stage penalty, objective over S_1..S_3).

python -m scalenet_jax.main --config configs/nas_imagenet_search.py --workdir gs://.../nas_search

The supernet section is `configs/nas_imagenet_supernet.py`; the search section is
`scalenet_jax.nas.mcea.search_config()` (MCEA on the 50-images-per-class mini-val split).
"""

import os

import ml_collections

from scalenet_jax import config_lib
from scalenet_jax.nas import mcea


def _supernet_config():
  # Configs are files, not a package: load the sibling supernet config to compose it.
  return config_lib.load_config_file(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "nas_imagenet_supernet.py")
  )


def get_config():
  c = ml_collections.ConfigDict()
  c.pipeline = "nas_search"
  c.quick = False
  c.supernet = _supernet_config()
  c.hist_samples = 5000
  c.search = mcea.search_config(eval_batch_size=250)
  c.extra_stages = 2  # S4, S5 by the exponential fit, as released
  c.rank_corr = ml_collections.ConfigDict(dict(num_paths=0, steps=0, batch_size=256, seed=1234, compare_uniform=False))
  return c
