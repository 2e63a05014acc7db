"""Train-step throughput and MFU of scalenet_jax (fwd + bwd + AdamW), and the cost of the real input pipeline.

    /work/main/.venv/bin/python benchmarks/train_step.py [--quick] [--batch 16] [--steps 10]
    /work/main/.venv/bin/python benchmarks/train_step.py --data-dir /data/imagenet   # ImageFolder train split

The step is `train.step.make_train_step` on a 1-device mesh (float32, all params trainable, AdamW).
MFU convention: model FLOPs per image = 3 x forward MACs x 2 FLOP/MAC (backward ~ 2x forward; a MAC is a
multiply + an add), forward MACs from `counting.model_flops` (the step's own jaxpr MACs are printed as a
multiple of the forward, a check of the 3x); achieved = that x images/s; peak = the best measured fp32 FLOP/s
of an n x n x n matmul on this machine in this run (jitted `jnp.dot`, numpy's BLAS, `torch.mm`; all printed).
Loader: the same step fed by `data.train_batches` (Swin/ImageNet recipe by default, on synthetic 224 px
images or an ImageFolder) vs a device-resident batch; the slowdown is loader time / resident time - 1.
"""

from __future__ import annotations

import common  # noqa: I001  (puts the repo root on sys.path)

from scalenet_jax import data as data_lib
from scalenet_jax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, imagenet_swin_preprocess
from scalenet_jax.data.sources import ImageFolderSource, SyntheticSource
from scalenet_jax.models import registry
from scalenet_jax.train import sharding as sh

FULL = dict(batch=16, steps=6, warmup=1, peak_n=2048, peak_iters=5)
QUICK = dict(batch=8, steps=3, warmup=1, peak_n=2048, peak_iters=3)


def parse_args(argv=None):
  p = common.base_parser(__doc__)
  p.add_argument("--model", default="deit_small_patch16_224", help="registry name (see models.list_models())")
  p.add_argument("--img-size", type=int, default=None, help="override the model's input size")
  p.add_argument("--peak-n", type=int, default=None, help="matrix size of the matmul peak")
  p.add_argument("--peak-iters", type=int, default=None)
  p.add_argument(
      "--recipe",
      choices=("swin", "simple"),
      default="swin",
      help="loader preprocessing: swin = RandomResizedCrop+RandAugment+erasing (the ImageNet "
      "recipe), simple = resize + normalise",
  )
  p.add_argument("--data-dir", default=None, help="ImageFolder root (its 'train' split); default synthetic")
  p.add_argument("--loader-threads", type=int, default=2)
  p.add_argument("--no-loader", action="store_true", help="skip the loader comparison")
  return common.apply_quick(p.parse_args(argv), FULL, QUICK)


def loader_source(args, cfg):
  if args.data_dir:
    return ImageFolderSource(args.data_dir, "train")
  # Enough examples that the timed steps never wrap into a second epoch.
  n = args.batch * (args.warmup + args.steps + 2)
  return SyntheticSource(
      num_examples=n, num_classes=cfg.num_classes, image_shape=(cfg.img_size, cfg.img_size, cfg.in_chans)
  )


def preprocess(args, cfg) -> Preprocess:
  if args.recipe == "swin":
    return imagenet_swin_preprocess(cfg.img_size)
  return Preprocess(img_size=cfg.img_size, mean=IMAGENET_MEAN[: cfg.in_chans], std=IMAGENET_STD[: cfg.in_chans])


def bench_loader(args, bench: common.JaxTrainStep) -> dict:
  """Resident / loader / resident blocks (the split resident block brackets load drift)."""
  cfg = bench.model.config
  n_steps = args.warmup + args.steps
  batches = data_lib.train_batches(
      loader_source(args, cfg),
      args.batch,
      seed=0,
      preprocess=preprocess(args, cfg),
      num_steps=n_steps,
      num_threads=args.loader_threads,
  )

  def loader_step():
    b = next(batches)
    bench.run(sh.make_global_batch({"images": b["image"], "labels": b["label"]}, bench.mesh))

  half = max(1, args.steps // 2)
  before = common.time_calls(bench.run, warmup=0, iters=half)
  loader = common.time_calls(loader_step, warmup=args.warmup, iters=args.steps)
  after = common.time_calls(bench.run, warmup=0, iters=max(1, args.steps - half))
  resident = common.Timing(before.samples + after.samples)
  slowdown = loader.median / resident.median - 1.0
  print(f"resident batch:     {resident.summary()}")
  print(f"train_batches ({args.recipe}, {args.loader_threads} threads): {loader.summary()}")
  print(f"loader slowdown: {100 * slowdown:+.1f}% (goal <= +5%)")
  return dict(
      loader_recipe=args.recipe,
      loader_source=args.data_dir or "synthetic",
      resident_step_s=resident.median,
      loader_step_s=loader.median,
      loader_slowdown_pct=100 * slowdown,
  )


def main(argv=None) -> dict:
  args = parse_args(argv)
  info = common.print_header("train step: images/s and MFU", args)
  arch = {"img_size": args.img_size} if args.img_size else {}
  model = registry.create_model(args.model, arch)
  cfg = model.config

  peaks = common.matmul_peaks(args.peak_n, args.peak_iters)
  print(common.peaks_line(peaks, args.peak_n))
  peak = peaks["best"]

  bench = common.JaxTrainStep(model, args.batch)
  compile_s = bench.compile_seconds()
  t = common.time_calls(bench.run, warmup=args.warmup, iters=args.steps)
  ips = args.batch / t.median
  macs = common.forward_macs(model)
  flops_per_image = 3 * macs * 2
  step_ratio = bench.step_macs() / (args.batch * macs)  # what the program computes, vs the 3x convention
  achieved = flops_per_image * ips
  print(
      f"model {args.model} @ {cfg.img_size}px, batch {args.batch}, params {bench.num_params() / 1e6:.1f}M, "
      f"forward {macs / 1e9:.2f} GMACs/image (the step's jaxpr: {step_ratio:.2f} x forward); "
      f"compile+first step {compile_s:.1f}s"
  )
  print(f"step: {t.summary()} -> {ips:.2f} images/s")
  print(
      f"model FLOPs/s (3 x fwd MACs x 2 per image): {achieved / 1e9:.1f} GFLOP/s; "
      f"MFU vs the best matmul rate {100 * achieved / peak:.1f}% (target >= 85%), "
      f"vs jax's {100 * achieved / peaks['jax']:.1f}%"
  )
  out = dict(
      machine=info,
      model=args.model,
      img_size=cfg.img_size,
      batch=args.batch,
      compile_s=compile_s,
      step_s=t.median,
      images_per_s=ips,
      fwd_macs=macs,
      step_macs_over_fwd=step_ratio,
      model_flops_per_s=achieved,
      peak_jax_flops=peaks["jax"],
      peak_numpy_flops=peaks["numpy"],
      peak_torch_flops=peaks.get("torch"),
      peak_best_flops=peak,
      peaks=peaks,
      mfu=achieved / peak,
      mfu_jax_peak=achieved / peaks["jax"],
  )
  if not args.no_loader:
    out.update(bench_loader(args, bench))
  common.write_json(args.json, out)
  return out


if __name__ == "__main__":
  main()
