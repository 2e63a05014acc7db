r"""The paper's analyses of a ScaleNet expansion as PNG figures + results.json.

  python -m scalenet_jax.analysis [--config FILE[:ARG] [--config.key=value ...]] [--scaled PARAMS_DIR] --out DIR \
      [--batch 64] [--num_batches 4] [--eval_examples 1000] [--layers 0,5,11] [--compare scalenet,random]

`--config` is the config the fine-tuning run was trained with (e.g. `configs/swin_tiny_2x.py`), with the
same `--config.key=value` overrides: the model, expansion, pretrained weights (`init_from`) and data
(images of `data.eval_split`, the run's normalisation) are built from it as the trainer builds them. The
default, `scalenet_jax/analysis/demo_config.py`, is the demo's ScaleNet run of the shipped ViT base (its
argument `base=FILE` picks another release file). `--scaled` is the exported params dir
(`<workdir>/export/params`) of that run; `--config.init_from=` (empty) uses randomly initialised base
params (smoke runs). Writes DIR/{grad_norms,activation_hist,cka,accuracy}.png and DIR/results.json; see
`report.py`.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from absl import flags
from ml_collections import config_flags

from scalenet_jax import jax_utils
from scalenet_jax.analysis import report
from scalenet_jax.errors import UserError

PROG = "python -m scalenet_jax.analysis"
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_config.py")


def _define(fv: flags.FlagValues, argv: list[str]) -> None:
  d = report.AnalysisOptions
  # ml_collections finds the `--config.*` overrides in `sys_argv`: the argv of this parse, so that
  # `main(argv)` called in-process sees its own overrides, not the interpreter's.
  config_flags.DEFINE_config_file(
      "config",
      DEFAULT_CONFIG,
      "The fine-tuning run's config file (default: the demo's ScaleNet run of the shipped ViT base).",
      flag_values=fv,
      lock_config=True,
      sys_argv=argv,
  )
  flags.DEFINE_string("out", None, "Output directory for the PNGs and results.json.", flag_values=fv)
  flags.DEFINE_string(
      "scaled", d.scaled, "Exported params dir of the fine-tuned run (<workdir>/export/params).", flag_values=fv
  )
  flags.DEFINE_list(
      "compare", list(d.compare), "Expansion kinds compared by gradient norms and accuracy.", flag_values=fv
  )
  flags.DEFINE_integer("batch", d.batch, "Batch size.", flag_values=fv)
  flags.DEFINE_integer("num_batches", d.num_batches, "Batches for CKA and histograms.", flag_values=fv)
  flags.DEFINE_integer("eval_examples", d.eval_examples, "Examples for accuracy.", flag_values=fv)
  flags.DEFINE_list(
      "layers", None, "Scaled-model blocks for activation histograms (default: first, middle, last).", flag_values=fv
  )
  flags.DEFINE_bool("biased_cka", False, "Biased HSIC instead of the unbiased estimator.", flag_values=fv)
  flags.DEFINE_integer("bins", d.bins, "Histogram bins.", flag_values=fv)


def _usage_error(message: str):
  """Bad command line: one line on stderr and exit code 2 (as `scalenet_jax.main`)."""
  print(f"error: {' '.join(str(message).split())[:500]}", file=sys.stderr)
  sys.exit(2)


def parse(argv: Sequence[str]):
  """(run config, AnalysisOptions) of a command line (`argv` without the program name)."""
  argv = [PROG, *argv]
  fv = flags.FlagValues()
  try:
    _define(fv, argv)  # parses the default config file (and its overrides) unless --config is given
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
      print(__doc__ + "\nflags:\n" + fv.get_help())
      sys.exit(0)
    rest = fv(argv)
    if len(rest) > 1:
      _usage_error(f"unexpected arguments: {' '.join(rest[1:])}")
    if not fv.out:
      _usage_error("--out is required")
    config = fv.config
    config.keys()  # the file is loaded lazily: fail here, not mid-run
  except (AttributeError, KeyError) as e:  # ml_collections' way of saying "no such field"
    _usage_error(f"unknown config field {str(e).strip(chr(34))} (see the config file for the fields)")
  except (flags.Error, OSError, UserError) as e:  # bad flag value, missing config file, bad config argument
    _usage_error(str(e))
  try:
    layers = tuple(int(v) for v in fv.layers) if fv.layers else None
  except ValueError:
    _usage_error(f"--layers: expected comma-separated integers, got {','.join(fv.layers)!r}")
  options = report.AnalysisOptions(
      out=fv.out,
      scaled=fv.scaled,
      compare=tuple(fv.compare),
      batch=fv.batch,
      num_batches=fv.num_batches,
      eval_examples=fv.eval_examples,
      layers=layers,
      unbiased_cka=not fv.biased_cka,
      bins=fv.bins,
  )
  return config, options


def main(argv: Optional[Sequence[str]] = None) -> dict:
  config, options = parse(sys.argv[1:] if argv is None else argv)
  results = report.run(config, options)
  acc = results["accuracy"]
  print(f"wrote {len(results['figures'])} figures and results.json to {options.out}")
  for label, top1 in acc["top1"].items():
    print(f"  top-1 {label:<24s} {100 * top1:6.2f}%  ({acc['examples']} examples)")
  return results


if __name__ == "__main__":
  jax_utils.configure_cpu()  # before jax starts: XLA:CPU flags, allocator (docs/performance.md)
  try:
    main()
  except UserError as e:
    # Bad input (config value, data, checkpoint): one clear line, no traceback, exit code 2.
    print(f"error: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
