r"""The paper's analyses of a ScaleNet expansion as PNG figures + results.json.

  python -m scalenet_jax.analysis --pretrained pretrained/vit_micro_patch4_28_fmnist.safetensors \
      [--scaled <finetune workdir>/export/params --expansion scalenet] --out DIR [--batch 64] [--layers 0,5,11]
  python -m scalenet_jax.analysis --model vit_micro_patch4_28 --pretrained <workdir>/export/params --out DIR

A release file (pretrained/, `scalenet_jax.release`) brings its model and input normalisation (`--model`,
`--mean`, `--std`, `--pad` override them); an exported params dir or another timm-format checkpoint needs
`--model`. `--pretrained init` uses randomly initialised params (smoke runs). `--scaled` must be a fine-tuned run of
the same expansion (`--expansion`/`--reuse`/`--mapping`/`--adjust`/`--rank` as in its config).
Writes DIR/{grad_norms,activation_hist,cka,accuracy}.png and DIR/results.json; see `report.py`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from scalenet_jax import jax_utils
from scalenet_jax.analysis import report


def _ints(text: str) -> Optional[tuple[int, ...]]:
  try:
    return tuple(int(v) for v in text.split(",") if v.strip()) or None
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
  try:
    return tuple(float(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
  return tuple(v.strip() for v in text.split(",") if v.strip())


def parser() -> argparse.ArgumentParser:
  d = report.AnalysisConfig
  p = argparse.ArgumentParser(
      prog="python -m scalenet_jax.analysis",
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  p.add_argument(
      "--model", default=None, help="registered (plain) model name, e.g. vit_micro_patch4_28 (None: a release file's)"
  )
  p.add_argument(
      "--pretrained",
      required=True,
      help="the pretrained model: a release file (.safetensors of pretrained/), an exported params dir, a "
      "timm-format checkpoint, or 'init'",
  )
  p.add_argument("--out", required=True, help="output directory for the PNGs and results.json")
  p.add_argument("--scaled", default="", help="exported params dir of the fine-tuned expanded model")
  p.add_argument("--expansion", default=d.expansion, help="expansion kind of the scaled model")
  p.add_argument("--reuse", type=int, default=d.reuse, help="reuse times R")
  p.add_argument("--mapping", default=d.mapping, help="interpolate | stack | comma-separated core indices")
  p.add_argument("--adjust", default=d.adjust, help="adapter | lora | none")
  p.add_argument("--rank", type=int, default=d.rank, help="adjustment rank")
  p.add_argument("--seed", type=int, default=d.seed, help="init seed ('init' params, adapters, new layers)")
  p.add_argument("--compare", type=_names, default=d.compare, help="expansions compared by gradient norms")
  p.add_argument("--batch", type=int, default=d.batch, help="batch size")
  p.add_argument("--num-batches", type=int, default=d.num_batches, help="batches for CKA and histograms")
  p.add_argument("--eval-examples", type=int, default=d.eval_examples, help="examples for accuracy")
  p.add_argument(
      "--layers",
      type=_ints,
      default=None,
      help="scaled-model blocks for activation histograms (default: first, middle, last)",
  )
  p.add_argument("--data", default=d.data, help="dataset name (scalenet_jax.data.get_source)")
  p.add_argument("--data-root", default=d.data_root, help="dataset directory override")
  p.add_argument("--split", default=d.split, help="split the images come from")
  p.add_argument(
      "--mean",
      type=_floats,
      default=None,
      help="normalisation mean, per channel or one (None: a release file's, else 0.5)",
  )
  p.add_argument(
      "--std",
      type=_floats,
      default=None,
      help="normalisation std, per channel or one (None: a release file's, else 0.5)",
  )
  p.add_argument(
      "--pad",
      type=int,
      default=None,
      help="zero padding per side before normalisation (None: a release file's, else 0)",
  )
  p.add_argument("--biased-cka", action="store_true", help="biased HSIC instead of the unbiased estimator")
  p.add_argument("--bins", type=int, default=d.bins, help="histogram bins")
  return p


def config_from_args(argv: Sequence[str]) -> report.AnalysisConfig:
  p = parser()
  a = p.parse_args(argv)
  from scalenet_jax import release  # pylint: disable=g-import-not-at-top

  d, meta = report.AnalysisConfig, release.metadata_of(a.pretrained)
  pick = lambda given, key, default: given if given is not None else tuple(meta[key]) if key in meta else default
  if a.model is None and "model" not in meta:
    p.error("--model is needed unless --pretrained is a release file (its metadata names the model)")
  return report.AnalysisConfig(
      model=a.model or meta["model"],
      pretrained=a.pretrained,
      out=a.out,
      scaled=a.scaled,
      expansion=a.expansion,
      reuse=a.reuse,
      mapping=a.mapping,
      adjust=a.adjust,
      rank=a.rank,
      seed=a.seed,
      compare=a.compare,
      batch=a.batch,
      num_batches=a.num_batches,
      eval_examples=a.eval_examples,
      layers=a.layers,
      data=a.data,
      data_root=a.data_root,
      split=a.split,
      mean=pick(a.mean, "mean", d.mean),
      std=pick(a.std, "std", d.std),
      pad=a.pad if a.pad is not None else int(meta.get("pad", d.pad)),
      unbiased_cka=not a.biased_cka,
      bins=a.bins,
  )


def main(argv: Optional[Sequence[str]] = None) -> dict:
  cfg = config_from_args(sys.argv[1:] if argv is None else argv)
  results = report.run(cfg)
  acc = results["accuracy"]
  print(f"wrote {len(results['figures'])} figures and results.json to {cfg.out}")
  for label, top1 in acc["top1"].items():
    print(f"  top-1 {label:<24s} {100 * top1:6.2f}%  ({acc['examples']} examples)")
  return results


if __name__ == "__main__":
  jax_utils.configure_cpu()  # before jax starts: XLA:CPU flags, allocator (docs/performance.md)
  main()
