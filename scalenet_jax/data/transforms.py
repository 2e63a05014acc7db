"""Image operations for the input pipeline (host side, numpy/PIL).

Two kinds:
* batched numpy ops on [B, H, W, C] arrays (resize, pad, random crop + flip, normalise) for the simple
  recipe: no per-example Python, so small datasets are fed at full speed;
* per-example PIL/numpy ops for the Swin/ImageNet recipe (RandomResizedCrop, RandAugment, random
  erasing) and for sources whose images differ in size.

All randomness is explicit: batched ops take uniforms from `example_uniforms` (a counter-based hash of
(seed, epoch, example index)); per-example ops take a `numpy.random.Generator`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

INTERPOLATION = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


# ----------------------------------------------------------------------------------------------------
# Counter-based randomness for batched ops.
# ----------------------------------------------------------------------------------------------------
def _splitmix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic is what we want here)."""
  x = x + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def example_uniforms(seed: int, epoch: int, indices: np.ndarray, count: int, stream: int = 0) -> np.ndarray:
  """Uniforms in [0, 1), shape [len(indices), count], a pure function of (seed, epoch, index, stream).

  Vectorised so the simple recipe needs no per-example generator, and independent of which batch or
  host an example lands in (per-host slices then agree with the global batch)."""
  key = np.array([seed, epoch, stream], np.int64).astype(np.uint64)
  k = _splitmix64(_splitmix64(_splitmix64(key[:1]) ^ key[1:2]) ^ key[2:3])
  idx = np.asarray(indices, np.int64).astype(np.uint64)[:, None]
  h = _splitmix64(_splitmix64(k ^ idx) + np.arange(count, dtype=np.uint64)[None, :])
  return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


# ----------------------------------------------------------------------------------------------------
# Batched numpy ops.
# ----------------------------------------------------------------------------------------------------
def _linear_weights(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] matrix of antialiased linear (triangle) interpolation with half-pixel centres."""
  scale = out_size / in_size
  support = max(1.0 / scale, 1.0)  # Widen the kernel when shrinking, so it averages (antialias).
  centers = (np.arange(out_size) + 0.5) / scale - 0.5
  w = np.maximum(0.0, 1.0 - np.abs(np.arange(in_size)[None, :] - centers[:, None]) / support)
  return (w / w.sum(1, keepdims=True)).astype(np.float32)


def resize_batch(images: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
  """Bilinear (antialiased) resize of [B, H, W, C] to float32 [B, h, w, C] by two matrix products."""
  h, w = (size, size) if isinstance(size, int) else size
  if images.shape[1:3] == (h, w):
    return images
  b, _, _, c = images.shape
  wh, ww = _linear_weights(images.shape[1], h), _linear_weights(images.shape[2], w)
  x = np.ascontiguousarray(np.moveaxis(images, -1, 1), np.float32)  # [B, C, H, W]
  x = np.matmul(wh, x)  # Rows: [B, C, h, W].
  x = (x.reshape(-1, x.shape[-1]) @ ww.T).reshape(b, c, h, w)  # Columns, as one large matmul.
  return x[..., None][:, 0] if c == 1 else np.moveaxis(x, 1, -1)


def pad_batch(images: np.ndarray, pad: int) -> np.ndarray:
  """Zero-pads H and W by `pad` on each side."""
  if pad <= 0:
    return images
  return np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def random_crop_flip(images: np.ndarray, crop_padding: int, hflip: bool, u: np.ndarray) -> np.ndarray:
  """Zero-pads by `crop_padding`, crops back to the input size at a random offset, flips with p=0.5.

  `u` holds three uniforms per example (y offset, x offset, flip). Vectorised with one gather."""
  b, h, w, _ = images.shape
  out = images
  if crop_padding > 0:
    padded = pad_batch(images, crop_padding)
    oy = np.minimum((u[:, 0] * (2 * crop_padding + 1)).astype(np.int64), 2 * crop_padding)
    ox = np.minimum((u[:, 1] * (2 * crop_padding + 1)).astype(np.int64), 2 * crop_padding)
    rows = (oy[:, None] + np.arange(h))[:, :, None]
    cols = (ox[:, None] + np.arange(w))[:, None, :]
    out = padded[np.arange(b)[:, None, None], rows, cols]
  if hflip:
    out = np.where((u[:, 2] < 0.5)[:, None, None, None], out[:, :, ::-1], out)
  return out


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """Pixels in [0, 255] -> float32 `(x / 255 - mean) / std` per channel.

  A single-channel input with 3-entry mean/std broadcasts to 3 channels in the same pass (this is how
  gray images are fed to RGB models without a separate copy)."""
  scale = 1.0 / (np.asarray(std, np.float32) * 255.0)
  shift = -np.asarray(mean, np.float32) / np.asarray(std, np.float32)
  out = images * scale  # New float32 array (broadcast to len(mean) channels if needed).
  out += shift
  return out.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------------
# Per-example ops (PIL images / numpy HWC).
# ----------------------------------------------------------------------------------------------------
def to_pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def from_pil(img: Image.Image) -> np.ndarray:
  a = np.asarray(img)
  return a[..., None] if a.ndim == 2 else a


def random_resized_crop(
    img: Image.Image,
    size: int,
    rng: np.random.Generator,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    interpolation: str = "bicubic",
) -> Image.Image:
  """Crop of random area fraction in `scale` and aspect in `ratio` (log-uniform), resized to
  `size`x`size`. After 10 failed tries, falls back to the largest centred crop within `ratio`."""
  width, height = img.size
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
      break
  else:
    in_ratio = width / height
    if in_ratio < ratio[0]:
      w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
      w, h = round(height * ratio[1]), height
    else:
      w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
  return img.resize((size, size), INTERPOLATION[interpolation], box=(left, top, left + w, top + h))


def resize_center_crop(
    img: Image.Image, size: int, crop_pct: float = 0.875, interpolation: str = "bicubic"
) -> Image.Image:
  """Eval transform: shorter side to `floor(size / crop_pct)`, then the centred `size` square."""
  scale_size = math.floor(size / crop_pct)
  width, height = img.size
  if width <= height:
    new_w, new_h = scale_size, max(1, round(height * scale_size / width))
  else:
    new_w, new_h = max(1, round(width * scale_size / height)), scale_size
  img = img.resize((new_w, new_h), INTERPOLATION[interpolation])
  left, top = (new_w - size) // 2, (new_h - size) // 2
  return img.crop((left, top, left + size, top + size))


# RandAugment ops. Magnitude m is in [0, 10]; `sign` flips the direction of symmetric ops. These are the
# "increasing" variants (a larger m is always a stronger change), as in the Swin recipe rand-m9-mstd0.5-inc1.
def _fill(img):
  return 128 if img.mode == "L" else (124, 116, 104)  # ImageNet mean colour for uncovered pixels.


def _affine(img, coeffs):
  return img.transform(img.size, Image.AFFINE, coeffs, Image.BILINEAR, fillcolor=_fill(img))


def _solarize_add(img, add, threshold=128):
  lut = [min(255, i + add) if i < threshold else i for i in range(256)]
  return img.point(lut * (len(img.getbands())))


RANDAUGMENT_OPS = {
    "AutoContrast": lambda img, m, s: ImageOps.autocontrast(img),
    "Equalize": lambda img, m, s: ImageOps.equalize(img),
    "Invert": lambda img, m, s: ImageOps.invert(img),
    "Rotate": lambda img, m, s: img.rotate(s * 30.0 * m / 10, Image.BILINEAR, fillcolor=_fill(img)),
    "Posterize": lambda img, m, s: ImageOps.posterize(img, max(1, 4 - int(4 * m / 10))),
    "Solarize": lambda img, m, s: ImageOps.solarize(img, 256 - int(256 * m / 10)),
    "SolarizeAdd": lambda img, m, s: _solarize_add(img, int(110 * m / 10)),
    "Color": lambda img, m, s: ImageEnhance.Color(img).enhance(1.0 + s * 0.9 * m / 10),
    "Contrast": lambda img, m, s: ImageEnhance.Contrast(img).enhance(1.0 + s * 0.9 * m / 10),
    "Brightness": lambda img, m, s: ImageEnhance.Brightness(img).enhance(1.0 + s * 0.9 * m / 10),
    "Sharpness": lambda img, m, s: ImageEnhance.Sharpness(img).enhance(1.0 + s * 0.9 * m / 10),
    "ShearX": lambda img, m, s: _affine(img, (1, s * 0.3 * m / 10, 0, 0, 1, 0)),
    "ShearY": lambda img, m, s: _affine(img, (1, 0, 0, s * 0.3 * m / 10, 1, 0)),
    "TranslateX": lambda img, m, s: _affine(img, (1, 0, s * 0.45 * m / 10 * img.size[0], 0, 1, 0)),
    "TranslateY": lambda img, m, s: _affine(img, (1, 0, 0, 0, 1, s * 0.45 * m / 10 * img.size[1])),
}
_OP_NAMES = tuple(RANDAUGMENT_OPS)


def rand_augment(
    img: Image.Image,
    rng: np.random.Generator,
    num_ops: int = 2,
    magnitude: float = 9.0,
    magnitude_std: float = 0.5,
    prob: float = 0.5,
) -> Image.Image:
  """RandAugment: `num_ops` ops drawn uniformly (with replacement), each applied with `prob` at a
  magnitude drawn from N(magnitude, magnitude_std) clipped to [0, 10]."""
  for _ in range(num_ops):
    name = _OP_NAMES[int(rng.integers(len(_OP_NAMES)))]
    apply, m, sign = rng.random() < prob, rng.normal(magnitude, magnitude_std), rng.choice((-1.0, 1.0))
    if apply:
      img = RANDAUGMENT_OPS[name](img, float(np.clip(m, 0.0, 10.0)), float(sign))
  return img


def random_erasing(
    image: np.ndarray,
    rng: np.random.Generator,
    prob: float = 0.25,
    area: Sequence[float] = (0.02, 1 / 3),
    log_aspect: Sequence[float] = (math.log(0.3), math.log(1 / 0.3)),
) -> np.ndarray:
  """With probability `prob` replaces one random rectangle of a *normalised* float HWC image by
  per-pixel N(0, 1) noise (the 'pixel' mode of the Swin recipe). Returns a new array."""
  if rng.random() >= prob:
    return image
  h_img, w_img, c = image.shape
  for _ in range(10):
    target = h_img * w_img * rng.uniform(*area)
    aspect = math.exp(rng.uniform(*log_aspect))
    h, w = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
    if 0 < h < h_img and 0 < w < w_img:
      top, left = int(rng.integers(0, h_img - h + 1)), int(rng.integers(0, w_img - w + 1))
      image = image.copy()
      image[top : top + h, left : left + w] = rng.standard_normal((h, w, c), np.float32)
      break
  return image
