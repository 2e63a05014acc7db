"""Preprocessing recipes: a frozen config (`Preprocess`) and the function that applies it to a batch.

Recipes:
* `simple` (small data): [gray->RGB] -> zero pad -> resize to `img_size` -> (train) random crop with
  `crop_padding` + horizontal flip -> normalise. Fully batched for fixed-shape sources.
* `swin` (ImageNet, Swin/DeiT recipe): train = RandomResizedCrop (bicubic) -> flip -> RandAugment
  (m9, mstd 0.5) -> normalise -> random erasing (0.25); eval = resize to img_size / crop_pct + centre crop.
  Mixup/CutMix and label smoothing run on device (`augment.py`).

Randomness is a pure function of (seed, epoch, example index), so a batch does not depend on how the
global batch is split over hosts nor on where a run was resumed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np
from PIL import Image

from scalenet_jax.data import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """How images become model inputs. `img_size=None` keeps the (padded) source size."""

  img_size: int | None = None
  recipe: str = "simple"  # 'simple' | 'swin'
  pad: int = 0  # Zero padding per side, applied first (e.g. 2 turns 28x28 into 32x32).
  to_rgb: bool = False  # Replicate a single channel to three (gray data into RGB-pretrained models).
  mean: Sequence[float] = (0.0,)
  std: Sequence[float] = (1.0,)
  # simple recipe, train only. crop_padding is in output pixels (scaled when cropping a smaller source).
  crop_padding: int = 0
  hflip: bool = False
  # swin recipe.
  rrc_scale: Sequence[float] = (0.08, 1.0)
  rrc_ratio: Sequence[float] = (3 / 4, 4 / 3)
  randaug_num_ops: int = 2
  randaug_magnitude: float = 9.0
  randaug_magnitude_std: float = 0.5
  randaug_prob: float = 0.5
  reprob: float = 0.25
  eval_crop_pct: float = 0.875
  interpolation: str = "bicubic"

  def __post_init__(self):
    if self.recipe not in ("simple", "swin"):
      raise ValueError(f"Preprocess.recipe must be 'simple' or 'swin', got {self.recipe!r}")
    if self.recipe == "swin" and not self.img_size:
      raise ValueError("Preprocess.recipe='swin' needs img_size")


def fashion_mnist_preprocess(img_size: int = 32, to_rgb: bool = False) -> Preprocess:
  """Fashion-MNIST: pad 28 -> 32 (then resize if img_size != 32), random crop (img_size / 8) + flip."""
  return Preprocess(
      img_size=img_size,
      recipe="simple",
      pad=2 if img_size >= 32 else 0,
      to_rgb=to_rgb,
      mean=FASHION_MNIST_MEAN * (3 if to_rgb else 1),
      std=FASHION_MNIST_STD * (3 if to_rgb else 1),
      crop_padding=max(1, img_size // 8),
      hflip=True,
  )


def imagenet_swin_preprocess(img_size: int = 224, **overrides) -> Preprocess:
  """The Swin ImageNet recipe (RandAugment m9-mstd0.5, random erasing 0.25, bicubic, crop 0.875)."""
  kw = dict(img_size=img_size, recipe="swin", mean=IMAGENET_MEAN, std=IMAGENET_STD, hflip=True)
  return Preprocess(**{**kw, **overrides})


class Preprocessor:
  """Loads and preprocesses examples of one source: `(indices, seed, epoch) -> float32 [n, S, S, C]`."""

  def __init__(self, source, config: Preprocess | None, train: bool):
    self.source, self.cfg, self.train = source, config or Preprocess(), train
    self.fixed = source.fixed_shape
    # Per-example work is needed for the Swin recipe and whenever sizes vary (stacking needs a size).
    self.per_example = self.cfg.recipe == "swin" or not self.fixed
    if not self.fixed and not self.cfg.img_size:
      raise ValueError(f"{source!r} has variable image sizes: set Preprocess.img_size")

  def __call__(self, indices: np.ndarray, seed: int = 0, epoch: int = 0) -> np.ndarray:
    indices = np.asarray(indices, np.int64)
    if self.per_example:
      images = [self.source[int(i)]["image"] for i in indices]
    else:
      images = self.source.get_batch(indices)
    return self.transform(images, indices, seed, epoch)

  @functools.cached_property
  def output_shape(self) -> tuple[int, ...]:
    """Shape of one preprocessed example, found without reading the source (by transforming zeros)."""
    h, w, c = self.source.image_shape
    zeros = np.zeros((1, h or self.cfg.img_size, w or self.cfg.img_size, c), np.uint8)
    return self.transform(list(zeros) if self.per_example else zeros, np.zeros(1, np.int64)).shape[1:]

  def transform(self, images, indices: np.ndarray, seed: int = 0, epoch: int = 0) -> np.ndarray:
    """Loaded images (a list when `per_example`, else uint8 [n, H, W, C]) of `indices` -> model inputs."""
    cfg = self.cfg
    rngs = None
    if self.per_example:
      rngs = [np.random.default_rng((seed, epoch, int(i))) for i in indices] if self.train else None
      x = np.stack([self._example(image, rngs[k] if rngs else None) for k, image in enumerate(images)])
    else:
      x = T.pad_batch(images, cfg.pad)
    if cfg.recipe == "simple":
      size = cfg.img_size or x.shape[1]
      if self.train and (cfg.crop_padding or cfg.hflip):
        # Crop/flip before upsampling (cheaper), with the padding scaled to source pixels.
        crop = round(cfg.crop_padding * x.shape[1] / size)
        x = T.random_crop_flip(x, crop, cfg.hflip, T.example_uniforms(seed, epoch, indices, 3))
      x = T.resize_batch(x, size)
    mean, std = cfg.mean, cfg.std
    if cfg.to_rgb and x.shape[-1] == 1:  # normalize() broadcasts the gray channel to 3.
      mean, std = np.broadcast_to(mean, 3), np.broadcast_to(std, 3)
    x = T.normalize(x, mean, std)
    if cfg.recipe == "swin" and self.train and cfg.reprob > 0:
      x = np.stack([T.random_erasing(img, r, cfg.reprob) for img, r in zip(x, rngs)])
    return x

  def _example(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """One uint8 HWC image -> uint8 [S, S, C] (swin ops, or a plain resize for variable sizes)."""
    cfg = self.cfg
    if cfg.to_rgb and image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    if cfg.pad:
      image = np.pad(image, ((cfg.pad, cfg.pad), (cfg.pad, cfg.pad), (0, 0)))
    img = T.to_pil(image)
    if cfg.recipe == "simple":  # Variable-size source: resize whole image; crop/flip run batched.
      img = img.resize((cfg.img_size, cfg.img_size), T.INTERPOLATION["bilinear"])
    elif rng is None:
      img = T.resize_center_crop(img, cfg.img_size, cfg.eval_crop_pct, cfg.interpolation)
    else:
      img = T.random_resized_crop(img, cfg.img_size, rng, cfg.rrc_scale, cfg.rrc_ratio, cfg.interpolation)
      if cfg.hflip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
      if cfg.randaug_num_ops:
        img = T.rand_augment(
            img, rng, cfg.randaug_num_ops, cfg.randaug_magnitude, cfg.randaug_magnitude_std, cfg.randaug_prob
        )
    return T.from_pil(img)
