"""Search-space configs for ScaleNet-search.

`get_config(arg)` with arg in {'imagenet', 'fmnist', 'fmnist3', 'tiny'} returns a ConfigDict naming a
registered space of `scalenet_jax.nas.space` (trainer configs import this and add their own fields):

    from configs import nas_spaces; space_cfg = nas_spaces.get_config('fmnist')
    space = scalenet_jax.nas.space.get_space(space_cfg.name, **space_cfg.kwargs)
"""

import ml_collections

_SPACES = {
    "imagenet": ("imagenet", {}),
    "fmnist": ("fmnist", {"in_channels": 1}),
    "fmnist3": ("fmnist", {"in_channels": 3}),
    "tiny": ("tiny", {"in_channels": 1}),
}


def get_config(arg: str = "fmnist") -> ml_collections.ConfigDict:
  if arg not in _SPACES:
    raise ValueError(f"unknown NAS space config {arg!r}; known: {sorted(_SPACES)}")
  name, kwargs = _SPACES[arg]
  cfg = ml_collections.ConfigDict()
  cfg.name = name
  cfg.kwargs = dict(kwargs)
  return cfg
