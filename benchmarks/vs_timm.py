"""Train-step images/s of scalenet_jax vs timm + PyTorch, same model shape, batch, fp32 and AdamW.

    /work/main/.venv/bin/python benchmarks/vs_timm.py [--quick] [--models deit_small_patch16_224,...]

Both sides: random device-resident (in-memory) batch, fp32, cross-entropy, AdamW (lr 2e-4, wd 0.05), no
dropout / drop path, model in train mode. JAX: `train.step.make_train_step` on a 1-device mesh; XLA's CPU
thread pool uses every core. PyTorch: eager, `torch.set_num_threads(--threads)` (default: all cores),
`zero_grad(set_to_none=True)`, forward, backward, `optimizer.step()`. The timm model is built from the same
registry kwargs as the Flax one. Timing alternates blocks of calls (JAX, torch, JAX, torch) and reports
medians; the ratio is torch step time / JAX step time (= JAX images/s over torch images/s; goal >= 1.3).
"""

from __future__ import annotations

import math

import common  # noqa: I001  (puts the repo root on sys.path)

from scalenet_jax.models import registry

FULL = dict(batch=16, steps=6, warmup=1)
QUICK = dict(batch=4, steps=2, warmup=1)
DEFAULT_MODELS = "deit_small_patch16_224,swin_tiny_patch4_window7_224"
# timm architectures to build registry models without a timm name of their own (the micro test models).
TIMM_BASE = {"vit": "vit_base_patch16_224", "swin": "swin_tiny_patch4_window7_224"}


def parse_args(argv=None):
  p = common.base_parser(__doc__)
  p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated registry names")
  p.add_argument("--threads", type=int, default=common.num_cores(), help="torch.set_num_threads")
  return common.apply_quick(p.parse_args(argv), FULL, QUICK)


class TorchTrainStep:
  """timm twin of a registry model with an eager fwd + bwd + AdamW step on a fixed random batch."""

  def __init__(self, name: str, batch_size: int, threads: int, seed: int = 0):
    import timm
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    kwargs = registry.arch_kwargs(name)
    timm_name = name if name in timm.list_models() else TIMM_BASE[registry.family_of(name)]
    self.model = timm.create_model(timm_name, pretrained=False, drop_rate=0.0, drop_path_rate=0.0, **kwargs)
    self.model.train()
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=2e-4, weight_decay=0.05)
    cfg = registry.model_config(name)
    self.x = torch.randn(batch_size, cfg.in_chans, cfg.img_size, cfg.img_size)
    self.y = torch.randint(0, cfg.num_classes, (batch_size,))
    self.loss_fn = torch.nn.functional.cross_entropy

  def run(self) -> None:
    self.opt.zero_grad(set_to_none=True)
    self.loss_fn(self.model(self.x), self.y).backward()
    self.opt.step()

  def num_params(self) -> int:
    return sum(p.numel() for p in self.model.parameters())


def compare(name: str, args) -> dict:
  jx = common.JaxTrainStep(registry.create_model(name), args.batch)
  th = TorchTrainStep(name, args.batch, args.threads)
  if jx.num_params() != th.num_params():
    raise ValueError(
        f"{name}: parameter counts differ (jax {jx.num_params()}, torch {th.num_params()}); "
        "the shapes are not the same model"
    )
  compile_s = jx.compile_seconds()
  t = common.interleaved(
      {"jax": jx.run, "torch": th.run}, warmup=args.warmup, iters=args.steps, block=max(1, math.ceil(args.steps / 2))
  )
  jax_ips, torch_ips = args.batch / t["jax"].median, args.batch / t["torch"].median
  print(
      f"{name} (batch {args.batch}, {jx.num_params() / 1e6:.1f}M params; jax compile+first step " f"{compile_s:.1f}s)"
  )
  print(f"  jax   {t['jax'].summary()} -> {jax_ips:.2f} images/s")
  print(f"  torch {t['torch'].summary()} -> {torch_ips:.2f} images/s")
  print(f"  ratio jax/torch: {jax_ips / torch_ips:.2f}x (goal >= 1.3x)")
  return dict(
      model=name,
      batch=args.batch,
      compile_s=compile_s,
      jax_step_s=t["jax"].median,
      torch_step_s=t["torch"].median,
      jax_images_per_s=jax_ips,
      torch_images_per_s=torch_ips,
      ratio=jax_ips / torch_ips,
  )


def main(argv=None) -> dict:
  args = parse_args(argv)
  info = common.print_header("scalenet_jax vs timm + PyTorch: train-step images/s", args)
  try:
    import timm  # noqa: F401
    import torch
  except ImportError as e:
    raise SystemExit(f"vs_timm needs torch and timm (pip install -e .[torch]): {e}") from None
  print(f"torch threads {args.threads} (intra-op), XLA: all {common.num_cores()} cores; torch {torch.__version__}")
  results = [compare(name.strip(), args) for name in args.models.split(",") if name.strip()]
  out = dict(machine=info, threads=args.threads, results=results)
  common.write_json(args.json, out)
  return out


if __name__ == "__main__":
  main()
