"""Random-access image sources: Fashion-MNIST (IDX files), ImageFolder, TFDS, synthetic.

Every source has the same small interface, which is all the pipeline needs:

* `len(source)` and `source[i] -> {'image': uint8 [H, W, C], 'label': int}`;
* `num_classes` and `image_shape` (`(H, W, C)`; `H`/`W` are `None` when images vary in size);
* `labels`: int64 array of every label (used by the mini-val split and per-class statistics);
* `get_batch(indices) -> uint8 [n, H, W, C]` for fixed-shape sources (vectorised gather).

`get_source(name, split, **kw)` opens one by name. Splits are each source's own (`train`, `test`,
TFDS's `validation`, ...), the aliases `val` / `validation` / `test` for whichever of them the source
has, and the search splits `minival` / `train_minus_minival`: the first `minival_per_class` images of
every class of `train` in an order fixed by `minival_seed`, and everything else (disjoint,
deterministic). TFDS labels and the mini-val split are computed once and stored as index files
(`scalenet_jax.data.index_files`) next to the dataset or in `cache_dir`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import gzip
import hashlib
import io
import logging as logging_lib
import os
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from scalenet_jax.data.index_files import IndexStore, load_or_build
from scalenet_jax.errors import DataError, MissingDependencyError, MissingInputError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package `dataset-fashion-mnist`.
FASHION_MNIST_ENV = "SCALENET_FASHION_MNIST_DIR"  # overrides FASHION_MNIST_DIR
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

# Manual files that TFDS builders need before `download_and_prepare` can run (checked up front so the
# error names them instead of failing deep inside TFDS).
TFDS_MANUAL_FILES = {
    "imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
    "imagenet2012_subset": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
}

# Names a split may be asked by when the source calls it otherwise (tried in order): TFDS says
# `validation`, ImageFolder trees often `val`, datasets without a validation split evaluate on `test`.
SPLIT_ALIASES = {"val": ("validation", "test"), "validation": ("val", "test"), "test": ("validation", "val")}
DERIVED_SPLITS = ("minival", "train_minus_minival")  # Carved out of `train` by `get_source`.
INDEX_DIR = "data_index"  # Subdirectory of a caller's `cache_dir` for index files.


def valid_splits(available: Sequence[str]) -> list[str]:
  """Every split name a source with native splits `available` accepts."""
  names = list(available)
  names += [a for a, targets in SPLIT_ALIASES.items() if a not in names and any(t in available for t in targets)]
  return names + (list(DERIVED_SPLITS) if "train" in available else [])


def resolve_split(split: str, available: Sequence[str], what: str) -> str:
  """The native name of `split` among `available`; a ValueError naming the valid ones otherwise."""
  for name in (split, *SPLIT_ALIASES.get(split, ())):
    if name in available:
      return name
  raise DataError(f"unknown split {split!r} for {what} (valid: {', '.join(valid_splits(available))})")


# ----------------------------------------------------------------------------------------------------
# IDX files (the MNIST family format).
# ----------------------------------------------------------------------------------------------------
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzipped, detected by the magic bytes) into a numpy array.

  Layout: two zero bytes, a dtype code, the number of dimensions, then one big-endian uint32 per
  dimension and the big-endian data.
  """
  if not os.path.isfile(path):
    raise MissingInputError(f"IDX file not found: {path}")
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] == b"\x1f\x8b":
    raw = gzip.decompress(raw)
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise DataError(f"not an IDX file (bad magic {raw[:4].hex()}): {path}")
  dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
  header = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - header != expected:
    raise DataError(f"IDX file {path} holds {len(raw) - header} data bytes, shape {shape} needs " f"{expected}")
  return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: str, stem: str) -> str:
  for name in (stem, stem + ".gz"):
    if os.path.isfile(os.path.join(root, name)):
      return os.path.join(root, name)
  raise MissingInputError(
      f"Fashion-MNIST file {stem}[.gz] not found in {root} "
      "(install the Debian package dataset-fashion-mnist or pass root=...)"
  )


# ----------------------------------------------------------------------------------------------------
# Sources.
# ----------------------------------------------------------------------------------------------------
class Source:
  """Base class: a random-access, labelled image collection."""

  num_classes: int
  image_shape: tuple  # (H, W, C); H, W None when sizes vary.
  class_names: Sequence[str] | None = None
  # Names the dataset in index file fingerprints and cache paths; None: nothing is stored for it.
  index_id: str | None = None
  # Where this source's index files (labels, mini-val) live; set by `get_source`. No dirs: computed.
  index_store: IndexStore = IndexStore()

  def index_dirs(self, cache_dir: epath.PathLike | None) -> list[epath.Path]:
    """Candidate directories for index files, preferred first (subclasses add the dataset's own)."""
    if cache_dir is None or self.index_id is None:
      return []
    return [epath.Path(cache_dir) / INDEX_DIR / self.index_id]

  def __len__(self) -> int:
    raise NotImplementedError

  def __getitem__(self, i: int) -> dict[str, Any]:
    raise NotImplementedError

  @property
  def labels(self) -> np.ndarray:
    raise NotImplementedError

  @property
  def fixed_shape(self) -> bool:
    return None not in self.image_shape

  def get_batch(self, indices: np.ndarray) -> np.ndarray:
    """uint8 [n, H, W, C] for fixed-shape sources (subclasses with arrays gather in one call)."""
    if not self.fixed_shape:
      raise ValueError(f"{self!r} has variable image sizes; images must be resized per example")
    return np.stack([self[int(i)]["image"] for i in indices])


class ArraySource(Source):
  """In-memory uint8 images [N, H, W, C] and int labels [N]."""

  def __init__(
      self,
      images: np.ndarray,
      labels: np.ndarray,
      num_classes: int,
      class_names: Sequence[str] | None = None,
      name: str = "arrays",
  ):
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
      raise ValueError(f"{name}: images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if len(images) != len(labels):
      raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
    self.images, self._labels = images, np.asarray(labels, np.int64)
    self.num_classes, self.class_names, self.name = num_classes, class_names, name
    self.image_shape = tuple(images.shape[1:])

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": int(self._labels[i])}

  @property
  def labels(self):
    return self._labels

  def get_batch(self, indices):
    return self.images[np.asarray(indices)]

  def __repr__(self):
    return f"ArraySource({self.name}, n={len(self)}, shape={self.image_shape})"


def fashion_mnist_dir() -> str:
  """Where Fashion-MNIST's IDX files are read from by default: $SCALENET_FASHION_MNIST_DIR, else the
  Debian package's directory."""
  return os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR


def fashion_mnist(split: str = "train", root: str | None = None) -> ArraySource:
  """Fashion-MNIST from the IDX files of the Debian package (`root` overrides `fashion_mnist_dir()`)."""
  root = root or fashion_mnist_dir()
  if not os.path.isdir(root):
    raise MissingInputError(
        f"Fashion-MNIST directory not found: {root} " "(apt-get install dataset-fashion-mnist, or pass root=...)"
    )
  split = resolve_split(split, ("train", "test"), "fashion_mnist")
  prefix = {"train": "train", "test": "t10k"}[split]
  images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
  labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))
  source = ArraySource(images, labels, 10, FASHION_MNIST_CLASSES, name=f"fashion_mnist/{split}")
  source.index_id = f"fashion_mnist-{_path_id(root)}"
  return source


def _path_id(path: str) -> str:
  """A short stable name for a local dataset directory (index files of different copies stay apart)."""
  return hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:12]


class ImageFolderSource(Source):
  """`root/<split>/<class>/<image>` directories; labels are the sorted class names of `train`.

  Class indices come from `root/train` whenever it exists so that `val` uses the same mapping
  even if a class is missing there. Images are decoded with PIL to RGB on access.
  """

  def __init__(self, root: str, split: str = "train"):
    if not os.path.isdir(root):
      raise MissingInputError(f"ImageFolder root not found: {root}")
    known = ("train", "val", "validation", "test")
    if split not in known:
      raise DataError(f"unknown split {split!r} for imagefolder:{root} (valid: {', '.join(valid_splits(known))})")
    candidates = [split, *SPLIT_ALIASES.get(split, ())]
    dirs = [os.path.join(root, c) for c in candidates if os.path.isdir(os.path.join(root, c))]
    if not dirs:
      raise MissingInputError(
          f"ImageFolder split {split!r} not found: none of " f"{[os.path.join(root, c) for c in candidates]} exists"
      )
    self.root, self.split_dir = root, dirs[0]
    self.index_id = f"imagefolder-{_path_id(root)}"
    class_root = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else dirs[0]
    self.class_names = sorted(e.name for e in os.scandir(class_root) if e.is_dir())
    if not self.class_names:
      raise DataError(f"ImageFolder {class_root} has no class directories " f"(expected {class_root}/<class>/*.JPEG)")
    index = {c: k for k, c in enumerate(self.class_names)}
    files, labels = [], []
    for entry in sorted(os.scandir(self.split_dir), key=lambda e: e.name):
      if not entry.is_dir():
        continue
      if entry.name not in index:
        raise DataError(f"ImageFolder class directory {entry.path} is not a class of {class_root}")
      names = sorted(n for n in os.listdir(entry.path) if n.lower().endswith(IMAGE_EXTENSIONS))
      files += [os.path.join(entry.path, n) for n in names]
      labels += [index[entry.name]] * len(names)
    if not files:
      raise DataError(f"ImageFolder {self.split_dir} has no images " f"(expected {self.split_dir}/<class>/*.JPEG)")
    self.files, self._labels = files, np.asarray(labels, np.int64)
    self.num_classes = len(self.class_names)
    self.image_shape = (None, None, 3)

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    return {"image": decode_image(self.files[i]), "label": int(self._labels[i])}

  @property
  def labels(self):
    return self._labels

  def __repr__(self):
    return f"ImageFolderSource({self.split_dir}, n={len(self)}, classes={self.num_classes})"


def decode_image(path: str) -> np.ndarray:
  """Decodes an image file to uint8 RGB [H, W, 3]; a broken file raises ValueError naming it."""
  try:
    with Image.open(path) as img:
      return np.asarray(img.convert("RGB"))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise DataError(f"cannot decode image {path}: {e}") from e


class SyntheticSource(Source):
  """Deterministic random images for smoke tests only (never for reported results).

  Each class has a fixed random template and every image is its template plus noise, so a model can
  actually fit it (a smoke test then sees the loss go down). Image i depends only on (seed, i).
  """

  def __init__(
      self, num_examples: int = 256, num_classes: int = 10, image_shape: Sequence[int] = (32, 32, 3), seed: int = 0
  ):
    self.n, self.num_classes, self.seed = int(num_examples), int(num_classes), int(seed)
    self.image_shape = tuple(int(s) for s in image_shape)
    rng = np.random.default_rng((self.seed, 0))
    self._templates = rng.integers(0, 256, (self.num_classes, *self.image_shape), dtype=np.uint8)
    self._labels = np.arange(self.n, dtype=np.int64) % self.num_classes

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(f"synthetic index {i} out of range [0, {self.n})")
    label = int(self._labels[i])
    noise = np.random.default_rng((self.seed, 1, int(i))).integers(0, 256, self.image_shape)
    image = (self._templates[label].astype(np.int32) * 3 + noise) // 4
    return {"image": image.astype(np.uint8), "label": label}

  @property
  def labels(self):
    return self._labels

  def __repr__(self):
    return f"SyntheticSource(n={self.n}, shape={self.image_shape}, seed={self.seed})"


class TfdsSource(Source):
  """A TFDS dataset read through `builder.as_data_source` (ArrayRecord, random access, no TensorFlow).

  When the dataset is not prepared: datasets with manual downloads (`imagenet2012`) first check that
  their files are in `manual_dir` (default `<data_dir>/downloads/manual`) and raise naming that
  directory and the files; others are prepared only with `download=True`.

  Labels: TFDS metadata holds split sizes and class names but not per-record labels, which live inside
  each record. They are read in one pass (contiguous chunks on threads; from raw `tf.train.Example`
  bytes only the label is parsed, images are not decoded) and stored as `scalenet-labels-<split>.npz` in
  the dataset's directory (`<data_dir>/<name>/<version>/`) or, when that is read-only, under the
  `cache_dir` given to `get_source`; later runs and other hosts read that file.
  """

  def __init__(
      self,
      name: str,
      split: str = "train",
      data_dir: str | None = None,
      manual_dir: str | None = None,
      download: bool = False,
  ):
    builder, self.split = open_tfds(name, split, data_dir, manual_dir, download)
    self.name, self._builder = name, builder
    self.split_sizes = {s: int(info.num_examples) for s, info in builder.info.splits.items()}
    self.index_id = builder.info.full_name  # e.g. imagenet2012/5.1.0: a new version is a new index.
    self._ds = builder.as_data_source(split=self.split)
    features = builder.info.features
    self.num_classes = int(features["label"].num_classes)
    self.class_names = list(features["label"].names)
    shape = tuple(features["image"].shape)
    self.image_shape = shape if len(shape) == 3 else (*shape, 1)
    self._labels, self._lock = None, threading.Lock()

  def index_dirs(self, cache_dir):
    # Only a dataset directory that exists: one that does not is no prepared dataset (e.g. under
    # `tfds.testing.mock_data` without metadata) and must not be created by us.
    own = epath.Path(self._builder.data_dir)
    return [*([own] if own.exists() else []), *super().index_dirs(cache_dir)]

  def __len__(self):
    return len(self._ds)

  def __getitem__(self, i):
    ex = self._ds[int(i)]
    image = ex["image"]
    if isinstance(image, bytes):
      image = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
    image = np.asarray(image, np.uint8)
    return {"image": image if image.ndim == 3 else image[..., None], "label": int(ex["label"])}

  @property
  def labels(self):
    """All labels, from the label index file (written by the first run that needs them)."""
    with self._lock:
      if self._labels is None:
        fingerprint = {"file": "labels", "dataset": self.index_id, "split": self.split, "num_examples": len(self)}
        arrays = load_or_build(
            self.index_store,
            f"scalenet-labels-{self.split}.npz",
            fingerprint,
            lambda: {"labels": self._read_labels().astype(np.int32)},  # Half the bytes every host reads.
            check=self._spot_check,
        )
        self._labels = arrays["labels"].astype(np.int64)
    return self._labels

  def _spot_check(self, arrays) -> bool:
    """A stored index agrees with a few records (catches an index of another copy of the dataset)."""
    labels = arrays.get("labels")
    if labels is None or len(labels) != len(self):
      return False
    keys = np.unique(np.random.default_rng(0).integers(0, len(self), min(8, len(self))))
    return bool(np.array_equal(labels[keys], self._label_reader(keys.tolist())))

  def _read_labels(self, chunk: int = 1024, num_threads: int = 16) -> np.ndarray:
    """One pass over the split in contiguous chunks (threads: the reads are I/O bound)."""
    n, read, start = len(self), self._label_reader, time.monotonic()
    logging.info("reading the labels of %s (%d records, once; later runs use the index file)", self, n)
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      parts = list(pool.map(lambda s: read(list(range(s, min(s + chunk, n)))), range(0, n, chunk)))
    logging.info("read %d labels of %s in %.1f s", n, self, time.monotonic() - start)
    labels = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    bad = labels[(labels < 0) | (labels >= self.num_classes)]
    if len(bad):  # e.g. imagenet2012's `test` split: every label is -1.
      raise DataError(f"{self} has labels outside [0, {self.num_classes}) (e.g. {bad[0]}): not a labelled split")
    return labels

  @functools.cached_property
  def _label_reader(self) -> Callable[[list[int]], np.ndarray]:
    """`keys -> labels`: parses only the label out of raw records when the data source serves
    `tf.train.Example` bytes (ArrayRecord), else takes it from the decoded examples."""
    tfds = import_tfds()
    raw = self._builder.as_data_source(split=self.split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    try:
      if len(self):
        _record_label(raw[0])
    except Exception:  # pylint: disable=broad-except  # Mocks and non-Example formats: the slow path.
      logging.info("%s: raw records carry no tf.train.Example label; decoding whole examples", self)
      return lambda keys: np.asarray([int(self._ds[k]["label"]) for k in keys], np.int64)
    # Per-record reads: on local ArrayRecord files they beat `__getitems__` (its per-call thread pool
    # cost ~1.5x here); the caller's threads already read many chunks at once.
    return lambda keys: np.fromiter((_record_label(raw[k]) for k in keys), np.int64, len(keys))

  def __repr__(self):
    return f"TfdsSource({self.name}/{self.split}, n={len(self)})"


def open_tfds(name: str, split: str, data_dir=None, manual_dir=None, download: bool = False):
  """(builder, native split name) of a TFDS dataset, prepared (or a `DataError` / `MissingInputError`
  naming what is missing, see `TfdsSource`)."""
  tfds = import_tfds()
  _quiet_tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError lists every dataset: keep the message one line.
    raise DataError(f"unknown TFDS dataset {name!r}: {str(e).splitlines()[0]}") from None
  if not builder.is_prepared():
    _prepare(tfds, builder, name, manual_dir, download)
  known = list(builder.info.splits)
  # Metadata without splits (plain `tfds.testing.mock_data`) accepts any name, as TFDS then does.
  native = resolve_split(split, known, f"tfds:{name}") if known else {"val": "validation"}.get(split, split)
  return builder, native


def _record_label(record: bytes) -> int:
  """The `label` of a serialized `tf.train.Example` (protobuf parse; the image bytes stay encoded)."""
  from tensorflow_datasets.proto import tf_example_pb2

  values = tf_example_pb2.Example.FromString(record).features.feature["label"].int64_list.value
  if len(values) != 1:
    raise ValueError(f"record has {len(values)} label values, expected 1")
  return int(values[0])


def import_tfds():
  """`tensorflow_datasets`, imported on first use (heavy, and an optional extra of the package)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise MissingDependencyError(
        "TFDS datasets need tensorflow-datasets: pip install scalenet_jax[tfds] (or pip install -e .[tfds])"
    ) from None
  return tfds


class _DropTfdsWarnings(logging_lib.Filter):

  def filter(self, record):
    return record.levelno >= logging_lib.ERROR or "tensorflow_datasets" not in record.pathname


@functools.cache
def _quiet_tfds() -> None:
  """TFDS warns (through absl) about every missing metadata file of an unprepared dataset and about
  optional decoders; our own error names what is missing, so only TFDS errors are shown."""
  logging.get_absl_logger().addFilter(_DropTfdsWarnings())


def _prepare(tfds, builder, name: str, manual_dir: str | None, download: bool) -> None:
  """Prepares an unprepared dataset, or raises naming what is missing (manual files, download=True)."""
  manual_dir = os.path.expanduser(manual_dir or os.path.join(builder.data_dir_root, "downloads", "manual"))
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    needed = TFDS_MANUAL_FILES.get(name, ())
    missing = [f for f in needed if not os.path.exists(os.path.join(manual_dir, f))]
    if missing or not (os.path.isdir(manual_dir) and os.listdir(manual_dir)):
      what = ", ".join(missing or needed) or "the files from its manual download instructions"
      raise MissingInputError(
          f"TFDS {name} is not prepared in {builder.data_dir}: put {what} in {manual_dir} (the TFDS data dir "
          f"{builder.data_dir_root} is TFDS_DATA_DIR or --config.data.root); the first run then prepares it"
      )
  elif not download:
    raise MissingInputError(
        f"TFDS {name} is not prepared in {builder.data_dir} "
        "(pass download=True or run `tfds build --file_format=array_record`)"
    )
  builder.download_and_prepare(
      file_format="array_record", download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
  )


class SubsetSource(Source):
  """A view of `base` restricted to `indices` (in that order)."""

  def __init__(self, base: Source, indices: np.ndarray, name: str = "subset"):
    self.base, self.indices, self.name = base, np.asarray(indices, np.int64), name
    self.num_classes, self.image_shape = base.num_classes, base.image_shape
    self.class_names = base.class_names

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.base[int(self.indices[i])]

  @functools.cached_property
  def labels(self):
    return self.base.labels[self.indices]

  def get_batch(self, indices):
    return self.base.get_batch(self.indices[np.asarray(indices)])

  def __repr__(self):
    return f"SubsetSource({self.name} of {self.base!r}, n={len(self)})"


# ----------------------------------------------------------------------------------------------------
# Mini-val split and the by-name entry point.
# ----------------------------------------------------------------------------------------------------
def minival_split(labels: np.ndarray, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Returns (minival, rest): the first `per_class` indices of every class in a `seed`-fixed
  random order, and all other indices. Both sorted, disjoint, and together all of `labels`."""
  labels = np.asarray(labels)
  order = np.random.default_rng(seed).permutation(len(labels))
  by_class = order[np.argsort(labels[order], kind="stable")]  # Grouped by class, random within.
  classes, starts, counts = np.unique(labels[by_class], return_index=True, return_counts=True)
  short = classes[counts <= per_class]
  if len(short):
    raise DataError(
        f"mini-val needs more than {per_class} images per class; class {short[0]} has "
        f"{counts[classes == short[0]][0]}"
    )
  take = np.zeros(len(labels), bool)
  for s in starts:
    take[by_class[s : s + per_class]] = True
  return np.flatnonzero(take), np.flatnonzero(~take)


def stored_minival(train: Source, per_class: int, seed: int = 0) -> np.ndarray:
  """`minival_split(train.labels, ...)[0]`, chosen once and kept in `train.index_store`.

  Stored rather than recomputed so that a search keeps the same mini-val across runs, hosts and numpy
  versions (whose permutation could change). The fingerprint holds the dataset, split sizes,
  `per_class`, `seed` and a hash of the labels: a file from other data or parameters is never used.
  """
  labels = train.labels
  fingerprint = {
      "file": "minival",
      "dataset": train.index_id,
      "split_sizes": getattr(train, "split_sizes", {"train": len(train)}),
      "per_class": int(per_class),
      "seed": int(seed),
      "labels_sha1": hashlib.sha1(np.ascontiguousarray(labels, np.int64).tobytes()).hexdigest(),
  }
  arrays = load_or_build(
      train.index_store,
      f"scalenet-minival-train-{per_class}pc-seed{seed}.npz",
      fingerprint,
      lambda: {"minival": minival_split(labels, per_class, seed)[0]},
  )
  return arrays["minival"].astype(np.int64)


def _open(name: str, split: str, kw: dict) -> Source:
  kind, _, arg = name.partition(":")
  if kind == "fashion_mnist":
    return fashion_mnist(split, root=kw.pop("root", None) or arg or None, **kw)
  if kind == "imagefolder":
    root = arg or kw.pop("data_dir", None)
    if not root:
      raise DataError("imagefolder needs a directory: 'imagefolder:<dir>' or data_dir=...")
    return ImageFolderSource(root, split, **kw)
  if kind == "tfds":
    if not arg:
      raise DataError("tfds needs a dataset name: 'tfds:<name>', e.g. 'tfds:imagenet2012'")
    return TfdsSource(arg, split, **kw)
  if kind == "synthetic":
    split = resolve_split(split, ("train", "test"), "synthetic")
    # Test/val get a different seed so they are not copies of train.
    kw.setdefault("seed", 0)
    if split != "train":
      kw["seed"] += 1_000_003
    return SyntheticSource(**kw)
  raise DataError(f"unknown dataset {name!r} (fashion_mnist, imagefolder:<dir>, tfds:<name>, synthetic)")


def get_source(
    name: str,
    split: str = "train",
    *,
    minival_per_class: int = 50,
    minival_seed: int = 0,
    cache_dir: epath.PathLike | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    **kw,
) -> Source:
  """Opens a source by name.

  Names: `fashion_mnist` (kw `root`), `imagefolder:<dir>` (or `imagefolder` with `data_dir`),
  `tfds:<name>` (kw `data_dir`, `manual_dir`, `download`) and `synthetic`
  (kw `num_examples`, `num_classes`, `image_shape`, `seed`; smoke tests only).
  Splits: the source's own (`train`, `test`, TFDS's `validation`, ...), the aliases `val` /
  `validation` / `test`, and `minival` / `train_minus_minival` (of `train`).

  Index files (TFDS labels, the mini-val split) go to the dataset's own directory when writable, else
  to `<cache_dir>/data_index/<dataset>/` (e.g. the workdir; may be `gs://`). Only process
  `process_index == 0` (default: jax's) computes and writes them; the others wait and read. A source
  with nowhere to store them (no TFDS dir, no `cache_dir`) computes them in every process.
  """
  store = IndexStore(process_index=process_index, process_count=process_count)
  if split in DERIVED_SPLITS:
    train = get_source(
        name, "train", cache_dir=cache_dir, process_index=process_index, process_count=process_count, **kw
    )
    mini = stored_minival(train, minival_per_class, minival_seed)
    if split == "train_minus_minival":
      keep = np.ones(len(train), bool)
      keep[mini] = False
      mini = np.flatnonzero(keep)
    return SubsetSource(train, mini, name=f"{name}/{split}")
  source = _open(name, split, dict(kw))
  source.index_store = dataclasses.replace(store, dirs=tuple(source.index_dirs(cache_dir)))
  return source
