"""TFDS `imagenet2012` (or `scene_parse150`) served by `tfds.testing.mock_data`: the real feature spec, any
split sizes.

`tfds.testing.mock_data` alone cannot serve the end-to-end tests: without metadata files it has no
split sizes (every split has `num_examples` records, `is_prepared()` is False), its random labels leave
classes empty (no mini-val), and its data sources need TensorFlow for raw records and lack a working
`__getitems__`. So this module gives mock_data what its docs ask for (`MockPolicy.USE_FILES`): real
metadata files (`dataset_info.json`, `features.json`, `label.labels.txt`), written from the real
`imagenet2012` builder with the chosen split sizes, plus an `as_data_source_fn` whose records are real
serialized `tf.train.Example`s (JPEG image, label, file name) decoded by TFDS's own feature spec.

Record `i` of a split is a pure function of (split, i): labels are `i % 1000` in a fixed shuffled
order (every class has `n // 1000` or one more examples), images are small JPEGs of varying size in a
per-class colour. Everything TFDS writes (and our label / mini-val index files) lives under `root`.

`Spec(dataset="scene_parse150")` serves ADE20K's TFDS builder instead (splits `train` and `test`, the
latter sized by `validation`): record `i` is a JPEG `image` and a PNG `annotation` (H, W, 3) of the same
varying size, whose first channel holds ADE20K classes 0..150 in vertical bands (`annotation_of`: band
`b` of record `i` has class `(7 i + 37 b) % 151`, so 0 = "other" occurs) and whose image is coloured by
that class.

In-process:

    with tfds_mock.imagenet(tmp_path, train=3000, validation=50) as mock:
      src = data.get_source("tfds:imagenet2012", "validation")
      mock.reads  # records read so far, per split

From a subprocess (the mock is entered by this file, which then runs the module as `-m` would):

    spec = tfds_mock.Spec(str(tmp_path / "tfds"), train=3000, validation=50)
    subprocess.run(tfds_mock.command("-m", "scalenet_jax.main", "--config", cfg, "--workdir", wd),
                   env=tfds_mock.env(spec), check=True)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import io
import json
import os
import runpy
import sys
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

EVAL_SPLIT = {"imagenet2012": "validation", "scene_parse150": "test"}
ENV = "SCALENET_TFDS_MOCK"  # JSON `Spec` for the subprocess entry point below (read only by this file).
NUM_CLASSES = 1000
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@dataclasses.dataclass(frozen=True)
class Spec:
  """Where the mock's metadata (and index files) live, and its split sizes."""

  root: str
  train: int = 3000
  validation: int = 50
  seed: int = 0
  dataset: str = "imagenet2012"  # or "scene_parse150"

  @property
  def sizes(self) -> dict[str, int]:
    return {"train": self.train, EVAL_SPLIT[self.dataset]: self.validation}

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, text: str) -> "Spec":
    return cls(**json.loads(text))


# ----------------------------------------------------------------------------------------------------
# Metadata files: the real builder's DatasetInfo with our split sizes.
# ----------------------------------------------------------------------------------------------------
def write_metadata(spec: Spec) -> Path:
  """Writes `<root>/imagenet2012/<version>/` metadata (idempotent); returns that directory.

  One `root` per spec: a spec with other sizes rewrites the metadata (and so makes index files stale).
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core import splits as splits_lib

  builder = tfds.builder(spec.dataset, data_dir=spec.root, file_format="array_record")
  variant = Path(builder.data_dir)
  info_file = variant / "dataset_info.json"
  if info_file.exists() and _sizes_of(info_file) == spec.sizes:
    return variant
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_path, dataset_name=builder.name, filetype_suffix="array_record"
  )
  builder.info.set_splits(
      splits_lib.SplitDict(
          [
              splits_lib.SplitInfo(name=s, shard_lengths=[n], num_bytes=0, filename_template=template.replace(split=s))
              for s, n in spec.sizes.items()
          ]
      )
  )
  # Written aside, then renamed in file by file: subprocesses starting together never read half a file.
  staging = variant / f".staging-{os.getpid()}-{threading.get_ident()}"
  staging.mkdir(parents=True)
  builder.info.write_to_directory(staging)
  for f in staging.iterdir():
    os.replace(f, variant / f.name)
  staging.rmdir()
  return variant


def _sizes_of(info_file: Path) -> dict[str, int]:
  splits = json.loads(info_file.read_text()).get("splits", [])
  return {s["name"]: sum(int(n) for n in s.get("shardLengths", [])) for s in splits}


# ----------------------------------------------------------------------------------------------------
# Records: serialized tf.train.Example bytes, a pure function of (split, index).
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def _jpeg(label: int, variant: int) -> bytes:
  """Cached: encoding dominates the cost of a record, and 4 size variants per class are plenty."""
  from PIL import Image

  h, w = 16 + 11 * variant, 40 - 7 * variant
  colour = np.random.default_rng(label % NUM_CLASSES).integers(0, 256, 3, dtype=np.uint8)
  ramp = np.linspace(0.6, 1.0, w, dtype=np.float32)[None, :, None]
  image = np.broadcast_to(colour * ramp, (h, w, 3)).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, "JPEG", quality=90)
  return buf.getvalue()


ADE_CLASSES = 150  # scene_parse150: annotation values 0 ("other") .. 150


def annotation_of(i: int) -> np.ndarray:
  """The ADE20K class map (uint8 (H, W)) of scene_parse150 record `i`: 4 size variants, vertical bands of
  8 columns, band `b` of class `(7 i + 37 b) % 151`."""
  h, w = 20 + 6 * (i % 4), 36 - 4 * (i % 4)
  bands = (7 * i + 37 * (np.arange(w) // 8)) % (ADE_CLASSES + 1)
  return np.broadcast_to(bands[None, :], (h, w)).astype(np.uint8)


def _encode(array: np.ndarray, fmt: str) -> bytes:
  from PIL import Image

  buf = io.BytesIO()
  Image.fromarray(array).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
  return buf.getvalue()


def _segmentation_example(example, i: int) -> None:
  label = annotation_of(i)
  palette = np.random.default_rng(0).integers(0, 256, (ADE_CLASSES + 1, 3), dtype=np.uint8)
  feature = example.features.feature
  feature["image"].bytes_list.value.append(_encode(palette[label], "JPEG"))
  # Instance-annotation layout (R: class, G: an instance id), as TFDS's builder reads ADE's PNGs.
  feature["annotation"].bytes_list.value.append(_encode(np.stack([label, label // 2, 0 * label], -1), "PNG"))


class Records:
  """The raw record store of one split (what ArrayRecord would hold), counting reads."""

  def __init__(
      self, split: str, size: int, seed: int, counter: collections.Counter, lock: threading.Lock, dataset: str
  ):
    self.split, self.size, self.counter, self.lock, self.dataset = split, size, counter, lock, dataset
    salt = sum(map(ord, split))  # Different splits, different orders.
    self.labels = np.random.default_rng((seed, salt)).permutation(size) % NUM_CLASSES

  def __len__(self) -> int:
    return self.size

  def _record(self, i: int) -> bytes:
    from tensorflow_datasets.proto import tf_example_pb2

    if not 0 <= i < self.size:
      raise IndexError(f"record {i} out of range [0, {self.size}) of {self.split}")
    example = tf_example_pb2.Example()
    if self.dataset == "scene_parse150":
      _segmentation_example(example, i)
      return example.SerializeToString()
    label = int(self.labels[i])
    feature = example.features.feature
    feature["image"].bytes_list.value.append(_jpeg(label, i % 4))
    feature["label"].int64_list.value.append(label)
    feature["file_name"].bytes_list.value.append(f"{self.split}_{i:08d}.JPEG".encode())
    return example.SerializeToString()

  def __getitem__(self, i) -> bytes:
    with self.lock:
      self.counter[self.split] += 1
    return self._record(int(i))

  def __getitems__(self, keys) -> list[bytes]:
    with self.lock:
      self.counter[self.split] += len(keys)
    return [self._record(int(i)) for i in keys]


class Mock:
  """Handle of an active mock: its spec and the number of records read per split."""

  def __init__(self, spec: Spec):
    self.spec, self.reads, self._lock = spec, collections.Counter(), threading.Lock()
    self.data_dir = write_metadata(spec)
    self._records = {}

  def records(self, split: str) -> Records:
    if split not in self.spec.sizes:
      raise ValueError(f"mock {self.spec.dataset} has no split {split!r} ({', '.join(self.spec.sizes)})")
    if split not in self._records:
      size = self.spec.sizes[split]
      self._records[split] = Records(split, size, self.spec.seed, self.reads, self._lock, self.spec.dataset)
    return self._records[split]

  def as_data_source(self, builder, split=None, decoders=None, deserialize_method=None, **kwargs):
    """Replaces `DatasetBuilder.as_data_source`: TFDS's own deserialisation over our records."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.data_sources import base

    del kwargs
    if not isinstance(split, str):
      raise ValueError(f"the {self.spec.dataset} mock serves one named split at a time, got {split!r}")
    source = base.BaseDataSource(
        dataset_info=builder.info,
        split=split,
        decoders=decoders,
        deserialize_method=deserialize_method or tfds.decode.DeserializeMethod.DESERIALIZE_AND_DECODE,
    )
    source.data_source = self.records(split)
    return source


@contextlib.contextmanager
def activate(spec: Spec) -> Iterator[Mock]:
  """Serves `spec` through `tfds.testing.mock_data` for the duration of the block."""
  import tensorflow_datasets as tfds

  mock = Mock(spec)

  def as_data_source(builder, *args, **kwargs):  # A function, so mock.patch binds it as a method.
    return mock.as_data_source(builder, *args, **kwargs)

  with tfds.testing.mock_data(
      policy=tfds.testing.MockPolicy.USE_FILES, data_dir=spec.root, as_data_source_fn=as_data_source
  ):
    yield mock


def imagenet(root, train: int = 3000, validation: int = 50, seed: int = 0):
  """`with imagenet(tmp_path, train=..., validation=...) as mock:` (metadata under `root/tfds`)."""
  return activate(Spec(str(Path(root).resolve() / "tfds"), train=train, validation=validation, seed=seed))


# ----------------------------------------------------------------------------------------------------
# Subprocesses.
# ----------------------------------------------------------------------------------------------------
def env(spec: Spec, base: dict | None = None) -> dict:
  """Environment for `command(...)`: the spec, and the repository importable."""
  out = dict(os.environ if base is None else base)
  out[ENV] = spec.to_json()
  out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH", "")) if p)
  return out


def command(*args: str) -> list[str]:
  """`python tests/tfds_mock.py -m module args...` (or `script.py args...`): run under the mock whose
  spec is in the environment (`env(spec)`). A process it starts in turn is mocked only if started
  through `command` as well (it inherits the spec)."""
  return [sys.executable, str(Path(__file__).resolve()), *args]


def main(argv: list[str]) -> None:
  if ENV not in os.environ:
    sys.exit(f"{argv[0]}: set {ENV} (tfds_mock.env(spec)) to say what to mock")
  if len(argv) < 2 or (argv[1] == "-m" and len(argv) < 3):
    sys.exit(f"usage: {argv[0]} -m module [args...] | script.py [args...]")
  sys.path[0] = str(REPO)  # As `python -m` from the repository root would have it (not tests/).
  with activate(Spec.from_json(os.environ[ENV])):
    if argv[1] == "-m":
      sys.argv = [argv[2], *argv[3:]]
      runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    else:
      sys.argv = argv[1:]
      runpy.run_path(argv[1], run_name="__main__")


if __name__ == "__main__":
  main(sys.argv)
