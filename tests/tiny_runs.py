"""The tiny micro-ViT training runs shared by the trainer and reliability tests."""

from __future__ import annotations

import contextlib

import jax

from scalenet_jax import config_lib

# Dotted config keys (also usable as `--config.<key>=<value>` CLI overrides): synthetic data, small
# batches, a log line every step.
TINY = {
    "data.name": "synthetic",
    "data.synthetic_examples": 128,
    "data.eval_split": "minival",
    "data.minival_per_class": 3,
    "data.num_threads": 1,
    "batch_size": 16,
    "eval_batch_size": 32,
    "log_every": 1,
    "optim.lr": 1e-3,
}


def micro_config(overrides: dict):
  """`vit_micro_patch4_28`'s train config with the dotted-key `overrides` applied."""
  return config_lib.override(config_lib.train_config("vit_micro_patch4_28"), overrides)


@contextlib.contextmanager
def persistent_compile_cache(directory: str):
  """Every compile inside goes to / comes from the XLA cache in `directory`; the previous settings are
  restored afterwards, so other test modules see no change."""
  from jax.experimental.compilation_cache import compilation_cache as cc

  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  old = {n: getattr(jax.config, n) for n in names}
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  cc.reset_cache()
  try:
    yield
  finally:
    for n, v in old.items():
      jax.config.update(n, v)
    cc.reset_cache()
