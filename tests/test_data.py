"""Tests for scalenet_jax.data: sources, splits, deterministic pipeline, augmentation."""

import gzip
import os
import subprocess
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import helpers
from scalenet_jax import data as D
from scalenet_jax.data import augment, sources, transforms as T
from scalenet_jax.errors import MissingDependencyError


def write_idx(path, array, gz=False):
  codes = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}
  header = bytes([0, 0, codes[array.dtype.type], array.ndim])
  header += np.asarray(array.shape, ">u4").tobytes()
  raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
  with open(path, "wb") as f:
    f.write(gzip.compress(raw) if gz else raw)


def make_fmnist_dir(root, n_train=40, n_test=12):
  """A tiny Fashion-MNIST lookalike (gzipped train, plain test files)."""
  rng = np.random.default_rng(0)
  for prefix, n, gz in (("train", n_train, True), ("t10k", n_test, False)):
    write_idx(
        os.path.join(root, f"{prefix}-images-idx3-ubyte" + (".gz" if gz else "")),
        rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        gz,
    )
    write_idx(
        os.path.join(root, f"{prefix}-labels-idx1-ubyte" + (".gz" if gz else "")),
        (np.arange(n) % 10).astype(np.uint8),
        gz,
    )
  return str(root)


def make_image_folder(root, classes=("cat", "dog", "eel"), per_class=4, sizes=((20, 24), (31, 17))):
  for split in ("train", "val"):
    for c in classes:
      os.makedirs(root / split / c)
      for k in range(per_class):
        h, w = sizes[k % len(sizes)]
        img = Image.fromarray(np.full((h, w, 3), 40 * k, np.uint8))
        img.save(root / split / c / (f"{k}.png" if k % 2 else f"{k}.JPEG"))
  return str(root)


# ---------------------------------------------------------------------------------------------------
# Sources.
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,gz", [(np.uint8, False), (np.uint8, True), (np.int32, True), (np.float32, False)])
def test_read_idx_roundtrip(tmp_path, dtype, gz):
  a = (
      (np.arange(2 * 3 * 5).reshape(2, 3, 5) * 7 - 20).astype(dtype)
      if dtype != np.uint8
      else np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
  )
  write_idx(tmp_path / "x.idx", a, gz)
  b = sources.read_idx(str(tmp_path / "x.idx"))
  assert b.shape == a.shape and b.dtype == a.dtype and np.array_equal(a, b)


def test_read_idx_errors(tmp_path):
  (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
  with pytest.raises(ValueError, match="bad magic.*bad"):
    sources.read_idx(str(tmp_path / "bad"))
  write_idx(tmp_path / "short", np.zeros((4, 4), np.uint8))
  (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
  with pytest.raises(ValueError, match="short"):
    sources.read_idx(str(tmp_path / "short"))


def test_fashion_mnist_root_override(tmp_path):
  root = make_fmnist_dir(tmp_path)
  train, test = D.get_source("fashion_mnist", "train", root=root), D.get_source("fashion_mnist", "test", root=root)
  assert (len(train), len(test)) == (40, 12)
  assert train.image_shape == (28, 28, 1) and train.num_classes == 10
  ex = train[13]
  assert ex["image"].dtype == np.uint8 and ex["image"].shape == (28, 28, 1) and ex["label"] == 3


def test_real_fashion_mnist():
  helpers.fashion_mnist_dir()
  train, test = D.get_source("fashion_mnist", "train"), D.get_source("fashion_mnist", "val")
  assert (len(train), len(test)) == (60000, 10000)
  assert train.image_shape == (28, 28, 1) and train.images.dtype == np.uint8
  assert np.array_equal(np.bincount(train.labels), np.full(10, 6000))
  assert np.array_equal(np.bincount(test.labels), np.full(10, 1000))


def test_image_folder(tmp_path):
  root = make_image_folder(tmp_path)
  # val lacks "cat": labels must still follow the train class list.
  for f in os.listdir(tmp_path / "val" / "cat"):
    os.remove(tmp_path / "val" / "cat" / f)
  os.rmdir(tmp_path / "val" / "cat")
  train = D.get_source(f"imagefolder:{root}", "train")
  val = D.get_source("imagefolder", "val", data_dir=root)
  assert train.class_names == ["cat", "dog", "eel"] and train.num_classes == 3 and len(train) == 12
  assert np.array_equal(train.labels, np.repeat([0, 1, 2], 4))
  assert np.array_equal(val.labels, np.repeat([1, 2], 4))
  ex = train[1]
  assert ex["image"].shape == (31, 17, 3) and ex["image"].dtype == np.uint8 and ex["label"] == 0
  assert train.image_shape == (None, None, 3)
  batch = next(D.train_batches(train, 4, seed=0, preprocess=D.Preprocess(img_size=16, hflip=True, crop_padding=2)))
  assert batch["image"].shape == (4, 16, 16, 3) and batch["label"].dtype == np.int32


def test_synthetic_is_deterministic():
  a, b = D.get_source("synthetic", num_examples=8, image_shape=(8, 8, 3)), D.get_source(
      "synthetic", num_examples=8, image_shape=(8, 8, 3)
  )
  assert all(np.array_equal(a[i]["image"], b[i]["image"]) for i in range(8))
  assert not np.array_equal(
      a[0]["image"], D.get_source("synthetic", "test", num_examples=8, image_shape=(8, 8, 3))[0]["image"]
  )


def test_tfds_source_with_mock_data():
  import tensorflow_datasets as tfds

  with (
      tfds.testing.mock_data(num_examples=12),
      mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
  ):
    src = D.get_source("tfds:mnist", "train")
    assert len(src) == 12 and src.num_classes == 10 and src.image_shape == (28, 28, 1)
    assert src[0]["image"].shape == (28, 28, 1) and len(src.labels) == 12
    batch = next(D.train_batches(src, 4, seed=0, preprocess=D.Preprocess(img_size=32)))
    assert batch["image"].shape == (4, 32, 32, 1)
    # Plain mock_data points at a dataset dir inside the tfds package that does not exist: no index
    # file may be written (or directory created) there.
    assert not os.path.exists(src._builder.data_dir)


def test_tensorflow_datasets_is_imported_only_for_tfds_data():
  """TFDS is an optional extra: importing every module of the package leaves it unimported."""
  code = (
      "import importlib, pkgutil, sys, scalenet_jax\n"
      "for m in pkgutil.walk_packages(scalenet_jax.__path__, 'scalenet_jax.'):\n"
      "  if not m.name.endswith('__main__'):\n"
      "    importlib.import_module(m.name)\n"
      "print(sorted(k for k in sys.modules if k.startswith('tensorflow')))"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=helpers.REPO, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "[]"


def test_tfds_dataset_without_tensorflow_datasets_is_one_clear_error():
  with mock.patch.dict(sys.modules, {"tensorflow_datasets": None}):  # None: `import` raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install scalenet_jax\[tfds\]"):
      D.get_source("tfds:mnist", "train")


# ---------------------------------------------------------------------------------------------------
# Clear errors.
# ---------------------------------------------------------------------------------------------------
def test_missing_directories(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match=f"not found: {missing}"):
    D.get_source(f"imagefolder:{missing}")
  with pytest.raises(FileNotFoundError, match=missing):
    D.get_source("fashion_mnist", root=missing)
  os.makedirs(tmp_path / "empty_root")
  with pytest.raises(FileNotFoundError, match="empty_root/train"):
    D.get_source(f"imagefolder:{tmp_path / 'empty_root'}")


def test_empty_image_folder(tmp_path):
  os.makedirs(tmp_path / "train" / "cat")
  (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
  with pytest.raises(ValueError, match=f"{tmp_path / 'train'} has no images"):
    D.get_source(f"imagefolder:{tmp_path}")
  os.makedirs(tmp_path / "e2" / "train")
  with pytest.raises(ValueError, match="no class directories"):
    D.get_source(f"imagefolder:{tmp_path / 'e2'}")


def test_undecodable_image(tmp_path):
  root = make_image_folder(tmp_path, per_class=2)
  bad = tmp_path / "train" / "dog" / "broken.JPEG"
  bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
  src = D.get_source(f"imagefolder:{root}")
  k = src.files.index(str(bad))
  with pytest.raises(ValueError, match=f"cannot decode image {bad}"):
    src[k]
  # The error surfaces unchanged through the threaded pipeline.
  with pytest.raises(ValueError, match=f"cannot decode image {bad}"):
    list(D.eval_batches(src, 7, preprocess=D.Preprocess(img_size=8)))


@pytest.mark.parametrize("split", ["train", "validation", "val", "minival"])
def test_imagenet_manual_dir_message(tmp_path, split):
  manual = tmp_path / "downloads" / "manual"
  with pytest.raises(FileNotFoundError) as e:
    D.get_source("tfds:imagenet2012", split, data_dir=str(tmp_path))
  msg = str(e.value)
  assert f"in {manual}" in msg and "ILSVRC2012_img_train.tar" in msg and "ILSVRC2012_img_val.tar" in msg
  assert "\n" not in msg
  other = tmp_path / "elsewhere"
  with pytest.raises(FileNotFoundError, match=f"in {other}"):
    D.get_source("tfds:imagenet2012", "train", data_dir=str(tmp_path), manual_dir=str(other))


def test_batch_not_divisible_by_process_count():
  src = D.get_source("synthetic", num_examples=32, image_shape=(4, 4, 1))
  with pytest.raises(ValueError, match="global batch 10 is not divisible by process count 4"):
    D.train_batches(src, 10, seed=0, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="larger than the dataset"):
    D.train_batches(src, 64, seed=0)


def test_unknown_names(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'mnistt'"):
    D.get_source("mnistt")
  valid = r"\(valid: train, test, val, validation, minival, train_minus_minival\)$"
  with pytest.raises(ValueError, match=f"unknown split 'trian' for synthetic {valid}"):
    D.get_source("synthetic", "trian")
  with pytest.raises(ValueError, match=f"unknown split 'dev' for fashion_mnist {valid}"):
    D.get_source("fashion_mnist", "dev", root=make_fmnist_dir(tmp_path))
  with pytest.raises(
      ValueError, match="unknown split 'dev' for imagefolder:.*valid: train, val, validation, test, minival"
  ):
    D.get_source(f"imagefolder:{tmp_path}", "dev")


def test_split_aliases(tmp_path):
  """`val` / `validation` / `test` open whichever of them a source has (TFDS: tests/test_data_tfds.py)."""
  os.makedirs(tmp_path / "fm")
  fm = make_fmnist_dir(tmp_path / "fm")
  for split in ("test", "val", "validation"):
    assert len(D.get_source("fashion_mnist", split, root=fm)) == 12
  folder = make_image_folder(tmp_path / "if")
  for split in ("val", "validation", "test"):
    assert D.get_source(f"imagefolder:{folder}", split).split_dir == os.path.join(folder, "val")
  kw = dict(num_examples=8, image_shape=(4, 4, 1))
  test, val = D.get_source("synthetic", "test", **kw), D.get_source("synthetic", "validation", **kw)
  np.testing.assert_array_equal(test[3]["image"], val[3]["image"])


# ---------------------------------------------------------------------------------------------------
# Splits and pipeline determinism.
# ---------------------------------------------------------------------------------------------------
def test_minival_split():
  labels = np.random.default_rng(1).integers(0, 5, 300)
  mini, rest = D.minival_split(labels, 7, seed=3)
  assert np.array_equal(np.bincount(labels[mini], minlength=5), np.full(5, 7))
  assert not set(mini) & set(rest) and len(mini) + len(rest) == 300
  mini2, _ = D.minival_split(labels, 7, seed=3)
  assert np.array_equal(mini, mini2)
  assert not np.array_equal(mini, D.minival_split(labels, 7, seed=4)[0])
  with pytest.raises(ValueError, match="more than 100 images per class"):
    D.minival_split(labels, 100)


def test_minival_sources():
  kw = dict(num_examples=200, num_classes=4, image_shape=(4, 4, 1), minival_per_class=10)
  mini, rest = D.get_source("synthetic", "minival", **kw), D.get_source("synthetic", "train_minus_minival", **kw)
  assert len(mini) == 40 and len(rest) == 160
  assert np.array_equal(np.bincount(mini.labels), np.full(4, 10))
  assert not set(mini.indices) & set(rest.indices)
  assert np.array_equal(mini[3]["image"], mini.base[int(mini.indices[3])]["image"])


SWIN_SMALL = D.imagenet_swin_preprocess(16, reprob=0.5)


@pytest.mark.parametrize(
    "pp",
    [
        D.Preprocess(img_size=12, pad=2, crop_padding=2, hflip=True, to_rgb=True, mean=(0.5,) * 3, std=(0.25,) * 3),
        SWIN_SMALL,
    ],
    ids=["simple", "swin"],
)
def test_resume_gives_same_batches(pp):
  src = D.get_source("synthetic", num_examples=20, image_shape=(10, 10, 3) if pp.recipe == "swin" else (8, 8, 1))
  # 8-example batches, 2 steps per epoch: steps 0..5 cross two epoch boundaries.
  run = list(D.train_batches(src, 8, seed=5, preprocess=pp, num_steps=6))
  resumed = list(D.train_batches(src, 8, seed=5, start_step=3, preprocess=pp, num_steps=3))
  for a, b in zip(run[3:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert run[0]["image"].shape == (8, 12 if pp.recipe == "simple" else 16, 12 if pp.recipe == "simple" else 16, 3)
  # Different epochs reshuffle; different seeds differ.
  assert not np.array_equal(run[0]["label"], run[2]["label"]) or not np.array_equal(run[0]["image"], run[2]["image"])
  other = next(D.train_batches(src, 8, seed=6, preprocess=pp))
  assert not np.array_equal(other["image"], run[0]["image"])


def test_epoch_is_a_permutation():
  idx = np.concatenate([D.global_batch_indices(50, 8, seed=1, step=s)[0] for s in range(6)])
  assert len(np.unique(idx)) == 48
  assert D.global_batch_indices(50, 8, seed=1, step=6)[1] == 1


@pytest.mark.parametrize("pp", [D.fashion_mnist_preprocess(32, to_rgb=True), SWIN_SMALL], ids=["simple", "swin"])
def test_host_slices_concatenate_to_global_batch(pp):
  src = D.get_source("synthetic", num_examples=64, image_shape=(28, 28, 1) if pp.recipe == "simple" else (20, 20, 3))
  whole = list(D.train_batches(src, 16, seed=2, start_step=4, preprocess=pp, num_steps=2))
  for step in range(2):
    parts = [
        list(
            D.train_batches(src, 16, seed=2, start_step=4, preprocess=pp, num_steps=2, process_index=p, process_count=4)
        )[step]
        for p in range(4)
    ]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole[step]["image"])
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), whole[step]["label"])


def test_eval_covers_every_example_once():
  src = D.get_source("synthetic", num_examples=10, num_classes=3, image_shape=(4, 4, 1))
  batches = list(D.eval_batches(src, 4))
  assert len(batches) == 3 == D.num_eval_batches(10, 4)
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 10 and not mask[10:].any()
  labels = np.concatenate([b["label"] for b in batches])[mask]
  np.testing.assert_array_equal(labels, src.labels)
  images = np.concatenate([b["image"] for b in batches])
  np.testing.assert_allclose(images[9], src[9]["image"] / 255.0)
  assert not images[10:].any()
  # Two hosts: their rows interleave back to the same global batches.
  hosts = [list(D.eval_batches(src, 4, process_index=p, process_count=2)) for p in range(2)]
  for k in range(3):
    np.testing.assert_array_equal(np.concatenate([hosts[0][k]["mask"], hosts[1][k]["mask"]]), batches[k]["mask"])
    np.testing.assert_array_equal(np.concatenate([hosts[0][k]["image"], hosts[1][k]["image"]]), batches[k]["image"])


class Recording(sources.Source):
  """A source that records every index read from it (`source[i]` or `get_batch`)."""

  def __init__(self, base):
    self.base, self.reads = base, []
    self.num_classes, self.image_shape = base.num_classes, base.image_shape

  def __len__(self):
    return len(self.base)

  def __getitem__(self, i):
    self.reads.append(int(i))
    return self.base[i]

  def get_batch(self, indices):
    self.reads.extend(int(i) for i in indices)
    return self.base.get_batch(indices)

  @property
  def labels(self):
    return self.base.labels


@pytest.mark.parametrize("pp", [D.Preprocess(img_size=8, crop_padding=1, hflip=True), D.imagenet_swin_preprocess(8)])
def test_each_host_reads_only_its_rows(pp):
  """Two hosts: each reads exactly its rows of every train / eval batch, and together they read the batch."""
  base = D.get_source("synthetic", num_examples=40, num_classes=4, image_shape=(6, 6, 3))
  steps, batch = 3, 8
  hosts = [Recording(base) for _ in range(2)]
  for p, src in enumerate(hosts):
    list(
        D.train_batches(
            src, batch, seed=1, start_step=1, preprocess=pp, num_steps=steps, process_index=p, process_count=2
        )
    )
  # Loader threads interleave steps, so compare what each host read over all steps.
  rows = [D.global_batch_indices(len(base), batch, 1, step)[0] for step in range(1, 1 + steps)]
  for p, src in enumerate(hosts):
    assert sorted(src.reads) == sorted(np.concatenate([r[p * 4 : (p + 1) * 4] for r in rows]).tolist())
  assert not set(hosts[0].reads) & set(hosts[1].reads)  # Within an epoch the two shares are disjoint.
  # Eval, 10 examples in batches of 8: host 1's rows of the last batch (12..15) are all padding.
  evals = [Recording(D.get_source("synthetic", "test", num_examples=10, image_shape=(6, 6, 3))) for _ in range(2)]
  out = [list(D.eval_batches(src, 8, preprocess=pp, process_index=p, process_count=2)) for p, src in enumerate(evals)]
  assert sorted(evals[0].reads) == [0, 1, 2, 3, 8, 9] and sorted(evals[1].reads) == [4, 5, 6, 7]
  assert out[1][1]["image"].shape == out[0][1]["image"].shape and not out[1][1]["mask"].any()
  assert not out[1][1]["image"].any()


# ---------------------------------------------------------------------------------------------------
# Transforms and on-device augmentation.
# ---------------------------------------------------------------------------------------------------
def test_batched_transforms():
  x = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3)).astype(np.float32)
  np.testing.assert_allclose(T.resize_batch(np.full((2, 7, 9, 3), 5.0), (13, 4)), 5.0, rtol=1e-6)
  for size in [(3, 7), (13, 4), (6, 20)]:  # Same antialiased triangle filter as jax.image.resize.
    ref = jax.image.resize(x, (5, *size, 3), "linear", antialias=True)
    np.testing.assert_allclose(T.resize_batch(x, size), ref, atol=1e-3)
  u = np.array([[0.0, 0.99, 0.9]] * 5)  # Offset (0, 2) into the 1-padded image: shift down 1, left 1.
  out = T.random_crop_flip(x, 1, True, u)
  np.testing.assert_array_equal(out[:, 1:, :-1], x[:, :-1, 1:])
  assert not out[:, 0].any() and not out[:, :, -1].any()
  flipped = T.random_crop_flip(x, 0, True, np.array([[0, 0, 0.1]] * 5))
  np.testing.assert_array_equal(flipped, x[:, :, ::-1])
  u1, u2 = T.example_uniforms(1, 2, np.array([5, 9]), 3), T.example_uniforms(1, 2, np.array([9]), 3)
  np.testing.assert_array_equal(u1[1], u2[0])  # Depends on the example, not its batch position.
  assert not np.allclose(u1, T.example_uniforms(1, 3, np.array([5, 9]), 3))


def test_randaugment_and_erasing_deterministic():
  img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8))
  outs = [np.asarray(T.rand_augment(img, np.random.default_rng(s), 2, 9.0, 0.5, prob=1.0)) for s in (7, 7, 8)]
  np.testing.assert_array_equal(outs[0], outs[1])
  assert not np.array_equal(outs[0], outs[2])
  for name, op in T.RANDAUGMENT_OPS.items():  # Every op keeps size and mode.
    out = op(img, 9.0, -1.0)
    assert out.size == img.size and out.mode == "RGB", name
  x = np.zeros((16, 16, 3), np.float32)
  e1, e2 = (T.random_erasing(x, np.random.default_rng(3), prob=1.0) for _ in range(2))
  np.testing.assert_array_equal(e1, e2)
  assert 0 < (e1 != 0).any(-1).mean() <= 1 / 3 + 0.05
  assert not T.random_erasing(x, np.random.default_rng(3), prob=0.0).any()
  crop = T.random_resized_crop(img, 10, np.random.default_rng(1))
  assert crop.size == (10, 10)
  assert T.resize_center_crop(img.resize((30, 20)), 14).size == (14, 14)


def test_smooth_labels():
  y = augment.smooth_labels(jnp.array([0, 2]), 4, 0.1)
  np.testing.assert_allclose(y, [[0.925, 0.025, 0.025, 0.025], [0.025, 0.025, 0.925, 0.025]], rtol=1e-6)


def test_sample_beta_moments():
  for alpha in (0.8, 1.0):
    draws = np.asarray(jax.vmap(lambda k: augment.sample_beta(k, alpha))(jax.random.split(jax.random.key(0), 4000)))
    assert draws.min() >= 0 and draws.max() <= 1
    assert abs(draws.mean() - 0.5) < 0.02
    assert abs(draws.var() - 1 / (4 * (2 * alpha + 1))) < 0.01  # Var of Beta(a, a).


def test_mixup_cutmix():
  images = jax.random.normal(jax.random.key(0), (6, 8, 8, 3))
  labels = jnp.arange(6)  # Distinct labels, so lam can be read back from the targets.
  # One compilation: alphas are static, switch_prob / label_smoothing are traced.
  fn = jax.jit(
      lambda rng, switch, smooth: augment.mixup_cutmix(
          rng, images, labels, 6, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=switch, label_smoothing=smooth
      )
  )
  for k in range(3):
    out, soft = fn(jax.random.key(k), 0.5, 0.1)
    assert out.shape == images.shape and soft.shape == (6, 6)
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-5)
  # switch_prob 0: Mixup, out = lam * x + (1 - lam) * x[::-1], lam read back from unsmoothed targets.
  out, soft = fn(jax.random.key(2), 0.0, 0.0)
  lam = float(soft[0, 0])
  np.testing.assert_allclose(soft[0, 5], 1 - lam, rtol=1e-5)
  np.testing.assert_allclose(out, lam * images + (1 - lam) * images[::-1], rtol=1e-4, atol=1e-5)
  # switch_prob 1: CutMix, every pixel comes from x or x[::-1] and lam is the kept area.
  for k in range(3):
    out, soft = fn(jax.random.key(10 + k), 1.0, 0.0)
    from_flip = np.all(np.asarray(out) == np.asarray(images[::-1]), -1)[0]
    assert np.all(np.asarray(out)[0][~from_flip] == np.asarray(images)[0][~from_flip])
    np.testing.assert_allclose(float(soft[0, 0]), 1 - from_flip.mean(), rtol=1e-5)
  # Both alphas 0: identity on images, smoothing only.
  same, soft = augment.mixup_cutmix(
      jax.random.key(1), images, labels, 6, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1
  )
  np.testing.assert_array_equal(same, images)
  np.testing.assert_allclose(soft, augment.smooth_labels(labels, 6, 0.1))
