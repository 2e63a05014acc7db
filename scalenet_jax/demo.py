r"""The embedded demo: ScaleNet-grow vs the baselines on real Fashion-MNIST, on a CPU.

  python -m scalenet_jax.demo [--workdir DIR] [--quick] [--base FILE | --pretrain]

1. start from the released converged base, a 6-layer micro ViT (patch 4, 28x28 grey images) in
   pretrained/ (timm-format safetensors with its provenance, as a paper user starts from timm's weights);
   `--pretrain` trains a base here instead (a short run: an undertrained base, for a smoke test);
2. expand it to 12 layers with ScaleNet (shared weights + adapters + own LNs, interpolate mapping)
   and with the baselines: Random / Stack / Interpolate / SWA (independent new layers, parameter-
   matched) and From-scratch (12 independent layers, random init); as a control, the pretrained
   6-layer model also gets the same extra training budget;
3. fine-tune every model with the same budget and write a Table-I-style report (report.md).
Every run lives in its own sub-directory and resumes from its checkpoints if interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags, logging

from scalenet_jax import config_lib, jax_utils, paths, release, summary, trainer
from scalenet_jax.data import preprocess
from scalenet_jax.errors import MissingInputError, UserError
from scalenet_jax.models import registry
from scalenet_jax.train import metrics as metrics_lib

FLAGS = flags.FLAGS

MODEL = "vit_micro_patch4_28"
# The released base (configs/pretrain_fmnist.py:vit, pretrained/README.md).
RELEASED = Path(paths.REPO_ROOT) / "pretrained" / f"{MODEL}_fmnist.safetensors"
# (row label, expansion kind); kind '' = the pretrained model itself, trained further (control).
VARIANTS = [
    ("ScaleNet (shared + adapters)", "scalenet"),
    ("Random (new layers)", "random"),
    ("Stack (new layers)", "stack"),
    ("Interpolate (new layers)", "interpolate"),
    ("SWA (new layers)", "swa"),
    ("From scratch (2x depth)", "scratch"),
    ("Pretrained, trained further", ""),
]
BATCH = 64
TRAIN_IMAGES = 59_000  # train_minus_minival: the 1,000-image minival stays held out
EPOCH_STEPS = TRAIN_IMAGES // BATCH
BUDGETS = {  # steps at global batch BATCH, sized for <= 20 min (default) / ~3 min (quick) on 2 CPU cores;
    # `pretrain` only with --pretrain.
    False: dict(pretrain=800, finetune=600, eval_split="test"),
    True: dict(pretrain=60, finetune=20, eval_split="minival"),
}
# The input normalisation of a base pretrained here (a released base brings its own in its metadata).
NORMALISATION = dict(mean=preprocess.FASHION_MNIST_MEAN, std=preprocess.FASHION_MNIST_STD, pad=0)
NORM_KEYS = tuple(NORMALISATION)


# The paper's expansion recipe per model family (doc §2): a ViT/DeiT grows every layer with the
# interpolate mapping and, small, trains every parameter; a Swin grows its last stage with the stack
# mapping and trains adapters, norms and head. (Parameter-matched baselines follow the same sets.)
RECIPES = {
    "vit": dict(mapping="interpolate", trainable="all"),
    "swin": dict(mapping="stack", trainable="adjust_ln_head"),
}


# Random-crop padding of each family's Fashion-MNIST base (configs/pretrain_fmnist.py) and of its fine-
# tuning, which keeps the base's augmentation as the paper's does: crops left the 300k-param ViT
# underfitting (pretrained/README.md), and fine-tuning the released ViT with them cost every row, the
# control included, ~1.3 points (measured, seed 0).
CROP_PADDING = {"vit": 0, "swin": 2}


def base(steps: int, lr: float, eval_split: str, seed: int, norm: dict = NORMALISATION, model: str = MODEL):
  c = config_lib.train_config(model)
  c.seed = seed
  c.steps = steps
  c.batch_size = BATCH
  c.eval_batch_size = 500
  c.data.train_split = "train_minus_minival"  # the 1000-image minival stays held out
  c.data.eval_split = eval_split
  c.data.crop_padding = CROP_PADDING[registry.family_of(model)]
  c.data.hflip = True
  c.data.mean, c.data.std, c.data.pad = tuple(norm["mean"]), tuple(norm["std"]), norm["pad"]
  c.optim.lr = lr
  c.optim.min_lr = lr * 0.01
  c.optim.warmup_steps = max(1, steps // 20)
  c.optim.weight_decay = 0.05
  c.optim.clip_grad_norm = 1.0
  c.label_smoothing = 0.1  # the paper's DeiT recipe, as the released base was trained
  c.xla_opt_level = 1  # short CPU runs: compile time dominates (see config_lib)
  c.log_every = max(1, steps // 10)
  c.ckpt_every = max(1, steps // 3)
  return c


# Fine-tuning lr, the paper's recipe carried over by its ratio to pretraining: DeiT pretrains at 5e-4 and the
# paper fine-tunes at 2e-4 (0.4x, both at batch 512); the released base trained at 1e-3 at batch 128, i.e.
# 5e-4 at batch BATCH by the linear rule, so 0.4 x 5e-4. (Fixed before the seeded runs; 5e-4, the first
# choice, left every fine-tuned row ~1.5 points below the base.)
FINETUNE_LR = 2e-4


def variant_config(kind: str, base_: dict, steps: int, eval_split: str, seed: int):
  """The run that grows `base_` (released_base / pretrained_here) by `kind` and fine-tunes it."""
  c = base(steps, FINETUNE_LR, eval_split, seed, base_["norm"], base_["model"])
  c.init_from = base_["path"]
  c.eval_at_init = True
  c.init_eval_split = "minival"  # an indicator only; 1k images keep the 7 extra evals cheap
  c.expansion.update(RECIPES[registry.family_of(base_["model"])])
  c.expansion.kind = kind
  c.expansion.seed = seed
  if kind == "scratch":  # random init: nothing to load, and it needs a higher learning rate
    c.init_from = ""
    c.optim.lr = 1e-3
  return c


def _stats(config):
  s = summary.summarize(config, xla_check=False)
  return {k: s[k] for k in ("depths", "params", "unique_params", "trainable_params", "gflops")}


def pretrain(workdir: str, steps: int, eval_split: str, seed: int) -> dict:
  """Train (or resume) the plain micro ViT; returns the trainer's result (export dir included)."""
  return trainer.run(base(steps, 1e-3, eval_split, seed), os.path.join(workdir, "pretrain"))


def released_base(path=RELEASED) -> dict:
  """The base of a release file: its path, its input normalisation and its provenance (release.read)."""
  if not Path(path).exists():
    raise MissingInputError(f"released base not found: {path} (pass --base FILE, or --pretrain to train one here)")
  meta = release.metadata_of(path)
  if meta.get("model") not in registry.list_models() or registry.family_of(meta["model"]) not in RECIPES:
    raise UserError(f"{path} holds a {meta.get('model')!r} base; the demo grows {' or '.join(RECIPES)} models")
  return dict(path=str(path), source=f"released, `{Path(path).name}`", norm={k: meta[k] for k in NORM_KEYS}, **meta)


def pretrained_here(workdir: str, steps: int, eval_split: str, seed: int) -> dict:
  """A base trained by this run (--pretrain), described like a released one."""
  pre = pretrain(workdir, steps, eval_split, seed)
  return dict(
      path=os.path.join(pre["export"], "params"),
      source="trained by this run",
      model=MODEL,
      norm=NORMALISATION,
      top1=pre["top1"],
      steps=steps,
      eval_split=eval_split,
      params=pre["params"],
  )


def run_name(kind: str) -> str:
  """The sub-directory of a fine-tuning run of `kind` ('' = the base trained further)."""
  return kind or "pretrained_more"


def setting_holder(cfg, key: str):
  """The part of a run's config that holds a ScaleNet setting: the model's drop path, else the expansion."""
  return cfg.model if key == "drop_path_rate" else cfg.expansion


def finetune(
    workdir: str, name: str, kind: str, base_: dict, steps: int, eval_split: str, seed: int, **expansion
) -> dict:
  """Expand the base (`kind`; '' = as it is), fine-tune it, return one report row."""
  cfg = variant_config(kind, base_, steps, eval_split, seed)
  for k, v in expansion.items():
    setting_holder(cfg, k)[k] = v
  wd = os.path.join(workdir, name)
  # A finished run is reported from what it logged (no restore, no second evaluation), so a restarted
  # report costs nothing for the runs already done and keeps their measured step time.
  if metrics_lib.final(wd, steps) is None:
    trainer.run(cfg, wd)
  done = metrics_lib.final(wd, steps)
  return dict(
      kind=kind or "none",
      **_stats(cfg),
      top1_init=paths.read_json(os.path.join(wd, "init_eval.json"))["top1"],
      top1=done["top1"],
      top5=done["top5"],
      sec_per_step=1 / done["steps_per_sec"] if done.get("steps_per_sec") else None,
  )


def run_demo(
    workdir: str, quick: bool, pretrain_steps=None, finetune_steps=None, seed: int = 0, base_file=None, train_base=False
) -> str:
  budget = BUDGETS[quick]
  pre_steps = pretrain_steps or budget["pretrain"]
  ft_steps = finetune_steps or budget["finetune"]
  os.makedirs(workdir, exist_ok=True)
  t_start = time.time()
  if train_base:
    print(f"== 1/2 pretraining {MODEL} for {pre_steps} steps", flush=True)
    base_ = pretrained_here(workdir, pre_steps, budget["eval_split"], seed)
  else:
    base_ = released_base(base_file or RELEASED)
    print(
        f"== 1/2 released base {base_['path']}: top-1 {base_['top1'] * 100:.2f}% on {base_['eval_split']}", flush=True
    )
  rows = []
  for label, kind in VARIANTS:
    print(f"== 2/2 {label}: accuracy at init, then fine-tuning for {ft_steps} steps", flush=True)
    row = finetune(workdir, run_name(kind), kind, base_, ft_steps, budget["eval_split"], seed)
    rows.append(dict(label=label, **row))
  report = render(rows, base_, ft_steps, budget["eval_split"], time.time() - t_start, quick)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(report)
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump({"base": {k: v for k, v in base_.items() if k != "norm"}, "rows": rows}, f, indent=1)
  return report


def render(rows, base_, ft_steps, eval_split, seconds, quick) -> str:
  split = "Fashion-MNIST test (10,000 images)" if eval_split == "test" else "a 1,000-image held-out minival split"
  out = [
      f"# ScaleNet-grow demo: {base_['model']} on Fashion-MNIST{' (--quick smoke run)' if quick else ''}",
      "",
      f"Pretrained base ({base_['source']}): top-1 {base_['top1'] * 100:.2f}% on {base_['eval_split']} after "
      f"{base_['steps']:,} steps. Every row below then trains {ft_steps} steps at batch {BATCH} "
      f"(AdamW, cosine); accuracy after fine-tuning on {split}, at init on the 1,000-image "
      "minival split held out of train.",
      "",
      "| method | layers | params (per instance) | unique params | trainable | MFLOPs/img | top-1 at init |"
      " top-1 after | top-5 after | ms/step |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    ms = f"{r['sec_per_step'] * 1e3:.0f}" if r["sec_per_step"] else "n/a"
    out.append(
        f"| {r['label']} | {sum(r['depths'])} | {r['params']:,} | {r['unique_params']:,} | "
        f"{r['trainable_params']:,} | {r['gflops'] * 1e3:.2f} | {r['top1_init'] * 100:.2f}% | "
        f"{r['top1'] * 100:.2f}% | {r['top5'] * 100:.2f}% | {ms} |"
    )
  best = max(rows, key=lambda r: r["top1"])
  sn = next(r for r in rows if r["kind"] == "scalenet")
  out += [
      "",
      f"Measured ranking: best top-1 is **{best['label']}** ({best['top1'] * 100:.2f}%); ScaleNet reaches "
      f"{sn['top1'] * 100:.2f}% ({(sn['top1'] - best['top1']) * 100:+.2f} points vs the best).",
      "These are single-seed numbers from a tiny model and a short budget; differences of a few tenths "
      "of a point are within run-to-run noise. The paper's ImageNet gains are not claimed here.",
      "",
      f"Total wall time: {seconds / 60:.1f} min.",
  ]
  return "\n".join(out) + "\n"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    report = run_demo(
        FLAGS.workdir, FLAGS.quick, FLAGS.pretrain_steps, FLAGS.finetune_steps, FLAGS.seed, FLAGS.base, FLAGS.pretrain
    )
  except UserError as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)
  print(report)


def define_flags():
  """Flags of this CLI (defined on demand: other modules import this one)."""
  flags.DEFINE_string("workdir", "demo_workdir", "Where runs, checkpoints and report.md go.")
  flags.DEFINE_bool("quick", False, "Tiny budget (about 3 minutes): a smoke run of the whole pipeline.")
  flags.DEFINE_string("base", None, f"Release file of the base to grow (default: {RELEASED.name} in pretrained/).")
  flags.DEFINE_bool("pretrain", False, "Pretrain the base here (a short run) instead of using a released one.")
  flags.DEFINE_integer("pretrain_steps", None, "Override the pretraining steps (with --pretrain).")
  flags.DEFINE_integer("finetune_steps", None, "Override the fine-tuning steps of every variant.")
  flags.DEFINE_integer("seed", 0, "Seed of every run.")


if __name__ == "__main__":
  jax_utils.configure_cpu()  # before jax starts: XLA:CPU flags, allocator (docs/performance.md)
  define_flags()
  app.run(main)
