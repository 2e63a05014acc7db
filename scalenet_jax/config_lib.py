"""The one config schema: every field a run can take, declared once with its default.

* `base_config()`: what every training run has (seed, batch, steps, optimizer, data, mesh, sharding,
  logging, checkpoints, XLA options, the `quick` switch). The ScaleNet-grow trainer extends it with
  `train_config()` (model, expansion, initial weights); the NAS configs with
  `scalenet_jax.nas.train_supernet.supernet_config()` (search space, path sampling); the decoder-LM
  trainer with `lm_config()` (the same model / expansion pieces, text data).
* `override(config, {...})`: the one way to change fields (dotted keys; unknown fields are errors).
* `resolve(config)`: the one place that reads `quick`: it merges `quick_overrides` into a copy.
* `parse_arg()` / `int_list()`: typed parsing of config-file arguments and comma-separated lists.
* `load_config_file(path, arg)`: a config file's `get_config(arg)` outside the `--config` flag (a config
  composed from a sibling file, the study runners, tests); `load_config_module(path)` the file itself.

Configs are locked (`config_flags.DEFINE_config_file(lock_config=True)`), so a misspelled
`--config.key=value` is rejected by ml_collections instead of being silently ignored; and every declared
field is read by the code (tests/test_config_lib.py checks it on real runs).
"""

from __future__ import annotations

import importlib.util
import os
import types
from typing import Any, Mapping, Optional

import ml_collections
from ml_collections import config_dict

from scalenet_jax.errors import ConfigError

IMAGENET_TRAIN_IMAGES = 1_281_167
# Fashion-MNIST's `train_minus_minival` (data/sources.py): 60,000 minus the 1,000-image minival (100 per class)
FASHION_MNIST_TRAIN_IMAGES = 59_000


# ----------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------
# No weight decay on biases, norm gains/offsets, position/class tokens and relative position bias tables
# (the usual ViT/Swin/EfficientNet recipe). Matched against the '/'-joined param path.
DEFAULT_NO_DECAY = (
    r"(^|/)bias$",
    r"(^|/)scale$",  # flax LayerNorm / BatchNorm gain
    r"(?i)(^|/)[^/]*(norm|ln|bn)[^/]*/",  # any param inside a norm module (norm1, LayerNorm_0, bn, ...)
    r"pos_embed",
    r"cls_token",
    r"dist_token",
    r"relative_position_bias_table",
)


def optim_config(**overrides) -> ml_collections.ConfigDict:
  """Optimizer fields (AdamW, the ScaleNet-grow recipe, by default); see `train/optim.py`."""
  return override(
      ml_collections.ConfigDict(
          dict(
              name="adamw",  # 'adamw' | 'sgd' (SGD is Nesterov momentum; the NAS recipe)
              schedule="cosine",  # 'cosine' (warmup + cosine) | 'poly' (mmseg's poly with its warmup)
              lr=2e-4,  # peak learning rate (after warmup)
              min_lr=0.0,  # end value of the decay
              poly_power=1.0,  # schedule='poly': exponent of (1 - step / total_steps)
              warmup_init_lr=0.0,  # learning rate at step 0 of the linear warmup
              warmup_steps=0,  # in optimizer steps (i.e. after gradient accumulation)
              total_steps=config_dict.placeholder(int),  # optimizer steps; None = the run's steps
              b1=0.9,
              b2=0.999,
              eps=1e-8,  # AdamW
              momentum=0.9,
              nesterov=True,  # SGD
              weight_decay=0.05,
              no_decay=list(DEFAULT_NO_DECAY),  # param-path regexes with weight decay 0
              wd_mults=[],  # [[regex, multiplier], ...], first match wins (NAS: convs 2x)
              clip_grad_norm=0.0,  # global-norm clipping of the (averaged) trainable gradients; 0 = off
              grad_accum_steps=1,  # optax.MultiSteps: one optimizer step every k train steps
          )
      ),
      overrides,
  )


def data_config(**overrides) -> ml_collections.ConfigDict:
  return override(
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
              synthetic_examples=512,  # name=synthetic only: train-split size
          )
      ),
      overrides,
  )


def base_config(**overrides) -> ml_collections.ConfigDict:
  """The fields of every training run (grow, NAS super-supernet, stand-alone retraining)."""
  c = ml_collections.ConfigDict()
  c.pipeline = "train"  # which driver `main` runs: train | lm | segment | nas_search | nas_supernet | nas_retrain
  c.seed = 0
  c.data = data_config()
  c.optim = optim_config()
  c.batch_size = 128  # global
  c.eval_batch_size = 256
  c.steps = 1000
  c.label_smoothing = 0.0
  c.log_every = 50
  c.eval_every = 0  # 0 = at the end only
  c.ckpt_every = 200
  c.keep_checkpoints = 2
  c.mesh_data = -1  # devices on the data axis (-1 = all)
  c.mesh_model = 1
  c.sharding = "replicate"  # replicate | fsdp
  c.xla_opt_level = -1  # XLA backend optimisation level of the train/eval steps; -1 = XLA's default.
  # 1 compiles a CPU step ~3x faster: worth it for short runs (the demo, tests) where compile dominates.
  c.quick = False  # merge `quick_overrides` (a smoke-sized run; see `resolve`)
  c.quick_overrides = ml_collections.ConfigDict()
  return override(c, overrides)


# ----------------------------------------------------------------------------------------------------
# The image-model trainer (plain training and ScaleNet-grow expansion)
# ----------------------------------------------------------------------------------------------------
# Architecture overrides of an image model's registry entry and their types (None = the registry's value);
# `depth`: a ViT's number of blocks, `depths`: a Swin's blocks per stage.
IMAGE_ARCH_FIELDS = dict(num_classes=int, img_size=int, in_chans=int, depth=int, depths=tuple, patch_size=int)


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
  return override(
      ml_collections.ConfigDict(
          dict(
              name=name,
              **{k: config_dict.placeholder(t) for k, t in IMAGE_ARCH_FIELDS.items()},
              drop_path_rate=0.0,
              dtype="float32",  # compute dtype: 'float32' | 'bfloat16' (params stay float32)
              remat=False,
          )
      ),
      overrides,
  )


def expansion_config(**overrides) -> ml_collections.ConfigDict:
  """ScaleNet-grow expansion; `kind=''` = no expansion (train the model as it is)."""
  return override(
      ml_collections.ConfigDict(
          dict(
              kind="",  # '' | scalenet | random | stack | interpolate | swa | scratch
              reuse=2,
              mapping="interpolate",  # interpolate | stack | comma-separated explicit list "0,0,1,1,..."
              subset="",  # comma-separated: ViT layer indices (default all) / Swin stages (default last)
              adjust="adapter",  # adapter | lora | none
              adjust_scope="",  # blocks with adjustment modules: reused | all | '' = the family's (Swin: all)
              rank=16,
              act="gelu",
              trainable="all",  # all | adjust_ln_head | adjust_ln (adjustment modules + norms)
              num_new_layers=0,  # baselines: 0 = parameter-matched
              seed=0,
          )
      ),
      overrides,
  )


def train_config(model: str = "vit_micro_patch4_28", **overrides) -> ml_collections.ConfigDict:
  """A run of `scalenet_jax.trainer`: train `model` (optionally expanded) on an image dataset."""
  c = base_config()
  c.model = model_config(model)
  c.expansion = expansion_config()
  # The weights a fresh run starts from: a timm / Hugging Face `model.safetensors` (or its directory), an
  # original DeiT / Swin release `.pth`, or an exported params dir (<workdir>/export/params).
  c.init_from = ""
  c.init_new_head = False  # True: a new, randomly initialised classifier head (another number of classes)
  c.ema_decay = 0.0
  c.eval_at_init = False  # also evaluate the starting params (saved in <workdir>/init_eval.json)
  c.init_eval_split = ""  # the split eval_at_init uses ('' = data.eval_split)
  return override(c, overrides)


# ----------------------------------------------------------------------------------------------------
# Semantic segmentation (pipeline 'segment': UPerNet on a grown Swin backbone, §IV-E)
# ----------------------------------------------------------------------------------------------------
def segment_data_config(**overrides) -> ml_collections.ConfigDict:
  """Segmentation data: a TFDS image / annotation dataset and mmseg's recipe (`data/segmentation.py`);
  ADE20K by default."""
  return override(
      ml_collections.ConfigDict(
          dict(
              name="tfds:scene_parse150",  # TFDS's ADE20K (SceneParse150): `image` and `annotation` features
              root="",  # the TFDS data dir ('' = TFDS_DATA_DIR or TFDS's default)
              train_split="train",
              eval_split="test",  # TFDS's name for ADE20K's 2,000 validation images
              crop_size=512,  # training crops and evaluation squares; the backbone's input size
              resize_long=2048,  # mmseg's img_scale (2048, 512): keep-ratio resize to fit it
              resize_short=512,
              ratio_range=(0.5, 2.0),  # training: the scale times a ratio uniform in this range
              cat_max_ratio=0.75,  # training crops: largest class share of the labelled pixels
              hflip=True,
              reduce_zero_label=True,  # annotation 0 ("other") -> ignored (255), classes 1..K -> 0..K-1
              mean=(0.485, 0.456, 0.406),
              std=(0.229, 0.224, 0.225),
              num_threads=2,
          )
      ),
      overrides,
  )


def segment_config(backbone: str = "swin_tiny_patch4_window7_224", **overrides) -> ml_collections.ConfigDict:
  """A run of `scalenet_jax.segmenter`: UPerNet (+ FCN auxiliary head) on a feature `backbone`, grown by
  `expansion` (every stage: `subset`), started from `init_from`'s backbone weights."""
  c = base_config()
  c.pipeline = "segment"
  c.model = model_config(backbone, num_classes=150)  # num_classes: the segmentation classes
  c.head = ml_collections.ConfigDict(
      dict(
          channels=512,  # UPerHead width (mmseg's upernet_swin)
          aux_channels=256,  # FCN auxiliary head width; 0 = none
          aux_in_index=2,  # the backbone output the auxiliary head reads (Swin stage 3)
          aux_weight=0.4,  # its loss weight
          dropout=0.1,
      )
  )
  # The paper's dense setting: every stage 2x (stack mapping), all layers reused, adapters on every block;
  # the backbone trains its adjustment modules and norms, the heads train whole (`dense.trainable_mask`).
  # subset '' = every stage of the backbone.
  c.expansion = expansion_config(kind="scalenet", mapping="stack", subset="", adjust_scope="all", trainable="adjust_ln")
  # An mmseg / mmdet checkpoint (`backbone.*` keys; its other parts left out only when `init_skip` names
  # them), a timm / original-release Swin classifier, or an exported classifier params dir.
  c.init_from = ""
  c.init_skip = "decode_head.,auxiliary_head."  # comma-separated key prefixes of init_from not loaded
  c.data = segment_data_config()
  c.batch_size = 16
  c.eval_batch_size = 16
  return override(c, overrides)


def upernet_paper_config(backbone: str, steps: int = 40_000) -> ml_collections.ConfigDict:
  """§IV-E's ADE20K setting on `backbone`: UPerNet grown 2x over every stage, mmseg's upernet_swin recipe
  (batch 16 of 512 px crops, AdamW lr 6e-5, weight decay 0.01 off norms and relative position tables,
  poly schedule with power 1 after 1,500 warmup iterations from 1e-6 x lr, drop path 0.3); `steps` 40k
  as the paper (mmseg's schedule is 160k)."""
  c = segment_config(backbone)
  c.model.drop_path_rate = 0.3
  c.init_from = f"pretrained/{backbone}.safetensors"  # timm's ImageNet classifier, as mmseg starts
  c.steps = steps
  c.optim = optim_config(
      schedule="poly",
      lr=6e-5,
      min_lr=0.0,
      warmup_steps=1500,
      warmup_init_lr=6e-5 * 1e-6,
      weight_decay=0.01,
      no_decay=[r"relative_position_bias_table", r"(^|/)[^/]*norm[^/]*/"],  # mmseg's paramwise_cfg
  )
  c.log_every = 50
  c.eval_every = 4000  # mmseg: every 16k of its 160k iterations
  c.ckpt_every = 4000
  c.keep_checkpoints = 2
  return c


# ----------------------------------------------------------------------------------------------------
# The decoder-LM trainer (pipeline 'lm': pretraining, ScaleNet-grow expansion, fine-tuning on text)
# ----------------------------------------------------------------------------------------------------
LLAMA_ARCH_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)


def lm_model_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """A registry decoder (`llama_*`) with optional architecture overrides (None = the registry's value)."""
  c = ml_collections.ConfigDict(dict(name=name, drop_path_rate=0.0, dtype="float32", remat=False))
  for field in LLAMA_ARCH_FIELDS:
    c[field] = config_dict.placeholder(int)
  return override(c, overrides)


def text_data_config(**overrides) -> ml_collections.ConfigDict:
  """Text for `scalenet_jax.lm_trainer` (see `data/text.py`)."""
  return override(
      ml_collections.ConfigDict(
          dict(
              # fortunes | python_stdlib: a corpus split by a hash of each document, windows of seq_len;
              # instructions: Alpaca-format JSON / JSON lines at `root` (loss on the responses only).
              name="fortunes",
              root="",  # corpus directory ('' = its default) / the instruction file
              eval_path="",  # instructions: a held-out file ('' = a hash split of `root`)
              held_out_fraction=0.05,
              split_seed=0,
              # tokenizer.json (or its directory); '' = init_from's tokenizer.json if it has one, else a
              # byte-level BPE of the model's vocab size trained on the train split, saved in the workdir.
              tokenizer="",
              seq_len=128,
              bos_token="",  # instructions: prepended to every example ('' = none)
              eos_token="<|eos|>",  # ends every document / response
              pad_token="",  # instructions: right padding ('' = the eos token; padding has no loss)
              num_threads=2,
          )
      ),
      overrides,
  )


def lm_config(model: str = "llama_small", **overrides) -> ml_collections.ConfigDict:
  """A run of `scalenet_jax.lm_trainer`: train (or grow, then fine-tune) a decoder on text."""
  c = base_config()
  c.pipeline = "lm"
  c.model = lm_model_config(model)
  c.data = text_data_config()
  # Defaults of the expansion for decoders: adapters on the MLP linears, adapters + norms trainable.
  c.expansion = expansion_config(trainable="adjust_ln")
  # A Hugging Face `LlamaForCausalLM` directory (config.json + safetensors, checked against `model`),
  # safetensors with HF keys, or an exported params dir (<workdir>/export/params).
  c.init_from = ""
  c.init_new_head = False
  c.ema_decay = 0.0
  c.eval_at_init = False  # also evaluate the starting params (<workdir>/init_eval.json)
  c.batch_size = 32
  c.eval_batch_size = 32
  c.optim.weight_decay = 0.1
  return override(c, overrides)


# The arms of a decoder comparison at equal budgets (same data, steps, batch and schedule):
# pretrain: the base from scratch; scalenet: ScaleNet 2x of the base; stack: the parameter-matched
# stacked baseline (new layers appended as copies of the first ones, no sharing); further: the base
# itself trained for the same budget.
LM_RUNS = ("pretrain", "scalenet", "stack", "further")


def lm_run(c, run: str, base: str, *, mapping="interpolate", adjust="adapter", rank=16, trainable="adjust_ln", reuse=2):
  """Sets `c` (an `lm_config`) up as one arm of `LM_RUNS`, growing from / continuing `base` (`reuse` 1 with
  `run='scalenet'`: the base with adjustment modules and no new layers)."""
  if run not in LM_RUNS:
    raise ConfigError(f"unknown run {run!r}; choose one of {LM_RUNS}")
  if run == "pretrain":
    c.init_from, c.expansion.kind = "", ""
    return c
  c.init_from = base
  if run == "scalenet":
    c.expansion = expansion_config(
        kind="scalenet", mapping=mapping, adjust=adjust, rank=rank, trainable=trainable, reuse=reuse
    )
  elif run == "stack":
    # num_new_layers=0: as many new layers as match ScaleNet's added parameters; they and every norm train
    # under adjust_ln (adjust_ln_head: + an untied head), the pretrained layers stay frozen like ScaleNet's.
    c.expansion = expansion_config(kind="stack", adjust=adjust, rank=rank, trainable=trainable)
  else:
    c.expansion.kind = ""  # no expansion: every parameter of the base trains
  return c


# ----------------------------------------------------------------------------------------------------
# ScaleNet-grow paper settings (ImageNet-1k, Table I): one entry per pretrained model.
# ----------------------------------------------------------------------------------------------------
# drop path rate and trainable set per model (doc §2 and §4)
GROW_PAPER = {
    "deit_tiny_patch16_224": dict(drop_path=0.0, trainable="all", mapping="interpolate"),
    "deit_small_patch16_224": dict(drop_path=0.2, trainable="all", mapping="interpolate"),
    "deit_base_patch16_224": dict(drop_path=0.5, trainable="adjust_ln_head", mapping="interpolate"),
    "swin_tiny_patch4_window7_224": dict(drop_path=0.2, trainable="adjust_ln_head", mapping="stack"),
    "swin_small_patch4_window7_224": dict(drop_path=0.2, trainable="adjust_ln_head", mapping="stack"),
    "swin_base_patch4_window7_224": dict(drop_path=0.5, trainable="adjust_ln_head", mapping="stack"),
}


def grow_paper_config(model: str, kind: str = "scalenet", epochs: int = 100) -> ml_collections.ConfigDict:
  """The paper's 2x expansion recipe for `model` (kind: scalenet or a baseline name)."""
  p = GROW_PAPER[model]
  c = train_config(model)
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


# ----------------------------------------------------------------------------------------------------
# Overrides, quick runs, argument parsing
# ----------------------------------------------------------------------------------------------------
def override(c: ml_collections.ConfigDict, updates: Mapping[str, Any], prefix: str = "") -> ml_collections.ConfigDict:
  """Sets `updates` on `c` in place and returns it. Keys may be dotted ('optim.lr'); a mapping value for a
  sub-config updates its fields recursively. Unknown fields raise `ConfigError`."""
  for key, value in updates.items():
    head, _, rest = key.partition(".")
    if head not in c:
      raise ConfigError(f"unknown config field '{prefix}{head}'")
    if rest:
      override(c[head], {rest: value}, f"{prefix}{head}.")
    elif isinstance(c[head], ml_collections.ConfigDict) and isinstance(value, Mapping) and c[head].keys():
      override(c[head], value, f"{prefix}{head}.")
    else:
      try:
        with c.unlocked():
          c[head] = value
      except TypeError as e:  # ml_collections' type check, e.g. a string for an int field
        raise ConfigError(f"config field {prefix}{head}: {e}") from None
  return c


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config a run uses: a copy, with `quick_overrides` merged in when `quick` is set."""
  c = ml_collections.ConfigDict(config.to_dict())
  if c.get("quick", False) and "quick_overrides" in c:
    override(c, c.quick_overrides.to_dict())
  c.lock()
  return c


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_value(text: str, like: Any, what: str) -> Any:
  """`text` parsed as the type of `like` (bool strictly: true/false/1/0/yes/no/on/off)."""
  if isinstance(like, bool):
    t = text.strip().lower()
    if t not in _TRUE + _FALSE:
      raise ConfigError(f"{what}: expected true or false, got {text!r}")
    return t in _TRUE
  if like is None or isinstance(like, str):
    return text
  try:
    return type(like)(text)
  except ValueError:
    raise ConfigError(f"{what}: expected {type(like).__name__}, got {text!r}") from None


def parse_arg(arg: Optional[str], **defaults) -> dict:
  """big_vision-style config argument `"k=v,k2=v2"` -> dict, typed like `defaults`."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    k, sep, v = item.partition("=")
    if not sep or k not in defaults:
      raise ConfigError(f"bad config argument {item!r}: expected one of {sorted(defaults)} as key=value")
    out[k] = parse_value(v, defaults[k], f"config argument {k!r}")
  return out


def int_list(text, what: str = "value") -> Optional[tuple[int, ...]]:
  """'1,2,3' (or a list / tuple of ints) -> (1, 2, 3); '' or None -> None."""
  if text is None:
    return None
  if isinstance(text, (list, tuple)):
    return tuple(int(v) for v in text) or None
  text = str(text).strip()
  if not text:
    return None
  try:
    return tuple(int(v) for v in text.split(","))
  except ValueError:
    raise ConfigError(f"{what}: expected a comma-separated list of integers, got {text!r}") from None


# ----------------------------------------------------------------------------------------------------
# Config files outside the --config flag
# ----------------------------------------------------------------------------------------------------
def load_config_module(path: str | os.PathLike) -> types.ModuleType:
  """The config file at `path` as a module (config files are files, not a package)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConfigError(f"config file not found: {path}")
  name = "_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config_file(path: str | os.PathLike, arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file at `path` (`get_config()` when `arg` is None), as
  `--config=path:arg` builds it."""
  module = load_config_module(path)
  return module.get_config() if arg is None else module.get_config(arg)
