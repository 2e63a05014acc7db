"""The drivers `scalenet_jax.main` runs, by a config's `pipeline` field, without the command line's flags
(so that other CLIs, e.g. `scalenet_jax.study`, can run configs in-process)."""

from scalenet_jax.errors import ConfigError


def _pipelines():
  from scalenet_jax import lm_trainer, segmenter, trainer  # pylint: disable=g-import-not-at-top
  from scalenet_jax.nas import pipeline  # pylint: disable=g-import-not-at-top

  drivers = {"train": trainer.run, "lm": lm_trainer.run, "segment": segmenter.run}
  return {**drivers, **{name: pipeline.run for name in pipeline.PIPELINES}}


def run(config, workdir: str, mode: str = "train"):
  """Runs `config` with the driver its `pipeline` field names (what the command line does)."""
  pipelines = _pipelines()
  name = config.get("pipeline", "train")
  if name not in pipelines:
    raise ConfigError(f"unknown pipeline {name!r}; choose one of {sorted(pipelines)}")
  from scalenet_jax.train import workdir_lock  # pylint: disable=g-import-not-at-top

  # One run per workdir, taken before the pipeline writes anything (data caches, NAS stage files).
  with workdir_lock.WorkdirLock(workdir):
    return pipelines[name](config, workdir, mode)
