r"""Entry point: `python -m scalenet_jax.main --config configs/deit_base_2x.py --workdir DIR`.

The config's `pipeline` field picks the driver: `train` (image models, `trainer`), `lm` (decoder LMs,
`lm_trainer`; e.g. configs/llama_fortunes_2x.py), `segment` (UPerNet on a grown backbone, `segmenter`;
configs/upernet_swin_tiny_2x.py), or one of the NAS pipelines.

Modes: `train` (default; resumes from the workdir), `eval`, `summary` (params/FLOPs table and a
final JSON line), `export` (final params as Orbax + timm-format safetensors), `compile` (the train and
eval steps compiled for the TPU slice `--topology` on this host: memory fit and a roofline step time,
`scalenet_jax.tpu_check`; no workdir).
Config fields are overridden with `--config.key=value`; unknown keys and bad types are rejected.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from scalenet_jax.errors import ConfigError, UserError
from scalenet_jax.pipelines import run  # what the command line runs; library callers may import it from here

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and exports.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "summary", "export", "compile"], "What to do.")
flags.DEFINE_bool("xla_check", True, "summary: cross-check FLOPs with XLA's cost analysis.")
flags.DEFINE_string("topology", None, "compile: a TPU slice, e.g. v5e:2x2, v4:2x2x1 or an accelerator type v5e-8.")


def _run(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = FLAGS.config
  if FLAGS.mode == "summary":
    from scalenet_jax import summary  # pylint: disable=g-import-not-at-top

    print(summary.render(summary.summarize(config, xla_check=FLAGS.xla_check)))
    return
  if FLAGS.mode == "compile":
    from scalenet_jax import tpu_check  # pylint: disable=g-import-not-at-top

    if not FLAGS.topology:
      raise ConfigError("--mode=compile needs --topology (e.g. v5e:2x2 or v5e-8)")
    tpu_check.run(config, FLAGS.topology, name=config_flags.get_config_filename(FLAGS["config"]))
    return
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required for --mode=train/eval/export")
  run(config, FLAGS.workdir, FLAGS.mode)


def main(argv):
  try:
    _run(argv)
  except UserError as e:
    # Bad input (config value, data, checkpoint): one clear line, no traceback, exit code 2. Anything
    # else is a bug in the library and keeps its traceback.
    print(f"error: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv):
  """absl's parser, but a bad flag, config file or override is one line and exit code 2."""
  try:
    rest = FLAGS(argv)
    if FLAGS.config is None:
      raise ConfigError("--config is required (e.g. --config configs/deit_base_2x.py)")
    FLAGS.config.keys()  # the file is loaded lazily: fail here, not mid-run
  except (AttributeError, KeyError) as e:  # ml_collections' way of saying "no such field"
    print(f"error: unknown config field {str(e).strip(chr(34))} (see the config file for the fields)", file=sys.stderr)
    sys.exit(2)
  except (flags.Error, OSError, UserError) as e:  # bad flag value, missing config file, bad config argument
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
