"""Semantic segmentation (§IV-E, pipeline 'segment'): mIoU against a hand-worked confusion, the loss's ignore
index and auxiliary weight, ADE20K's label mapping, mmseg's window padding against a loop-by-loop reference,
the paper recipe's schedule, backbone initialisation from an mmseg checkpoint, and configs/upernet_swin_tiny_2x.py
run end to end through `python -m scalenet_jax.main` on TFDS `scene_parse150` (`tfds.testing.mock_data`)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tfds_mock
from conftest import random_params
from helpers import CONFIGS, config_file, config_module, fashion_mnist_dir, run_paper_session, timm_checkpoint
from scalenet_jax import dense, segmenter
from scalenet_jax.data import segmentation as seg_data
from scalenet_jax.errors import CheckpointError
from scalenet_jax.models import registry, stack as stack_lib, upernet
from scalenet_jax.train import objectives, optim

CONFIG = str(CONFIGS / "upernet_swin_tiny_2x.py")
MICRO = "swin_micro_patch2_window4_32"  # dims 32/64/128, depths 2/2/2, window 4
# The config on the micro Swin at 64 px crops (stage grids 32/16/8), heads 16 / 8 channels, a small
# rescale so the mock's ~30 px images stay small.
SMALL = [
    f"--config.model.name={MICRO}",
    "--config.model.in_chans=3",
    "--config.data.crop_size=64",
    "--config.data.resize_short=64",
    "--config.data.resize_long=256",
    "--config.head.channels=16",
    "--config.head.aux_channels=8",
]


# ---------------------------------------------------------------------------------------------------------
# mIoU and the loss
# ---------------------------------------------------------------------------------------------------------
def one_hot_logits(pred, k):
  """(B, H, W) class map -> (B, K, H, W) logits whose argmax is `pred`."""
  return jnp.transpose(jax.nn.one_hot(jnp.asarray(pred), k) * 10.0, (0, 3, 1, 2))


def test_miou_against_a_hand_worked_confusion():
  """Two eval batches, four classes, one ignored pixel, one padded example.

  Batch 1, one image (label, pred) per pixel: (0,0) (0,1) (1,1) / (1,1) (2,1) (255,0).
  Batch 2, image A: (2,2) (2,2) / (2,2) (0,0); image B is padding (mask 0): labels 1, preds 0, not counted.
  Per class (intersection, label pixels, predicted pixels): 0: 2, 3, 2 (the 0 predicted on the ignored
  pixel does not count) -> union 3, IoU 2/3; 1: 2, 2, 4 -> union 4, IoU 1/2; 2: 3, 4, 3 -> union 4, IoU
  3/4; 3: nowhere -> NaN, left out. mIoU = (2/3 + 1/2 + 3/4) / 3 = 23/36; aAcc = 7/9; mAcc = (2/3 + 1 + 3/4) / 3
  = 29/36.
  """
  obj = objectives.Segmentation(num_classes=4)
  b1 = {"labels": jnp.asarray([[[0, 0, 1], [1, 2, 255]]]), "mask": jnp.ones(1)}
  b2 = {"labels": jnp.asarray([[[2, 2], [2, 0]], [[1, 1], [1, 1]]]), "mask": jnp.asarray([1.0, 0.0])}
  s1 = obj.eval_sums({"decode_head": one_hot_logits([[[0, 1, 1], [1, 1, 0]]], 4)}, b1)
  s2 = obj.eval_sums({"decode_head": one_hot_logits([[[2, 2], [2, 0]], [[0, 0], [0, 0]]], 4)}, b2)
  sums = jax.tree.map(jnp.add, {k: s1[k] for k in s2}, s2)
  np.testing.assert_array_equal(sums["intersect"], [2, 2, 3, 0])
  np.testing.assert_array_equal(sums["label_area"], [3, 2, 4, 0])
  np.testing.assert_array_equal(sums["pred_area"], [2, 4, 3, 0])
  m = obj.metrics(jax.device_get(sums))
  assert m["iou"][:3] == pytest.approx([2 / 3, 1 / 2, 3 / 4]) and m["iou"][3] is None
  assert m["miou"] == pytest.approx(23 / 36) and m["aacc"] == pytest.approx(7 / 9)
  assert m["macc"] == pytest.approx(29 / 36) and m["eval_examples"] == 2


def test_loss_ignores_255_and_weights_the_auxiliary_head():
  """Zero logits: every valid pixel costs ln K; mmseg averages over all pixels (ignored ones count 0), and
  the auxiliary head (at a coarser map, resized to the labels) weighs 0.4: 1.4 x 5/6 x ln 4."""
  labels = jnp.asarray([[[0, 3, 1], [2, 2, 255]]])
  logits = {"decode_head": jnp.zeros((1, 4, 2, 3)), "auxiliary_head": jnp.zeros((1, 4, 1, 1))}
  loss, _ = objectives.Segmentation(num_classes=4).loss(logits, {"labels": labels})
  assert float(loss) == pytest.approx(1.4 * 5 / 6 * math.log(4), rel=1e-6)
  only = objectives.Segmentation(num_classes=4, aux_weight=0.0).loss(logits, {"labels": labels})[0]
  assert float(only) == pytest.approx(5 / 6 * math.log(4), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------
def test_ade20k_label_mapping():
  """mmseg's reduce_zero_label: "other" (0) and 255 ignored, class k -> k - 1."""
  got = seg_data.reduce_zero_label(np.array([[0, 1, 2], [150, 255, 77]], np.uint8))
  np.testing.assert_array_equal(got, [[255, 0, 1], [149, 255, 76]])


def test_tfds_source_reads_the_class_channel(tmp_path):
  """scene_parse150 through the TFDS mock: the annotation's first channel (not the instance channel), mapped."""
  spec = tfds_mock.Spec(str(tmp_path / "tfds"), train=4, validation=3, dataset="scene_parse150")
  with tfds_mock.activate(spec):
    source = seg_data.open_source(config_file("upernet_swin_tiny_2x.py").data, "test")
    assert len(source) == 3
    for i in range(3):
      ex, ann = source[i], tfds_mock.annotation_of(i).astype(int)
      want = np.where(ann == 0, 255, ann - 1)
      assert ex["image"].shape[:2] == ann.shape and ex["image"].dtype == np.uint8
      np.testing.assert_array_equal(ex["label"], want)
    assert 255 in source[0]["label"]  # record 0's first band is "other"


# ---------------------------------------------------------------------------------------------------------
# mmseg's window padding
# ---------------------------------------------------------------------------------------------------------
def test_window_padding_geometry():
  """ADE20K's 512 px crops in Swin-T (patch 4, window 7): grids 128, 64, 32, 16 pad to 133, 70, 35, 21."""
  for grid, padded in ((128, 133), (64, 70), (32, 35), (16, 21)):
    spec = stack_lib.WindowSpec.for_stage((grid, grid), 7, pad=True)
    assert (spec.padded, spec.window, spec.shift) == ((padded, padded), 7, 3)
  with pytest.raises(ValueError, match="not a multiple of window size 7"):
    stack_lib.WindowSpec.for_stage((128, 128), 7)
  assert stack_lib.WindowSpec.for_stage((56, 56), 7, pad=True).pad == (0, 0)


def mmseg_window_attention(x, qkv_w, qkv_b, proj_w, proj_b, table, heads, w, shift):
  """mmseg's ShiftWindowMSA, window by window and pixel pair by pixel pair: pad bottom / right with zeros,
  roll by -shift, regions of the padded grid from its slices (0:-w, -w:-s, -s:), attention per window with
  the relative-position bias and -100 across regions, roll back, crop. x: (H, W, C) normalised tokens."""
  h0, w0, c = x.shape
  hp, wp = -(-h0 // w) * w, -(-w0 // w) * w
  g = np.zeros((hp, wp, c), np.float64)
  g[:h0, :w0] = x
  region = lambda i, n: 0 if i < n - w else (1 if i < n - shift else 2)
  if shift:
    g = np.roll(g, (-shift, -shift), (0, 1))
  out = np.zeros_like(g)
  d = c // heads
  for wy, wx in itertools.product(range(hp // w), range(wp // w)):
    cells = [(wy * w + a, wx * w + b) for a in range(w) for b in range(w)]
    t = np.stack([g[i, j] for i, j in cells])
    q, k, v = np.split(t @ qkv_w + qkv_b, 3, axis=-1)
    o = np.zeros((len(cells), c))
    for hd in range(heads):
      sl = slice(hd * d, (hd + 1) * d)
      logits = q[:, sl] @ k[:, sl].T * d**-0.5
      for p, r in itertools.product(range(len(cells)), repeat=2):
        (pi, pj), (ri, rj) = cells[p], cells[r]
        logits[p, r] += table[(pi - ri + w - 1) * (2 * w - 1) + (pj - rj + w - 1), hd]
        if shift and (region(pi, hp), region(pj, wp)) != (region(ri, hp), region(rj, wp)):
          logits[p, r] -= 100.0
      a = np.exp(logits - logits.max(-1, keepdims=True))
      o[:, sl] = (a / a.sum(-1, keepdims=True)) @ v[:, sl]
    for (i, j), row in zip(cells, o @ proj_w + proj_b):
      out[i, j] = row
  if shift:
    out = np.roll(out, (shift, shift), (0, 1))
  return out[:h0, :w0]


@pytest.mark.parametrize("shifted", [0, 1])
def test_padded_window_attention_matches_mmseg_reference(shifted):
  """A 6 x 7 grid with windows of 4 (padded to 8 x 8, shift 2), two heads."""
  rng = np.random.default_rng(0)
  h, w, c, heads, win = 6, 7, 8, 2, 4
  x = rng.standard_normal((h, w, c))
  p = dict(
      qkv_w=rng.standard_normal((c, 3 * c)) * 0.5,
      qkv_b=rng.standard_normal(3 * c) * 0.5,
      proj_w=rng.standard_normal((c, c)) * 0.5,
      proj_b=rng.standard_normal(c) * 0.5,
      table=rng.standard_normal(((2 * win - 1) ** 2, heads)),
  )
  want = mmseg_window_attention(x, **p, heads=heads, w=win, shift=2 * shifted)
  spec = stack_lib.WindowSpec.for_stage((h, w), win, pad=True)
  assert spec.padded == (8, 8) and spec.shift == 2
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  core = {
      "qkv": {"kernel": f32(p["qkv_w"]), "bias": f32(p["qkv_b"])},
      "proj": {"kernel": f32(p["proj_w"]), "bias": f32(p["proj_b"])},
      "rel_pos": f32(p["table"]),
  }
  got = stack_lib.window_attention(f32(x.reshape(1, h * w, c)), core, heads, spec, shifted, jnp.float32)
  assert np.abs(want).max() > 0.5
  np.testing.assert_allclose(np.asarray(got).reshape(h, w, c), want, rtol=0, atol=2e-5)


def test_feature_backbone_pads_where_the_classifier_refuses():
  """The micro Swin at 40 px: stage grids 20, 10, 5 for window 4 (10 and 5 pad to 12 and 8)."""
  backbone = registry.create_model(MICRO, {"img_size": 40}, out_indices=(0, 1, 2))
  params = random_params(backbone.abstract_params())
  maps = jax.jit(backbone.apply)({"params": params}, np.zeros((1, 40, 40, 1), np.float32))
  assert [m.shape for m in maps] == [(1, 32, 20, 20), (1, 64, 10, 10), (1, 128, 5, 5)]
  with pytest.raises(ValueError, match=r"\(10, 10\) is not a multiple of window size 4"):
    registry.create_model(MICRO, {"img_size": 40}).abstract_params()


# ---------------------------------------------------------------------------------------------------------
# The paper's recipe and initialisation
# ---------------------------------------------------------------------------------------------------------
def test_paper_recipe_and_poly_schedule():
  """mmseg's upernet_swin: AdamW 6e-5, weight decay 0.01, poly (power 1) after 1,500 warmup iterations
  starting at 1e-6 x lr; 512 px crops, batch 16; the paper's 40k steps; every stage grown."""
  c = config_file("upernet_swin_tiny_2x.py")
  assert (c.pipeline, c.steps, c.batch_size, c.data.crop_size, c.data.name) == (
      "segment",
      40_000,
      16,
      512,
      "tfds:scene_parse150",
  )
  assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.schedule) == ("adamw", 6e-5, 0.01, "poly")
  assert (c.expansion.kind, c.expansion.mapping, c.expansion.adjust_scope, c.head.aux_weight) == (
      "scalenet",
      "stack",
      "all",
      0.4,
  )
  lr = optim.make_lr_schedule({**c.optim.to_dict(), "total_steps": 40_000})
  # poly(s) = 6e-5 (1 - s / 40000); warmup factor 1 - (1 - s / 1500)(1 - 1e-6)
  for step, want in ((0, 6e-11), (750, 6e-5 * (1 - 750 / 40000) * (0.5 + 0.5e-6)), (1500, 5.775e-5), (40_000, 0.0)):
    assert float(lr(step)) == pytest.approx(want, rel=1e-5, abs=1e-15)
  _, grown, spec = segmenter.build(segmenter.resolve(c))
  assert spec.subset == (0, 1, 2, 3) and grown.backbone.depths == (4, 4, 12, 4)


def test_backbone_from_an_mmseg_checkpoint(tmp_path):
  """`init_from` with `backbone.*` keys: the backbone loads strictly, the heads only when `init_skip`
  names them."""
  from safetensors.numpy import save_file

  config = config_file("upernet_swin_tiny_2x.py")
  config.model.name, config.model.in_chans, config.data.crop_size = MICRO, 3, 64
  plain = segmenter.build(segmenter.resolve(config))[0]
  want = random_params(plain.backbone.abstract_params())
  sd = {**dense.backbone_to_mmseg(want, plain.backbone), "decode_head.conv_seg.bias": np.zeros(150, np.float32)}
  config.init_from = str(tmp_path / "upernet.safetensors")
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, config.init_from)
  got = segmenter.load_backbone(config, plain.backbone)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  config.init_skip = "auxiliary_head."
  with pytest.raises(CheckpointError, match="unexpected key in checkpoint: 'decode_head.conv_seg.bias'"):
    segmenter.load_backbone(config, plain.backbone)


# ---------------------------------------------------------------------------------------------------------
# End to end through the entry point
# ---------------------------------------------------------------------------------------------------------
# Trainable parameters of the micro config, by hand: adapters 10 r C per block (r = 16, 4 blocks per stage,
# C = 32 / 64 / 128): 143,360; the blocks' norm1 / norm2 4 C: 3,584; patch norm 64, merge norms 2 x 4 C:
# 768, output norms 2 C: 448 (backbone 148,224). UPerHead (16 channels, 150 classes; a ConvModule is
# k^2 C_in 16 + 32): PPM 4 x (128 x 16 + 32) = 8,320, bottleneck 9 x 192 x 16 + 32 = 27,680, laterals and
# FPN convs 544 + 2,336 + 1,056 + 2,336 = 6,272, fpn_bottleneck 9 x 48 x 16 + 32 = 6,944, conv_seg 2,550
# (51,766); FCN on stage 3 (128 channels): 9 x 128 x 8 + 16 + 8 x 150 + 150 = 10,582. Sum 210,572.
MICRO_TRAINABLE = 210_572
BUFFERS = (".running_mean", ".running_var", ".num_batches_tracked", ".relative_position_index")


@pytest.mark.e2e
def test_config_end_to_end_on_the_tfds_mock(timm, torch, tmp_path):
  """Train 2 steps from a timm micro Swin (grown 2x, every stage), resume-free eval, export and summary; the
  exported mmseg state dict loads strictly into the plain segmentor of the grown depth (its adapters
  apart), and holds as many scalars as the summary's per-instance count."""
  spec = tfds_mock.Spec(str(tmp_path / "tfds"), train=8, validation=3, dataset="scene_parse150")
  tfds_mock.write_metadata(spec)
  ckpt = timm_checkpoint(timm, torch, tmp_path / "timm", MICRO, in_chans=3)
  wd = tmp_path / "run"
  run = ["--config", CONFIG, "--workdir", str(wd), f"--config.init_from={ckpt}", *SMALL, "--config.steps=2"]
  run += ["--config.batch_size=2", "--config.eval_batch_size=2", "--config.log_every=1", "--config.xla_opt_level=0"]
  invocations = [run, [*run, "--mode=eval"], [*run, "--mode=export"], [*run, "--mode=summary"]]
  codes, outs, errs = run_paper_session(spec, invocations, tmp_path / "session.json")
  assert codes == [0, 0, 0, 0], "\n".join(e[-3000:] for e in errs)

  lines = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines if "loss" in l] == [1, 2] and all(
      np.isfinite(l["loss"]) for l in lines if "loss" in l
  )
  ev = json.loads(outs[1].strip().splitlines()[-1])
  assert ev["eval_examples"] == 3 and 0.0 <= ev["miou"] <= 1.0 and len(ev["iou"]) == 150
  assert ev["trainable_params"] == MICRO_TRAINABLE
  summary = json.loads(outs[3].strip().splitlines()[-1])
  assert summary["trainable_params"] == MICRO_TRAINABLE and summary["depths"] == [4, 4, 4]

  from safetensors.numpy import load_file

  exported = load_file(str(wd / "export" / "model.safetensors"))
  assert (wd / "export" / "params" / "_METADATA").exists()
  scalars = sum(v.size for k, v in exported.items() if not k.endswith(BUFFERS))
  assert scalars == summary["params"]
  adapters = {k for k in exported if ".adjust." in k}
  assert len(adapters) == 4 * 12  # fc1 / fc2 A and B of each of the 12 block instances
  config = config_file("upernet_swin_tiny_2x.py")
  config.model.name, config.model.in_chans, config.data.crop_size = MICRO, 3, 64
  config.head.channels, config.head.aux_channels, config.expansion.kind = 16, 8, ""
  plain = segmenter.build(segmenter.resolve(config))[0]
  deep = plain.clone(backbone=plain.backbone.with_plain_depths((4, 4, 4)))  # the grown depth, unshared
  variables = dense.load_segmentor({k: v for k, v in exported.items() if k not in adapters}, deep)
  assert np.abs(variables["params"]["decode_head"]["cls"]["conv_seg"]["kernel"]).max() > 0


# ---------------------------------------------------------------------------------------------------------
# Fashion-MNIST canvases (data.name = "fashion_mnist_canvas") and the small study (configs/seg_fmnist.py)
# ---------------------------------------------------------------------------------------------------------
def test_canvas_compose_by_hand():
  """Threshold 16 on a 4 x 4 canvas: A (class 2) at (0, 0), then B (class 7) at (1, 0) over it, then a
  one-pixel C (class 0) at (3, 3). A's 16 at (1, 0) is foreground but B's 100 covers it; A's 15 and B's 5 at
  (1, 1) are below the threshold: background, pixel 0."""
  a = np.array([[20, 0], [16, 15]], np.uint8)
  b = np.array([[100, 5], [0, 200]], np.uint8)
  c = np.array([[255]], np.uint8)
  image, label = seg_data.compose(4, [(a, 2, 0, 0), (b, 7, 1, 0), (c, 0, 3, 3)], threshold=16)
  assert image.shape == (4, 4, 1) and image.dtype == np.uint8 and label.dtype == np.uint8
  np.testing.assert_array_equal(image[..., 0], [[20, 0, 0, 0], [100, 0, 0, 0], [0, 200, 0, 0], [0, 0, 0, 255]])
  np.testing.assert_array_equal(label, [[3, 0, 0, 0], [8, 0, 0, 0], [0, 8, 0, 0], [0, 0, 0, 1]])


def canvas_sources():
  root = fashion_mnist_dir()
  return (seg_data.FashionMnistCanvasSource("train", root=root), seg_data.FashionMnistCanvasSource("test", root=root))


def test_canvas_source_is_deterministic_and_its_labels_follow_the_pixels():
  """Two openings give the same canvases; labels > 0 exactly where the pixel is >= 16 and the image is 0
  elsewhere; the top item's foreground pixels are its own, labelled with its class + 1; 2-4 items inside
  the canvas."""
  from scalenet_jax.data import sources

  train, test = canvas_sources()
  assert (len(train), len(test), train.num_classes, train.image_shape) == (59_000, 2_000, 11, (64, 64, 1))
  again = canvas_sources()[1]
  items = sources.fashion_mnist("test")
  for src, i in ((test, 0), (test, 1999), (train, 7), (train, 58_999)):
    ex = src[i]
    if src is test:
      other = again[i]
      np.testing.assert_array_equal(ex["image"], other["image"])
      np.testing.assert_array_equal(ex["label"], other["label"])
    image, label = ex["image"][..., 0], ex["label"]
    np.testing.assert_array_equal(label > 0, image >= seg_data.CANVAS_THRESHOLD)
    assert not image[label == 0].any() and label.max() <= 10
    layout = src.layout(i)
    assert 2 <= len(layout) <= 4 and all(0 <= t <= 36 and 0 <= l <= 36 for _, t, l in layout)
    k, t, l = layout[-1]
    if src is test:  # the top item against the raw Fashion-MNIST test image
      raw, cls = items[k]["image"][..., 0], items[k]["label"]
      fg = raw >= seg_data.CANVAS_THRESHOLD
      np.testing.assert_array_equal(image[t : t + 28, l : l + 28][fg], raw[fg])
      assert (label[t : t + 28, l : l + 28][fg] == cls + 1).all()
  assert not np.array_equal(test[0]["label"], test[1]["label"])


def test_canvas_classes_and_disjoint_splits():
  """Every class (background and the 10 items) occurs in the first 100 evaluation canvases; the training
  canvases' items are `train_minus_minival` images (none of the mini-val split), the evaluation canvases'
  test images, each at most once over the 2,000 canvases."""
  from scalenet_jax.data import sources

  train, test = canvas_sources()
  seen = np.zeros(11, bool)
  for i in range(100):
    seen[np.unique(test[i]["label"])] = True
  assert seen.all()
  assert train.origin[0] == "train" and test.origin[0] == "test"
  minival = sources.get_source("fashion_mnist", "minival", root=None)
  used_train = {int(train.origin[1][k]) for i in range(0, 59_000, 29) for k, _, _ in train.layout(i)}
  assert not used_train & set(minival.indices.tolist())
  used_test = [k for i in range(2_000) for k, _, _ in test.layout(i)]
  assert len(used_test) == len(set(used_test)) > 4_000


def test_canvas_loader_and_config():
  """The config's recipe leaves a canvas as it is (no rescale; the crop is the canvas), normalised with the
  Fashion-MNIST mean / std; the plan's two arms at equal budgets, every stage grown, `miou` the metric."""
  c = config_file("seg_fmnist.py", "run=scalenet,seed=1")
  _, test = canvas_sources()
  loader = seg_data.SegmentationLoader(test, seg_data.SegmentationRecipe.from_config(c.data), train=False)
  b = loader(np.arange(3))
  assert b["image"].shape == (3, 64, 64, 1) and b["label"].shape == (3, 64, 64)
  np.testing.assert_array_equal(b["label"][2], test[2]["label"])
  np.testing.assert_allclose(b["image"][2], (test[2]["image"] / 255 - 0.286) / 0.353, atol=1e-5)
  assert loader.blank(2)["image"].shape == (2, 64, 64, 1)
  train = seg_data.SegmentationLoader(test, seg_data.SegmentationRecipe.from_config(c.data), train=True)
  got = train(np.arange(3), seed=0, epoch=0)["label"]
  for lab, ex in zip(got, (test[i] for i in range(3))):  # as it is or flipped
    assert np.array_equal(lab, ex["label"]) or np.array_equal(lab, ex["label"][:, ::-1])
  plain = config_file("seg_fmnist.py", "run=plain")
  assert (c.seed, c.expansion.kind, c.expansion.rank, plain.expansion.kind, c.model.num_classes) == (
      1,
      "scalenet",
      3,
      "",
      11,
  )
  assert c.steps == plain.steps and c.batch_size == plain.batch_size and c.init_from.endswith("_fmnist.safetensors")
  _, grown, spec = segmenter.build(segmenter.resolve(c))
  assert spec.subset == (0, 1, 2) and grown.backbone.depths == (4, 4, 4)
  plan = config_module("seg_fmnist.py").study()
  assert plan["metric"] == "miou" and [r["name"] for r in plan["runs"]] == [
      f"{a}_s{s}" for s in range(3) for a in ("plain", "scalenet")
  ]
  assert [(x["a"], x["b"]) for x in plan["claims"]] == [("scalenet", "plain")]
  assert not any("release" in r for r in plan["runs"])


# The plan of configs/seg_fmnist.py at a few steps: seeds 0 and 1, 16 evaluation canvases, files in tmp.
SEG_SMALL = """
from scalenet_jax import config_lib, paths

real = config_lib.load_config_module(paths.REPO_ROOT / "configs" / "seg_fmnist.py")
TMP = "@TMP@"

def get_config(arg):
  small = {"batch_size": 4, "eval_batch_size": 8, "log_every": 1, "ckpt_every": 0, "eval_every": 2}
  small.update({"data.canvas.eval_examples": 16, "optim.warmup_steps": 1, "xla_opt_level": 0})
  return config_lib.override(real.get_config(arg), small)

def study(arg=""):
  plan = real.study()
  shrink = lambda run: dict(run, arg=run["arg"] + ",steps=4")
  runs = [shrink(r) for r in plan["runs"] if r["seed"] < 2]
  make_run = lambda arm, seed: shrink(plan["make_run"](arm, seed))
  return dict(plan, runs=runs, make_run=make_run, max_seeds=2, record=TMP + "/seg.json", report=TMP + "/seg.md")
"""


@pytest.mark.e2e
def test_seg_study_plan_runs_end_to_end(tmp_path):
  """configs/seg_fmnist.py's plan through the study runner at 4 steps, seeds 0 and 1: every run recorded
  with its mIoU and curve, the report's claims row filled in."""
  from scalenet_jax import study

  fashion_mnist_dir()
  cfg = tmp_path / "seg_small.py"
  cfg.write_text(SEG_SMALL.replace("@TMP@", str(tmp_path)))
  s = study.run_study(f"{cfg}:study", str(tmp_path / "wd"))
  rec = json.loads((tmp_path / "seg.json").read_text())
  assert list(rec["runs"]) == ["plain_s0", "scalenet_s0", "plain_s1", "scalenet_s1"] and s.pending() == []
  for name, r in rec["runs"].items():
    assert 0.0 <= r["miou"] <= 1.0 and r["steps"] == 4 and r["images"] == 16, name
    assert [p[0] for p in r["curve"]] == [2, 4] and r["curve"][-1][1] == r["miou"], name
  assert rec["runs"]["scalenet_s0"]["depths"] == [4, 4, 4] and rec["runs"]["plain_s0"]["depths"] == [2, 2, 2]
  assert rec["runs"]["plain_s0"]["trainable_params"] == rec["runs"]["plain_s0"]["params"]
  report = (tmp_path / "seg.md").read_text()
  assert "4 of 4 runs finished" in report and "Paired (same-seed) differences of miou" in report
  row = study.claim_rows(s.plan, rec)[0]
  assert row["seeds"] == 2 and row["verdict"] != "pending"
  assert "| segmentation | ScaleNet 2x beats the plain backbone | 2 |" in report
