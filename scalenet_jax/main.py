r"""Entry point: `python -m scalenet_jax.main --config configs/deit_base_2x.py --workdir DIR`.

Modes: `train` (default; resumes from the workdir), `eval`, `summary` (params/FLOPs table and a
final JSON line), `export` (final params as Orbax + timm-format safetensors).
Config fields are overridden with `--config.key=value`; unknown keys and bad types are rejected.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and exports.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "summary", "export"], "What to do.")
flags.DEFINE_bool("xla_check", True, "summary: cross-check FLOPs with XLA's cost analysis.")


def _run(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = FLAGS.config
  if config.get("pipeline"):  # NAS search / supernet / retrain configs have their own driver
    if not FLAGS.workdir:
      raise app.UsageError("--workdir is required")
    from scalenet_jax.nas import pipeline

    pipeline.run(config, FLAGS.workdir, FLAGS.mode)
    return
  if FLAGS.mode == "summary":
    from scalenet_jax import summary

    print(summary.render(summary.summarize(config, xla_check=FLAGS.xla_check)))
    return
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required for --mode=train/eval/export")
  from scalenet_jax.train import trainer

  trainer.run(config, FLAGS.workdir, FLAGS.mode)


def _diverged():
  from scalenet_jax.train.trainer import TrainingDiverged

  return TrainingDiverged


def main(argv):
  try:
    _run(argv)
  except (ValueError, KeyError, FileNotFoundError, TypeError, _diverged()) as e:
    # Bad input: one clear line, no traceback, nonzero exit.
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv):
  """absl's parser, but a bad flag, config file or override is one line and exit code 2."""
  try:
    rest = FLAGS(argv)
    if FLAGS.config is None:
      raise ValueError("--config is required (e.g. --config configs/deit_base_2x.py)")
    FLAGS.config.keys()  # the file is loaded lazily: fail here, not mid-run
  except (AttributeError, KeyError) as e:  # ml_collections' way of saying "no such field"
    print(f"error: unknown config field {str(e).strip(chr(34))} (see the config file for the fields)", file=sys.stderr)
    sys.exit(2)
  except (flags.Error, OSError, TypeError, ValueError) as e:
    msg = " ".join(str(e).split())
    print(f"error: {msg[:500]}", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.WARNING)
  return rest


def cli():
  from scalenet_jax import jax_utils

  jax_utils.configure_cpu()  # before jax starts: XLA:CPU flags, allocator (docs/performance.md)
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  cli()
