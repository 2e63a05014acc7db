"""From a run's `config.data` (`config_lib.data_config()`) to sources, preprocessing and step batches.

The one place where config fields become data objects, shared by the image trainer and the NAS drivers:

* `open_source(data_cfg, split, ...)`: the split by name (`synthetic` takes the model's input shape);
* `preprocess(data_cfg, img_size, in_chans)`: the recipe producing `img_size` inputs;
* `train_stream(...)` / `eval_stream(...)`: batches in the train step's format
  (`{'images', 'labels'[, 'mask']}`) for the step numbers / examples of this host.
"""

from __future__ import annotations

from typing import Iterator, Optional

import jax
import numpy as np

from scalenet_jax.data import pipeline, preprocess as preprocess_lib, sources
from scalenet_jax.errors import ConfigError

RECIPES = ("simple", "swin", "rrc", "none")


def open_source(
    data_cfg, split: str, *, cache_dir=None, image_shape=None, num_classes: Optional[int] = None
) -> sources.Source:
  """Opens `split` of `data_cfg.name`; `data_cfg.root` is the Fashion-MNIST directory or the TFDS data dir.

  Index files (TFDS labels, the mini-val split) that cannot be stored next to the dataset go to
  `cache_dir` (the run's workdir). `image_shape`/`num_classes` size the `synthetic` source (smoke runs:
  images shaped like the model's input)."""
  d = data_cfg
  kw = {}
  if d.root and d.name == "fashion_mnist":
    kw = {"root": d.root}
  elif d.root and d.name.startswith("tfds:"):
    kw = {"data_dir": d.root}
  elif d.name == "synthetic":
    kw = dict(num_examples=d.synthetic_examples, num_classes=num_classes, image_shape=tuple(image_shape))
  return sources.get_source(d.name, split, minival_per_class=d.minival_per_class, cache_dir=cache_dir, **kw)


def preprocess(data_cfg, img_size: int, in_chans: int) -> preprocess_lib.Preprocess:
  """The preprocessing of `data_cfg.recipe` producing `img_size` x `img_size` x `in_chans` inputs.

  'simple': pad, resize, (train) random crop with `crop_padding` + optional flip; 'swin': the Swin/DeiT
  ImageNet recipe (RandomResizedCrop, flip, RandAugment, random erasing); 'rrc': RandomResizedCrop + flip
  only (the ScaleNet-search ImageNet recipe); 'none': pad and resize, no augmentation."""
  d = data_cfg
  if d.recipe not in RECIPES:
    raise ConfigError(f"data.recipe must be one of {RECIPES}, got {d.recipe!r}")
  if d.recipe in ("swin", "rrc"):
    extra = {} if d.recipe == "swin" else dict(randaug_num_ops=0, reprob=0.0)
    return preprocess_lib.imagenet_swin_preprocess(img_size, mean=tuple(d.mean), std=tuple(d.std), **extra)
  aug = d.recipe == "simple"
  return preprocess_lib.Preprocess(
      img_size=img_size,
      recipe="simple",
      pad=d.pad,
      to_rgb=in_chans == 3 and len(d.mean) == 3,
      mean=tuple(d.mean),
      std=tuple(d.std),
      crop_padding=d.crop_padding if aug else 0,
      hflip=d.hflip and aug,
  )


def _step_batch(b: dict) -> dict:
  """The train step's names (`images`, `labels`); other entries (mask, plan extras) pass through."""
  out = {"images": b.pop("image"), "labels": b.pop("label"), **b}
  if "mask" in out:
    out["mask"] = out["mask"].astype(np.float32)
  return out


def train_stream(
    data_cfg, source, prep, global_batch: int, seed: int, start: int, num_steps: int, plan=None, loader=None
) -> Iterator[dict]:
  """This host's rows of the global train batches of steps `start .. start + num_steps - 1`
  (`plan`: per-step preprocessing and extra batch entries; `loader`: examples other than an image and a
  class, see `pipeline.train_batches`)."""
  batches = pipeline.train_batches(
      source,
      global_batch,
      seed,
      start_step=start,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      preprocess=prep,
      num_steps=num_steps,
      num_threads=data_cfg.num_threads,
      plan=plan,
      loader=loader,
  )
  return map(_step_batch, batches)


def eval_stream(data_cfg, source, prep, batch_size: int, loader=None) -> Iterator[dict]:
  """Every example of `source` once (padded last batch, `mask` = 1 on real examples), this host's rows
  (`loader`: as in `train_stream`)."""
  batches = pipeline.eval_batches(
      source,
      batch_size,
      preprocess=prep,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      num_threads=data_cfg.num_threads,
      loader=loader,
  )
  return map(_step_batch, batches)
