"""Train-step images/s of scalenet_jax vs timm + PyTorch (eager, and torch.compile), same model, batch, fp32, AdamW.

    /work/main/.venv/bin/python benchmarks/vs_timm.py [--quick] [--models deit_small_patch16_224:16,...]

Both sides: random in-memory batch, fp32, cross-entropy, AdamW (lr 2e-4, wd 0.05), no dropout / drop path,
model in train mode. JAX: `train.step.make_train_step` on a 1-device mesh with the project's default
XLA:CPU flags (`jax_utils.configure_cpu`, printed in the header); XLA's thread pool uses every core.
PyTorch: the timm model built from the same registry kwargs, `torch.set_num_threads(--threads)` (default:
all cores, torch's own default here), `zero_grad(set_to_none=True)`, forward, backward, `optimizer.step()`;
eager, and (`--torch-compile`, default on) the same step with the model under `torch.compile` (inductor;
its compile time is printed). Both sides run in this one process, so they share the allocator policy.
Timing alternates blocks of calls (JAX, torch, torch.compile, JAX, ...) and reports medians; the ratio is
torch step time / JAX step time (= JAX images/s over torch images/s).

MFU: model FLOPs per image = 3 x forward MACs x 2 FLOP/MAC (as `train_step.py`), over the best fp32
matmul rate (jax / numpy / torch, 2048^3) measured at the start of this run. Page faults per step are
printed too: a step that page-faults its working set pays for it in kernel time.
"""

from __future__ import annotations

import argparse
import math
import time

import common  # noqa: I001  (puts the repo root on sys.path, configures the runtime before jax starts)

from scalenet_jax.models import registry

# name:batch pairs: the micro ViT at its demo batch, DeiT-S and Swin-T at the ImageNet-size batch 16.
DEFAULT_MODELS = "vit_micro_patch4_28:64,deit_small_patch16_224:16,swin_tiny_patch4_window7_224:16"
FULL = dict(batch=None, steps=6, warmup=1)
QUICK = dict(batch=None, steps=2, warmup=1)
QUICK_MODELS = "vit_micro_patch4_28:64,deit_small_patch16_224:4"
# timm architectures to build registry models without a timm name of their own (the micro test models).
TIMM_BASE = {"vit": "vit_base_patch16_224", "swin": "swin_tiny_patch4_window7_224"}
TARGETS = {"vit_micro_patch4_28": 1.5, "deit_small_patch16_224": 1.1, "swin_tiny_patch4_window7_224": 1.1}


def parse_args(argv=None):
  p = common.base_parser(__doc__)
  p.add_argument("--models", default=None, help=f"comma-separated name[:batch] (default {DEFAULT_MODELS})")
  p.add_argument("--threads", type=int, default=common.num_cores(), help="torch.set_num_threads")
  p.add_argument("--torch-compile", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--peak-n", type=int, default=2048, help="matrix size of the matmul peak")
  # --batch (if given) overrides every model's batch.
  args = p.parse_args(argv)
  if args.models is None:
    args.models = QUICK_MODELS if args.quick else DEFAULT_MODELS
  defaults = QUICK if args.quick else FULL
  for key in ("steps", "warmup"):
    if getattr(args, key) is None:
      setattr(args, key, defaults[key])
  if args.steps < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 1):
    raise ValueError(f"bad --steps/--warmup/--batch: {args.steps}/{args.warmup}/{args.batch}")
  return args


def model_batches(args) -> list[tuple[str, int]]:
  out = []
  for item in args.models.split(","):
    if not item.strip():
      continue
    name, _, batch = item.strip().partition(":")
    out.append((name, args.batch or int(batch or 16)))
  return out


class TorchTrainStep:
  """timm twin of a registry model with a fwd + bwd + AdamW step on a fixed random batch."""

  def __init__(self, name: str, batch_size: int, threads: int, seed: int = 0, compile_model: bool = False):
    import timm
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    kwargs = registry.arch_kwargs(name)
    timm_name = name if name in timm.list_models() else TIMM_BASE[registry.family_of(name)]
    self.model = timm.create_model(timm_name, pretrained=False, drop_rate=0.0, drop_path_rate=0.0, **kwargs)
    self.model.train()
    self.forward = torch.compile(self.model) if compile_model else self.model
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=2e-4, weight_decay=0.05)
    cfg = registry.model_config(name)
    self.x = torch.randn(batch_size, cfg.in_chans, cfg.img_size, cfg.img_size)
    self.y = torch.randint(0, cfg.num_classes, (batch_size,))
    self.loss_fn = torch.nn.functional.cross_entropy

  def run(self) -> None:
    self.opt.zero_grad(set_to_none=True)
    self.loss_fn(self.forward(self.x), self.y).backward()
    self.opt.step()

  def first_step_seconds(self) -> float:
    t = time.perf_counter()
    self.run()
    return time.perf_counter() - t

  def num_params(self) -> int:
    return sum(p.numel() for p in self.model.parameters())


def _faults_per_call(fn, calls: int = 2) -> float:
  start = common.minor_faults()
  for _ in range(calls):
    fn()
  return (common.minor_faults() - start) / calls


def compare(name: str, batch: int, args, peak: float) -> dict:
  model = registry.create_model(name)
  jx = common.JaxTrainStep(model, batch)
  contenders = {"jax": jx.run}
  th = TorchTrainStep(name, batch, args.threads)
  if jx.num_params() != th.num_params():
    raise ValueError(
        f"{name}: parameter counts differ (jax {jx.num_params()}, torch {th.num_params()}); "
        "the shapes are not the same model"
    )
  contenders["torch"] = th.run
  compile_s = {"jax": jx.compile_seconds(), "torch": th.first_step_seconds()}
  if args.torch_compile:
    try:
      tc = TorchTrainStep(name, batch, args.threads, compile_model=True)
      compile_s["torch_compile"] = tc.first_step_seconds()
      contenders["torch_compile"] = tc.run
    except Exception as e:  # inductor needs a C++ toolchain; report, do not fail the comparison
      print(f"  torch.compile failed: {type(e).__name__}: {str(e)[:200]}")
  faults = {k: _faults_per_call(fn) for k, fn in contenders.items()}
  t = common.interleaved(contenders, warmup=args.warmup, iters=args.steps, block=max(1, math.ceil(args.steps / 2)))
  flops_per_image = 6 * common.forward_macs(model)
  ips = {k: batch / t[k].median for k in contenders}
  print(f"{name} (batch {batch}, {jx.num_params() / 1e6:.1f}M params, {flops_per_image / 2e9:.2f} GMACs/image fwd)")
  for k in contenders:
    print(
        f"  {k:13s} {t[k].summary()} -> {ips[k]:.2f} images/s, MFU {100 * flops_per_image * ips[k] / peak:.1f}%, "
        f"compile+first step {compile_s[k]:.1f}s, {faults[k]:.0f} page faults/step"
    )
  target = TARGETS.get(name)
  for k in contenders:
    if k != "jax":
      print(f"  ratio jax/{k}: {ips['jax'] / ips[k]:.2f}x" + (f" (target >= {target}x)" if target else ""))
  out = dict(
      model=name,
      batch=batch,
      compile_s=compile_s["jax"],
      torch_compile_s=compile_s.get("torch_compile"),
      flops_per_image=flops_per_image,
      jax_step_s=t["jax"].median,
      torch_step_s=t["torch"].median,
      jax_images_per_s=ips["jax"],
      torch_images_per_s=ips["torch"],
      ratio=ips["jax"] / ips["torch"],
      jax_mfu=flops_per_image * ips["jax"] / peak,
      torch_mfu=flops_per_image * ips["torch"] / peak,
      page_faults_per_step={k: faults[k] for k in contenders},
      target=target,
  )
  if "torch_compile" in contenders:
    out.update(
        torch_compile_step_s=t["torch_compile"].median,
        torch_compile_images_per_s=ips["torch_compile"],
        ratio_compile=ips["jax"] / ips["torch_compile"],
    )
  return out


def main(argv=None) -> dict:
  args = parse_args(argv)
  try:
    import timm  # noqa: F401
    import torch
  except ImportError as e:
    raise SystemExit(f"vs_timm needs torch and timm (pip install -e .[torch]): {e}") from None
  torch.set_num_threads(args.threads)
  info = common.print_header("scalenet_jax vs timm + PyTorch: train-step images/s", args)
  peaks = common.matmul_peaks(args.peak_n)
  print(common.peaks_line(peaks, args.peak_n))
  results = [compare(name, batch, args, peaks["best"]) for name, batch in model_batches(args)]
  out = dict(machine=info, threads=args.threads, peaks=peaks, results=results)
  common.write_json(args.json, out)
  return out


if __name__ == "__main__":
  main()
