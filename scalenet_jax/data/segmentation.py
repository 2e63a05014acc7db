"""Semantic segmentation data: ADE20K (SceneParse150) through TFDS, mmseg's label handling and crops.

* `TfdsSegmentationSource`: a TFDS dataset with an `image` and an `annotation` image feature (TFDS's
  `scene_parse150`), random access like `sources.TfdsSource`; `source[i] -> {'image': uint8 (H, W, 3),
  'label': uint8 (H, W)}`, the annotation's first channel after `reduce_zero_label`.
* `reduce_zero_label`: mmseg's ADE20K convention: annotation 0 ("other") -> `IGNORE_INDEX` (255), classes
  1..150 -> 0..149.
* `SegmentationLoader`: examples -> fixed-shape batches (`pipeline.Loader`), mmseg's ADE20K recipe:
  training = random rescale into `(resize_long, resize_short) x ratio` (ratio uniform in `ratio_range`,
  aspect kept, image bilinear, labels nearest), random `crop_size` crop whose largest class covers at most
  `cat_max_ratio` of its labelled pixels (10 tries), horizontal flip, normalise, pad to the crop (labels
  with 255). Evaluation = the test scale (ratio 1), the centre `crop_size` square (padded with 255).
  Not done: mmseg's `PhotoMetricDistortion` (colour jitter) in training; mmseg evaluates the whole resized
  image, which needs one program per image shape, so the centre square stands in for it.

* `FashionMnistCanvasSource` (`data.name = "fashion_mnist_canvas"`): a small real-image segmentation task
  built from Fashion-MNIST: each example a grey canvas with 2-4 items, per-pixel labels = item class + 1
  where the item's pixel is foreground, 0 = background (`compose`, `canvas_layout`; docs/dense.md).

Randomness is a pure function of (seed, epoch, example index), as in `preprocess`.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from scalenet_jax.data import sources
from scalenet_jax.data import transforms as T
from scalenet_jax.errors import DataError

IGNORE_INDEX = 255  # == train.objectives.IGNORE_INDEX (no jax import here)


def reduce_zero_label(annotation: np.ndarray) -> np.ndarray:
  """mmseg's `reduce_zero_label`: 0 -> 255, k -> k - 1 (and an annotation's own 255 stays 255).

  Args:
    annotation: uint8 class map, 0 = unlabelled ("other" in ADE20K).

  Returns:
    uint8 labels, `IGNORE_INDEX` where nothing counts.
  """
  a = np.asarray(annotation, np.int32)
  return np.where((a == 0) | (a == IGNORE_INDEX), IGNORE_INDEX, a - 1).astype(np.uint8)


def _decode(value, mode: str) -> np.ndarray:
  if isinstance(value, bytes):
    value = np.asarray(Image.open(io.BytesIO(value)).convert(mode))
  return np.asarray(value, np.uint8)


class TfdsSegmentationSource(sources.Source):
  """A TFDS dataset of `image` / `annotation` pairs (module doc); `labels` are not per example."""

  def __init__(self, name: str, split: str = "train", data_dir=None, reduce_zero: bool = True):
    builder, self.split = sources.open_tfds(name, split, data_dir)
    features = builder.info.features
    missing = [k for k in ("image", "annotation") if k not in features]
    if missing:
      raise DataError(f"TFDS {name} has no {missing[0]!r} feature: not an image/annotation segmentation dataset")
    self.name, self.reduce_zero = name, reduce_zero
    self.index_id = builder.info.full_name
    self._ds = builder.as_data_source(split=self.split)
    self.image_shape = (None, None, 3)
    self.num_classes = 0  # known from the config (ADE20K: 150), not from TFDS's metadata

  def __len__(self):
    return len(self._ds)

  def __getitem__(self, i):
    ex = self._ds[int(i)]
    image, annotation = _decode(ex["image"], "RGB"), _decode(ex["annotation"], "RGB")
    label = annotation[..., 0] if annotation.ndim == 3 else annotation
    if image.shape[:2] != label.shape:
      raise DataError(f"{self} example {i}: image {image.shape[:2]} and annotation {label.shape} differ in size")
    return {"image": image, "label": reduce_zero_label(label) if self.reduce_zero else label}

  def __repr__(self):
    return f"TfdsSegmentationSource({self.name}/{self.split}, n={len(self)})"


def open_source(data_cfg, split: str):
  """`split` of `data_cfg.name`: `tfds:<name>` (`data_cfg.root` = the TFDS data dir), or
  `fashion_mnist_canvas` (`data_cfg.root` = the Fashion-MNIST directory, canvases of `data_cfg.crop_size`
  px, `data_cfg.canvas` = `FashionMnistCanvasSource`'s keyword arguments)."""
  if data_cfg.name == CANVAS_NAME:
    canvas = dict(data_cfg.get("canvas") or {})
    return FashionMnistCanvasSource(split, root=data_cfg.root or None, size=data_cfg.crop_size, **canvas)
  kind, _, name = data_cfg.name.partition(":")
  if kind != "tfds" or not name:
    raise DataError(
        f"segmentation data must be a TFDS dataset 'tfds:<name>' (e.g. tfds:scene_parse150) or {CANVAS_NAME!r}, "
        f"got {data_cfg.name!r}"
    )
  return TfdsSegmentationSource(name, split, data_cfg.root or None, data_cfg.reduce_zero_label)


# ---------------------------------------------------------------------------------------------------------
# Fashion-MNIST canvases: a small segmentation task on real images (docs/dense.md)
# ---------------------------------------------------------------------------------------------------------
CANVAS_NAME = "fashion_mnist_canvas"
CANVAS_THRESHOLD = 16  # an item's pixel is foreground when its intensity (0..255) is at least this
# canvas split -> (Fashion-MNIST split its items come from, default number of canvases, seed stream)
CANVAS_SPLITS = {"train": ("train_minus_minival", 59_000, 0), "test": ("test", 2_000, 1)}
CANVAS_CLASSES = ("background", *sources.FASHION_MNIST_CLASSES)


def compose(size: int, items, threshold: int = CANVAS_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
  """One canvas from its items, painted in order (later items over earlier ones).

  Args:
    size: the canvas side in pixels.
    items: `(image uint8 (h, w), class, top, left)` per item; the item covers rows `top .. top + h - 1` and
      columns `left .. left + w - 1`.
    threshold: an item's pixel is foreground when its intensity is `>= threshold`.

  Returns:
    (image uint8 (size, size, 1), labels uint8 (size, size)): where some item is foreground, the pixel and
    `class + 1` of the last such item; elsewhere 0 and 0 (background). So labels > 0 exactly where the
    image is `>= threshold`, and the image is 0 wherever the labels are 0.
  """
  image = np.zeros((size, size), np.uint8)
  label = np.zeros((size, size), np.uint8)
  for item, cls, top, left in items:
    item = np.asarray(item, np.uint8)
    h, w = item.shape
    fg = item >= threshold
    image[top : top + h, left : left + w][fg] = item[fg]
    label[top : top + h, left : left + w][fg] = cls + 1
  return image[..., None], label


class FashionMnistCanvasSource(sources.Source):
  """Canvases of Fashion-MNIST items (`compose`), each a pure function of (split, index, seed).

  `train` canvases take their items from `train_minus_minival` (59,000 images; the 1,000-image mini-val
  split of the released bases stays unused), `test` canvases from the 10,000 test images, so no source
  image is in both splits. Each canvas has `max_items` slots filled from a `seed`-fixed permutation of the
  split's images (canvas i of round r = i // (images // max_items) takes the next `max_items` images of
  round r's permutation, so an eval set of at most images // max_items canvases uses every test image at
  most once), paints the first k of them, k uniform in `min_items .. max_items`, at top-left corners
  uniform over the canvas (items may overlap; later ones on top). `source[i] -> {'image': uint8 (S, S, 1),
  'label': uint8 (S, S)}` with 11 classes: 0 background, 1 + Fashion-MNIST's class."""

  def __init__(
      self,
      split: str = "train",
      root=None,
      size: int = 64,
      train_examples: int = CANVAS_SPLITS["train"][1],
      eval_examples: int = CANVAS_SPLITS["test"][1],
      min_items: int = 2,
      max_items: int = 4,
      threshold: int = CANVAS_THRESHOLD,
      seed: int = 0,
  ):
    split = sources.resolve_split(split, tuple(CANVAS_SPLITS), CANVAS_NAME)
    base_split, _, self._stream = CANVAS_SPLITS[split]
    if not 1 <= min_items <= max_items:
      raise DataError(f"{CANVAS_NAME}: need 1 <= min_items <= max_items, got {min_items}, {max_items}")
    items = sources.get_source("fashion_mnist", base_split, **({"root": root} if root else {}))
    self._images = items.get_batch(np.arange(len(items)))[..., 0]  # (N, 28, 28) uint8
    self._classes = np.asarray(items.labels, np.int64)
    # Which Fashion-MNIST file and image each item index is (for the disjointness check).
    self.origin = ("test", np.arange(len(items))) if base_split == "test" else ("train", np.asarray(items.indices))
    if size < self._images.shape[1]:
      raise DataError(f"{CANVAS_NAME}: canvas size {size} is smaller than an item ({self._images.shape[1]} px)")
    self.split, self.size, self.threshold, self.seed = split, size, threshold, seed
    self.min_items, self.max_items = min_items, max_items
    self.num_examples = train_examples if split == "train" else eval_examples
    self.per_round = len(self._images) // max_items
    self.num_classes, self.class_names = len(CANVAS_CLASSES), CANVAS_CLASSES
    self.image_shape = (size, size, 1)
    self._perms = {}

  def __len__(self):
    return self.num_examples

  def _perm(self, r: int) -> np.ndarray:
    if r not in self._perms:
      self._perms[r] = np.random.default_rng([self.seed, self._stream, 0, r]).permutation(len(self._images))
    return self._perms[r]

  def layout(self, i: int) -> list[tuple[int, int, int]]:
    """Canvas `i`'s items in painting order: (item index in the split's images, top, left)."""
    if not 0 <= i < len(self):
      raise IndexError(f"canvas {i} of {self!r}")
    r, j = divmod(int(i), self.per_round)
    slots = self._perm(r)[j * self.max_items : (j + 1) * self.max_items]
    rng = np.random.default_rng([self.seed, self._stream, 1, int(i)])
    k = int(rng.integers(self.min_items, self.max_items + 1))
    corners = rng.integers(0, self.size - self._images.shape[1] + 1, (k, 2))
    return [(int(s), int(t), int(l)) for s, (t, l) in zip(slots[:k], corners)]

  def __getitem__(self, i):
    items = [(self._images[s], int(self._classes[s]), t, l) for s, t, l in self.layout(i)]
    image, label = compose(self.size, items, self.threshold)
    return {"image": image, "label": label}

  @property
  def labels(self):
    raise DataError(f"{CANVAS_NAME} has per-pixel labels, not one per example")

  def __repr__(self):
    return f"FashionMnistCanvasSource({self.split}, n={len(self)}, {self.size} px)"


def _rescale(image, label, long: float, short: float):
  """mmseg's keep-ratio `Resize` to fit (long, short): image bilinear, labels nearest."""
  h, w = label.shape
  scale = min(long / max(h, w), short / min(h, w))
  size = (max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5)))  # PIL's (W, H)
  image = T.from_pil(T.to_pil(image).resize(size, T.INTERPOLATION["bilinear"]))  # (H, W, C), C = 1 too
  return image, np.asarray(Image.fromarray(label).resize(size, T.INTERPOLATION["nearest"]))


def _pad(image, label, size: int):
  h, w = label.shape
  out_i = np.zeros((size, size, image.shape[2]), np.uint8)
  out_l = np.full((size, size), IGNORE_INDEX, np.uint8)
  out_i[:h, :w], out_l[:h, :w] = image, label
  return out_i, out_l


@dataclasses.dataclass(frozen=True)
class SegmentationRecipe:
  """mmseg's ADE20K pipeline settings (module doc); `config_lib.segment_data_config()` fields."""

  crop_size: int = 512
  resize_long: int = 2048
  resize_short: int = 512
  ratio_range: tuple[float, float] = (0.5, 2.0)
  cat_max_ratio: float = 0.75
  hflip: bool = True
  mean: tuple[float, ...] = (0.485, 0.456, 0.406)
  std: tuple[float, ...] = (0.229, 0.224, 0.225)

  @classmethod
  def from_config(cls, d) -> "SegmentationRecipe":
    return cls(
        d.crop_size,
        d.resize_long,
        d.resize_short,
        tuple(d.ratio_range),
        d.cat_max_ratio,
        d.hflip,
        tuple(d.mean),
        tuple(d.std),
    )

  def train_example(self, image, label, rng: np.random.Generator):
    """One training example (uint8 image (S, S, 3), uint8 labels (S, S))."""
    r = rng.uniform(*self.ratio_range)
    image, label = _rescale(image, label, self.resize_long * r, self.resize_short * r)
    h, w, s = *label.shape, self.crop_size
    for _ in range(10):  # mmseg's RandomCrop with cat_max_ratio
      top, left = int(rng.integers(0, max(h - s, 0) + 1)), int(rng.integers(0, max(w - s, 0) + 1))
      crop = label[top : top + s, left : left + s]
      counts = np.bincount(crop[crop != IGNORE_INDEX].ravel())
      counts = counts[counts > 0]
      if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
        break
    image, label = image[top : top + s, left : left + s], label[top : top + s, left : left + s]
    if self.hflip and rng.random() < 0.5:
      image, label = image[:, ::-1], label[:, ::-1]
    return _pad(image, label, s)

  def eval_example(self, image, label):
    """The test scale's centre `crop_size` square (module doc)."""
    image, label = _rescale(image, label, self.resize_long, self.resize_short)
    h, w, s = *label.shape, self.crop_size
    top, left = max(h - s, 0) // 2, max(w - s, 0) // 2
    return _pad(image[top : top + s, left : left + s], label[top : top + s, left : left + s], s)


class SegmentationLoader:
  """`pipeline.Loader` of a segmentation source: `{'image': float32 (n, S, S, 3) normalised, 'label': int32
  (n, S, S)}`; training crops when `train`."""

  def __init__(self, source, recipe: SegmentationRecipe, train: bool):
    self.source, self.recipe, self.train = source, recipe, train

  def __call__(self, indices, seed: int = 0, epoch: int = 0) -> dict:
    images, labels = [], []
    for i in np.asarray(indices, np.int64):
      ex = self.source[int(i)]
      if self.train:
        image, label = self.recipe.train_example(ex["image"], ex["label"], np.random.default_rng((seed, epoch, int(i))))
      else:
        image, label = self.recipe.eval_example(ex["image"], ex["label"])
      images.append(image)
      labels.append(label)
    x = T.normalize(np.stack(images), self.recipe.mean, self.recipe.std)
    return {"image": x, "label": np.stack(labels).astype(np.int32)}

  def blank(self, n: int) -> dict:
    s, c = self.recipe.crop_size, self.source.image_shape[-1] if self.source is not None else 3
    return {"image": np.zeros((n, s, s, c), np.float32), "label": np.full((n, s, s), IGNORE_INDEX, np.int32)}
