"""TFDS `imagenet2012` at scale, on the mock of tests/tfds_mock.py: split names, the label and mini-val
index files (stored once, fingerprinted, shared by hosts), start-up time, and the mock itself (in-process
and from a subprocess)."""

import io
import json
import os
import subprocess
import threading
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

import tfds_mock  # tests/ is on sys.path, as for mp_launch
from scalenet_jax import data as D
from scalenet_jax.data import index_files, sources

IMAGENET = "tfds:imagenet2012"
LABELS = "scalenet-labels-train.npz"


def open_train(split="train", **kw):
  return D.get_source(IMAGENET, split, **kw)


# ---------------------------------------------------------------------------------------------------
# The mock.
# ---------------------------------------------------------------------------------------------------
def test_mock_has_the_real_feature_spec(tmp_path):
  with tfds_mock.imagenet(tmp_path, train=2000, validation=50) as m:
    builder = tfds.builder("imagenet2012")
    features = builder.info.features
    assert isinstance(features["image"], tfds.features.Image) and features["image"].shape == (None, None, 3)
    assert features["image"].np_dtype == np.uint8 and features["image"].encoding_format == "jpeg"
    assert isinstance(features["label"], tfds.features.ClassLabel) and features["label"].num_classes == 1000
    assert isinstance(features["file_name"], tfds.features.Text)
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 2000, "validation": 50}
    # TFDS's own deserialisation of our records, one at a time and batched, and without image decoding.
    ds = tfds.data_source("imagenet2012", split="validation")
    ex, batch = ds[7], ds.__getitems__([7, 8])
    assert ex["image"].dtype == np.uint8 and ex["image"].ndim == 3 and ex["file_name"] == b"validation_00000007.JPEG"
    np.testing.assert_array_equal(batch[0]["image"], ex["image"])
    skip = builder.as_data_source("validation", decoders={"image": tfds.decode.SkipDecoding()})
    assert isinstance(skip[7]["image"], bytes) and skip[7]["label"] == ex["label"]
    src = D.get_source(IMAGENET, "validation")
    assert src.num_classes == 1000 and len(src.class_names) == 1000 and src.image_shape == (None, None, 3)
    assert np.array_equal(np.bincount(open_train().labels), np.full(1000, 2))  # Every class: n // 1000.
    assert m.reads["validation"] > 0


def test_mock_from_a_subprocess(tmp_path):
  """A subprocess launched through tests/tfds_mock.py sees the same mock (same records, same index files)."""
  spec = tfds_mock.Spec(str(tmp_path / "tfds"), train=2000, validation=50)
  with tfds_mock.activate(spec):
    here = open_train("minival", minival_per_class=1)
    expected = {"n": len(here), "labels": here.labels[:20].tolist(), "first": int(here.base[0]["label"])}
  (tmp_path / "probe_mod.py").write_text(
      "import json\n"
      "from scalenet_jax import data\n"
      "src = data.get_source('tfds:imagenet2012', 'minival', minival_per_class=1)\n"
      "print('RESULT', json.dumps({'n': len(src), 'labels': src.labels[:20].tolist(),"
      " 'first': int(src.base[0]['label'])}))\n"
  )
  env = tfds_mock.env(spec)
  env["PYTHONPATH"] += os.pathsep + str(tmp_path)
  r = subprocess.run(tfds_mock.command("-m", "probe_mod"), env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  line = next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))
  assert json.loads(line[len("RESULT ") :]) == expected
  # The exit code of the module comes back; without a spec the wrapper refuses to run.
  (tmp_path / "fail_mod.py").write_text("import sys\nsys.exit(3)\n")
  assert subprocess.run(tfds_mock.command("-m", "fail_mod"), env=env, timeout=300).returncode == 3
  del env[tfds_mock.ENV]
  r = subprocess.run(tfds_mock.command("-m", "fail_mod"), env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode != 0 and tfds_mock.ENV in r.stderr


# ---------------------------------------------------------------------------------------------------
# Split names.
# ---------------------------------------------------------------------------------------------------
def test_tfds_split_names(tmp_path):
  with tfds_mock.imagenet(tmp_path, train=2000, validation=50):
    for split in ("validation", "val", "test"):  # The mock has no test split: `test` falls back.
      src = D.get_source(IMAGENET, split)
      assert src.split == "validation" and len(src) == 50
    with pytest.raises(ValueError) as e:
      D.get_source(IMAGENET, "valid")
    assert str(e.value) == (
        "unknown split 'valid' for tfds:imagenet2012 "
        "(valid: train, validation, val, test, minival, train_minus_minival)"
    )


def test_unlabelled_split_is_refused(tmp_path):
  with tfds_mock.imagenet(tmp_path, train=2000, validation=50) as m:
    m.records("validation").labels[:] = -1  # As imagenet2012's real `test` split.
    with pytest.raises(ValueError, match=r"labels outside \[0, 1000\) \(e.g. -1\): not a labelled split"):
      D.get_source(IMAGENET, "validation").labels


# ---------------------------------------------------------------------------------------------------
# Label index.
# ---------------------------------------------------------------------------------------------------
def test_label_index_written_once_then_read(tmp_path):
  with tfds_mock.imagenet(tmp_path, train=3000, validation=50) as m:
    first = open_train()
    np.testing.assert_array_equal(first.labels, m.records("train").labels)
    assert m.reads["train"] >= 3000 and (m.data_dir / LABELS).exists()
    assert not [f for f in os.listdir(m.data_dir) if ".tmp-" in f]  # The temp file was renamed away.
    m.reads.clear()
    again = open_train()
    np.testing.assert_array_equal(again.labels, first.labels)
    assert again.labels.dtype == np.int64
    assert m.reads["train"] <= 9  # One probe and 8 spot checks, no pass.


def test_label_index_falls_back_to_cache_dir(tmp_path):
  """A read-only dataset dir (a shared bucket): the index goes to `<cache_dir>/data_index/...`."""
  write = index_files.write

  def read_only_dataset_dir(path, *args):
    if "data_index" not in str(path):
      raise PermissionError(f"read-only: {path}")
    return write(path, *args)

  cache = tmp_path / "workdir"
  with tfds_mock.imagenet(tmp_path, train=2000, validation=50) as m:
    with mock.patch.object(index_files, "write", side_effect=read_only_dataset_dir):
      labels = open_train(cache_dir=cache).labels
      open_train("minival", cache_dir=cache, minival_per_class=1)
    stored = cache / "data_index" / "imagenet2012" / "5.1.0"
    assert sorted(os.listdir(stored)) == [LABELS, "scalenet-minival-train-1pc-seed0.npz"]
    assert not (m.data_dir / LABELS).exists()
    m.reads.clear()
    np.testing.assert_array_equal(open_train(cache_dir=cache).labels, labels)
    assert m.reads["train"] <= 9
    # Without a cache dir nothing can be stored: computed each time (one process) and said so.
    with mock.patch.object(index_files, "write", side_effect=PermissionError("read-only")):
      with mock.patch.object(index_files.logging, "warning") as warn:
        open_train("validation").labels
    assert "not stored" in warn.call_args[0][0]


def test_stale_label_index_is_never_used(tmp_path):
  with tfds_mock.imagenet(tmp_path, train=2000, validation=50) as m:
    truth = open_train().labels
    path = m.data_dir / LABELS
    # Same fingerprint, other content (an index of another copy of the data): the spot check rejects it.
    with np.load(path) as z:
      fingerprint = json.loads(str(z["fingerprint"]))
    index_files.write(path, {"labels": (truth + 1) % 1000}, fingerprint)
    np.testing.assert_array_equal(open_train().labels, truth)
    # Another fingerprint (e.g. the dataset was regenerated with another size): not even read.
    index_files.write(path, {"labels": truth}, {**fingerprint, "num_examples": 1})
    m.reads.clear()
    np.testing.assert_array_equal(open_train().labels, truth)
    assert m.reads["train"] >= 2000  # Rebuilt.
    # A torn file (not written by `index_files.write`) reads as missing.
    path.write_bytes(path.read_bytes()[:100])
    np.testing.assert_array_equal(open_train().labels, truth)


# ---------------------------------------------------------------------------------------------------
# Mini-val index.
# ---------------------------------------------------------------------------------------------------
def test_minival_chosen_once_and_fingerprinted(tmp_path):
  with tfds_mock.imagenet(tmp_path, train=3000, validation=50) as m:
    mini, rest = open_train("minival", minival_per_class=2), open_train("train_minus_minival", minival_per_class=2)
    want, want_rest = D.minival_split(m.records("train").labels, 2, 0)
    np.testing.assert_array_equal(mini.indices, want)
    np.testing.assert_array_equal(rest.indices, want_rest)
    assert np.array_equal(np.bincount(mini.labels), np.full(1000, 2))
    path = m.data_dir / "scalenet-minival-train-2pc-seed0.npz"
    with np.load(path) as z:
      fingerprint = json.loads(str(z["fingerprint"]))
    assert fingerprint["split_sizes"] == {"train": 3000, "validation": 50}
    assert (fingerprint["dataset"], fingerprint["per_class"], fingerprint["seed"]) == ("imagenet2012/5.1.0", 2, 0)
    # Reused: later runs never recompute it (so a changed numpy permutation cannot move it).
    with mock.patch.object(sources, "minival_split", side_effect=AssertionError("recomputed")):
      np.testing.assert_array_equal(open_train("minival", minival_per_class=2).indices, want)
      with pytest.raises(AssertionError, match="recomputed"):  # Another seed is another file.
        open_train("minival", minival_per_class=2, minival_seed=1)
    # A file whose fingerprint names other labels is stale: recomputed, not used.
    index_files.write(path, {"minival": want[::-1][:10]}, {**fingerprint, "labels_sha1": "0" * 40})
    np.testing.assert_array_equal(open_train("minival", minival_per_class=2).indices, want)


# ---------------------------------------------------------------------------------------------------
# Several hosts.
# ---------------------------------------------------------------------------------------------------
def test_only_process_0_builds_others_wait(tmp_path):
  store = lambda p: index_files.IndexStore([tmp_path / "a", tmp_path / "b"], p, 2, timeout_s=60, poll_s=0.02)
  built, result = [], {}

  def build():
    built.append(1)
    return {"x": np.arange(5)}

  waiter = threading.Thread(target=lambda: result.update(index_files.load_or_build(store(1), "f.npz", {"k": 1}, build)))
  waiter.start()
  time.sleep(0.2)  # Host 1 polls, finds nothing, does not build.
  assert waiter.is_alive() and not built
  index_files.load_or_build(store(0), "f.npz", {"k": 1}, build)
  waiter.join(30)
  assert built == [1] and np.array_equal(result["x"], np.arange(5))
  assert (tmp_path / "a" / "f.npz").exists() and not (tmp_path / "b").exists()
  short = index_files.IndexStore([tmp_path / "a"], 1, 2, timeout_s=0.1, poll_s=0.02)
  with pytest.raises(TimeoutError, match="process 0 to write g.npz"):
    index_files.load_or_build(short, "g.npz", {"k": 1}, build)
  # Process 0 of several must store the file (the others wait for it).
  with mock.patch.object(index_files, "write", side_effect=PermissionError("read-only")):
    with pytest.raises(OSError, match="pass a writable cache_dir"):
      index_files.load_or_build(store(0), "h.npz", {"k": 1}, build)


def test_hosts_share_the_tfds_index(tmp_path):
  with tfds_mock.imagenet(tmp_path, train=2000, validation=50) as m:
    host0 = open_train("train_minus_minival", minival_per_class=1, process_index=0, process_count=2)
    m.reads.clear()
    with mock.patch.object(sources, "minival_split", side_effect=AssertionError("host 1 computed")):
      host1 = open_train("train_minus_minival", minival_per_class=1, process_index=1, process_count=2)
    np.testing.assert_array_equal(host1.indices, host0.indices)
    np.testing.assert_array_equal(host1.base.labels, host0.base.labels)
    assert m.reads["train"] <= 9  # Host 1 read process 0's files: no label pass.


# ---------------------------------------------------------------------------------------------------
# Start-up time at scale.
# ---------------------------------------------------------------------------------------------------
def start_up(batch=64):
  """Opens the search split of train (labels + mini-val) and loads the first train batch: seconds."""
  t = time.perf_counter()
  src = open_train("train_minus_minival", minival_per_class=50)
  next(D.train_batches(src, batch, seed=0, preprocess=D.imagenet_swin_preprocess(32), num_steps=1))
  return time.perf_counter() - t


def test_start_up_time_with_100k_records(tmp_path):
  """Once the index files exist, start-up reads no more than the first batch (and 9 checks) of 100k
  records and takes seconds. The read count catches a regression to a label pass exactly; the time
  bound is generous for a loaded 2-core box (about 0.5 s unloaded, against about 4 s for the pass)."""
  with tfds_mock.imagenet(tmp_path, train=100_000, validation=50) as m:
    first = start_up()
    assert m.reads["train"] >= 100_000
    m.reads.clear()
    tfds_mock._jpeg.cache_clear()
    second = start_up()
    print(f"start-up: {first:.2f} s building the index, {second:.2f} s with it (load {os.getloadavg()[0]:.1f})")
    assert m.reads["train"] <= 64 + 9
    assert second <= 10.0


# ---------------------------------------------------------------------------------------------------
# A real ArrayRecord dataset (the label pass parses raw records; no mock in the way).
# ---------------------------------------------------------------------------------------------------
class ScalenetTinyArrayRecord(tfds.core.GeneratorBasedBuilder):
  """A tiny image classification dataset, prepared as ArrayRecord (PNG bytes: no TensorFlow needed)."""

  VERSION = tfds.core.Version("1.0.0")
  SIZES = {"train": 300, "validation": 40}

  def _info(self):
    features = {"image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(num_classes=7)}
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(n, salt) for salt, (split, n) in enumerate(self.SIZES.items())}

  def _generate_examples(self, n, salt):
    labels = np.random.default_rng(salt).permutation(n) % 7
    for i in range(n):
      buf = io.BytesIO()
      Image.fromarray(np.full((6 + i % 5, 7, 3), i % 251, np.uint8)).save(buf, "PNG")
      buf.seek(0)
      yield i, {"image": buf, "label": int(labels[i])}


def test_real_array_record_dataset(tmp_path):
  builder = ScalenetTinyArrayRecord(data_dir=str(tmp_path))
  builder.download_and_prepare(file_format="array_record")
  name = f"tfds:{builder.name}"
  reads = []
  record_label = sources._record_label
  with mock.patch.object(sources, "_record_label", side_effect=lambda r: reads.append(1) or record_label(r)):
    src = D.get_source(name, "train", data_dir=str(tmp_path))
    want = [int(builder.as_data_source("train")[i]["label"]) for i in range(300)]
    np.testing.assert_array_equal(src.labels, want)
  assert len(reads) == 301  # The fast path: one probe, then every record's raw bytes, label only.
  assert (epath.Path(builder.data_dir) / LABELS).exists()
  assert D.get_source(name, "val", data_dir=str(tmp_path)).split == "validation"
  mini = D.get_source(name, "minival", data_dir=str(tmp_path), minival_per_class=3)
  assert np.array_equal(np.bincount(mini.labels), np.full(7, 3)) and mini[0]["image"].shape[2] == 3
