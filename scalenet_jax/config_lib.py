"""Shared pieces of experiment configs (the files in configs/ compose and override these).

Every field a run can take is declared here with its default, so configs are locked: a misspelled
`--config.key=value` override is rejected by ml_collections instead of being silently ignored.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from scalenet_jax.train import optim


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
  return _with(
      ml_collections.ConfigDict(
          dict(
              name=name,
              # Architecture overrides of the registry entry (None = the registry's value).
              num_classes=config_dict.placeholder(int),
              img_size=config_dict.placeholder(int),
              in_chans=config_dict.placeholder(int),
              drop_path_rate=0.0,
              dtype="float32",  # compute dtype: 'float32' | 'bfloat16' (params stay float32)
              remat=False,
          )
      ),
      overrides,
  )


def expansion_config(**overrides) -> ml_collections.ConfigDict:
  """ScaleNet-grow expansion; `kind=''` = no expansion (train the model as it is)."""
  return _with(
      ml_collections.ConfigDict(
          dict(
              kind="",  # '' | scalenet | random | stack | interpolate | swa | scratch
              reuse=2,
              mapping="interpolate",  # interpolate | stack | comma-separated explicit list "0,0,1,1,..."
              subset="",  # comma-separated: ViT layer indices (default all) / Swin stages (default last)
              adjust="adapter",  # adapter | lora | none
              rank=16,
              act="gelu",
              trainable="all",  # all | adjust_ln_head | adjust_ln (adjustment modules + norms)
              num_new_layers=0,  # baselines: 0 = parameter-matched
              seed=0,
          )
      ),
      overrides,
  )


def data_config(**overrides) -> ml_collections.ConfigDict:
  return _with(
      ml_collections.ConfigDict(
          dict(
              name="fashion_mnist",  # fashion_mnist | imagefolder:<dir> | tfds:<name> | synthetic
              root="",  # dataset directory override ('' = the source's default)
              train_split="train",
              eval_split="test",
              recipe="simple",  # simple (crop+flip) | swin (RandAugment, RRC, erasing) | none
              pad=0,
              crop_padding=0,
              hflip=False,
              mean=(0.5,),
              std=(0.5,),
              minival_per_class=100,
              mixup=0.0,
              cutmix=0.0,
              mixup_switch_prob=0.5,
              num_threads=2,
              synthetic_examples=512,  # name=synthetic only: train-split size (images shaped like the model's input)
          )
      ),
      overrides,
  )


def base_config(model: str = "vit_micro_patch4_28") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = model_config(model)
  c.expansion = expansion_config()
  c.init_from = ""  # timm .safetensors/.pth, or an exported params dir (<workdir>/export/params)
  c.init_skip = ""  # comma-separated timm keys allowed to be missing (e.g. the head when num_classes differs)
  c.data = data_config()
  c.optim = optim.default_config()
  c.optim.total_steps = config_dict.placeholder(int)  # filled from train.steps when unset
  c.batch_size = 128  # global
  c.eval_batch_size = 256
  c.steps = 1000
  c.label_smoothing = 0.0
  c.ema_decay = 0.0
  c.log_every = 50
  c.eval_every = 0  # 0 = at the end only
  c.eval_at_init = False  # also evaluate the starting params (saved in <workdir>/init_eval.json)
  c.init_eval_split = ""  # the split eval_at_init uses ('' = data.eval_split)
  c.ckpt_every = 200
  c.keep_checkpoints = 2
  c.mesh_data = -1
  c.mesh_model = 1
  c.sharding = "replicate"  # replicate | fsdp
  c.quick = False
  c.xla_opt_level = -1  # XLA backend optimisation level of the train/eval steps; -1 = XLA's default.
  # 1 compiles a CPU step ~3x faster: worth it for short runs (the demo, tests) where compile dominates.
  return c


def _with(c: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  for k, v in overrides.items():
    if k not in c:
      raise KeyError(f"unknown config field {k!r}")
    c[k] = v
  return c


# ----------------------------------------------------------------------------------------------
# ScaleNet-grow paper settings (ImageNet-1k, Table I): one entry per pretrained model.
# ----------------------------------------------------------------------------------------------
# drop path rate and trainable set per model (doc §2 and §4)
GROW_PAPER = {
    "deit_tiny_patch16_224": dict(drop_path=0.0, trainable="all", mapping="interpolate"),
    "deit_small_patch16_224": dict(drop_path=0.2, trainable="all", mapping="interpolate"),
    "deit_base_patch16_224": dict(drop_path=0.5, trainable="adjust_ln_head", mapping="interpolate"),
    "swin_tiny_patch4_window7_224": dict(drop_path=0.2, trainable="adjust_ln_head", mapping="stack"),
    "swin_small_patch4_window7_224": dict(drop_path=0.2, trainable="adjust_ln_head", mapping="stack"),
    "swin_base_patch4_window7_224": dict(drop_path=0.5, trainable="adjust_ln_head", mapping="stack"),
}
IMAGENET_TRAIN_IMAGES = 1_281_167


def grow_paper_config(model: str, kind: str = "scalenet", epochs: int = 100) -> ml_collections.ConfigDict:
  """The paper's 2x expansion recipe for `model` (kind: scalenet or a baseline name)."""
  p = GROW_PAPER[model]
  c = base_config(model)
  c.model.drop_path_rate = p["drop_path"]
  c.expansion = expansion_config(kind=kind, mapping=p["mapping"], trainable=p["trainable"])
  c.init_from = f"pretrained/{model}.safetensors"  # timm weights, converted at start
  c.data = data_config(
      name="tfds:imagenet2012",
      eval_split="validation",
      recipe="swin",
      mixup=0.8,
      cutmix=1.0,
      mean=(0.485, 0.456, 0.406),
      std=(0.229, 0.224, 0.225),
      minival_per_class=50,
  )
  c.batch_size = 512
  c.steps = epochs * IMAGENET_TRAIN_IMAGES // c.batch_size
  c.label_smoothing = 0.1
  c.optim.lr = 2e-4
  c.optim.min_lr = 2e-6
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 5 * IMAGENET_TRAIN_IMAGES // c.batch_size
  c.optim.clip_grad_norm = 5.0
  c.log_every = 100
  c.eval_every = IMAGENET_TRAIN_IMAGES // c.batch_size
  c.ckpt_every = 2000
  return c


def parse_arg(arg: str, **defaults) -> dict:
  """big_vision-style config argument `"k=v,k2=v2"` -> dict, typed like `defaults`."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    k, sep, v = item.partition("=")
    if not sep or k not in defaults:
      raise ValueError(f"bad config argument {item!r}: expected one of {sorted(defaults)} as key=value")
    out[k] = type(defaults[k])(v) if defaults[k] is not None else v
  return out
