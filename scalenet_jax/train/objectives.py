"""What the one train / eval step optimises and reports: the objective of a task.

An `Objective` names the batch entry the model reads (`inputs`), turns logits into the training loss
(plus train metrics), and turns logits into per-batch *sums* for evaluation, which the loop adds over
batches on the host and finishes into metrics. Sums, not means, so that padded eval batches and
unequal token counts weigh every real example / token once.

* `Classification` (images, the NAS supernet): softmax cross-entropy with optional label smoothing;
  eval top-1 / top-5 / loss over the real examples (`mask` (B,)).
* `NextToken` (decoder LMs): the token-weighted next-token cross-entropy over the positions where
  `mask` (B, T) is true (padding and prompt tokens carry no loss); eval loss = total NLL / tokens,
  perplexity = exp(eval loss), token accuracy.
* `Segmentation` (a segmentor's per-pixel logits, one dict entry per head): mmseg's per-pixel
  cross-entropy with `IGNORE_INDEX` (255) pixels carrying no loss, the auxiliary heads' losses weighted;
  eval per-class intersection / union counts over the eval set -> mIoU (mmseg's `mean_iou`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

import jax
import jax.numpy as jnp
import optax

from scalenet_jax.errors import DataError
from scalenet_jax.models import upernet


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy.

  Smoothing is applied to soft targets too: for mixup targets lam*y1 + (1-lam)*y2 this equals mixing the
  smoothed one-hots (timm's convention), so a mixup batch_transform should not smooth by itself.

  Args:
    logits: (B, K) float.
    labels: int (B,) class indices or soft targets (B, K).
    label_smoothing: mass spread uniformly over the K classes.

  Returns:
    (B,) float32 losses.
  """
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes) if labels.ndim == logits.ndim - 1 else labels
  targets = targets.astype(jnp.float32)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  return optax.softmax_cross_entropy(logits, targets)


@dataclasses.dataclass(frozen=True)
class Classification:
  """One label per example (`labels` int (B,) or soft targets (B, K)); inputs `images`.

  Attributes:
    label_smoothing: of the training loss (evaluation is unsmoothed).
    inputs: the batch entry the model reads.
  """

  label_smoothing: float = 0.0
  inputs: str = "images"

  def loss(self, logits, batch):
    """Mean (smoothed) cross-entropy of `logits` (B, K) and `{"accuracy": ...}` (argmax vs the labels or
    the soft targets' argmax)."""
    labels = batch["labels"]
    loss = cross_entropy(logits, labels, self.label_smoothing).mean()
    hard = labels if labels.ndim == 1 else jnp.argmax(labels, -1)  # soft targets: their argmax
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == hard)}

  def batch_spec(self, inputs: jax.ShapeDtypeStruct, eval: bool = False) -> dict:  # pylint: disable=redefined-builtin
    """The abstract step batch the data pipeline yields for model inputs `inputs` (B, ...): int labels
    (B,), and for evaluation the float mask of real examples."""
    n = inputs.shape[0]
    batch = {self.inputs: inputs, "labels": jax.ShapeDtypeStruct((n,), jnp.int32)}
    if eval:
      batch["mask"] = jax.ShapeDtypeStruct((n,), jnp.float32)
    return batch

  def eval_sums(self, logits, batch):
    """Sums over the real examples (`mask` (B,), default all) of an eval batch with int labels (B,):
    `correct1`, `correct5` (ties count for the label), `loss_sum` and `count`."""
    labels = batch["labels"]
    mask = batch.get("mask", jnp.ones(labels.shape, jnp.float32)).astype(jnp.float32)
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    rank = jnp.sum(logits > label_logit, axis=-1)  # how many classes score strictly higher
    return {
        "correct1": jnp.sum((rank < 1) * mask),
        "correct5": jnp.sum((rank < 5) * mask),
        "loss_sum": jnp.sum(cross_entropy(logits, labels) * mask),
        "count": jnp.sum(mask),
    }

  def metrics(self, sums) -> dict:
    """`top1`, `top5`, `eval_loss` and `eval_examples` of the summed `eval_sums`."""
    n = float(sums["count"])
    return {
        "top1": float(sums["correct1"]) / n,
        "top5": float(sums["correct5"]) / n,
        "eval_loss": float(sums["loss_sum"]) / n,
        "eval_examples": int(n),
    }

  def describe(self, m) -> str:
    """One-line summary of `metrics`."""
    return f"top1 {m['top1']:.4f} top5 {m['top5']:.4f}"


@dataclasses.dataclass(frozen=True)
class NextToken:
  """Next-token prediction: `tokens` (B, T) in, `labels` (B, T) the next tokens, `mask` (B, T) bool where
  a label counts (all when absent).

  Attributes:
    label_smoothing: of the training loss: mixes in the mean NLL over the vocabulary.
    inputs: the batch entry the model reads.
  """

  label_smoothing: float = 0.0
  inputs: str = "tokens"

  def _nll(self, logits, batch, smoothing):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, batch["labels"][..., None].astype(jnp.int32), axis=-1)[..., 0]
    if smoothing:
      nll = (1.0 - smoothing) * nll - smoothing * logp.mean(-1)
    labels = batch["labels"]
    mask = batch.get("mask", jnp.ones(labels.shape, bool)).astype(jnp.float32)
    return nll, mask

  def batch_spec(self, inputs: jax.ShapeDtypeStruct, eval: bool = False) -> dict:  # pylint: disable=redefined-builtin
    """The abstract step batch `data.text` yields for token inputs (B, T): labels and the bool loss mask,
    in training and evaluation alike."""
    del eval
    like = lambda dtype: jax.ShapeDtypeStruct(inputs.shape, dtype)
    return {self.inputs: inputs, "labels": like(jnp.int32), "mask": like(jnp.bool_)}

  def loss(self, logits, batch):
    """Token-weighted mean NLL of `logits` (B, T, V) over the masked positions, and `{"accuracy", "tokens"}`."""
    nll, mask = self._nll(logits, batch, self.label_smoothing)
    tokens = mask.sum()
    # Token-weighted: every counted token weighs the same, however the mask spreads them over rows.
    loss = (nll * mask).sum() / jnp.maximum(tokens, 1.0)
    correct = (jnp.argmax(logits, -1) == batch["labels"]) * mask
    return loss, {"accuracy": correct.sum() / jnp.maximum(tokens, 1.0), "tokens": tokens}

  def eval_sums(self, logits, batch):
    """Sums over the masked positions: `loss_sum`, `correct`, `count` (tokens) and `examples` (rows with a
    counted token)."""
    nll, mask = self._nll(logits, batch, 0.0)
    return {
        "loss_sum": jnp.sum(nll * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["labels"]) * mask),
        "count": jnp.sum(mask),
        "examples": jnp.sum(jnp.any(mask > 0, axis=-1)),
    }

  def metrics(self, sums) -> dict:
    """`eval_loss` (NLL per token), `perplexity`, `token_accuracy`, `eval_tokens`, `eval_examples`; raises
    `DataError` when no token counted."""
    n = float(sums["count"])
    if n == 0:
      raise DataError("the evaluation data has no token with a loss (are all responses cut off by seq_len?)")
    loss = float(sums["loss_sum"]) / n
    return {
        "eval_loss": loss,
        "perplexity": math.exp(loss),
        "token_accuracy": float(sums["correct"]) / n,
        "eval_tokens": int(n),
        "eval_examples": int(sums["examples"]),
    }

  def describe(self, m) -> str:
    """One-line summary of `metrics`."""
    return f"perplexity {m['perplexity']:.3f} (loss {m['eval_loss']:.4f} over {m['eval_tokens']} tokens)"


IGNORE_INDEX = 255  # mmseg's label of pixels that carry no loss and do not count in the metrics


def resize_logits(logits, hw):
  """NCHW logits -> NHWC at the labels' (H, W): bilinear, `align_corners=False` (mmseg resizes the heads'
  stride-4 / stride-16 outputs to the labels before the loss and the argmax)."""
  return upernet.resize(jnp.transpose(logits, (0, 2, 3, 1)), hw)


def pixel_cross_entropy(logits, labels):
  """(per-pixel cross-entropy (B, H, W), 0 on ignored pixels; valid mask) of NHWC `logits` and int
  `labels` (B, H, W) with `IGNORE_INDEX`."""
  valid = labels != IGNORE_INDEX
  safe = jnp.where(valid, labels, 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
  return jnp.where(valid, ce, 0.0), valid


def confusion_counts(pred, labels, num_classes: int, weight=None) -> dict:
  """Per-class pixel counts of a prediction against labels with `IGNORE_INDEX`: `intersect` (pred = label
  = k), `pred_area`, `label_area` (each (K,), over the valid pixels times `weight`, broadcastable)."""
  valid = (labels != IGNORE_INDEX).astype(jnp.float32)
  if weight is not None:
    valid = valid * weight
  safe = jnp.where(labels == IGNORE_INDEX, 0, labels).reshape(-1)
  pred, valid = pred.reshape(-1), valid.reshape(-1)
  count = lambda idx, w: jnp.bincount(idx, weights=w, length=num_classes)
  return {
      "intersect": count(safe, valid * (pred == safe)),
      "pred_area": count(pred, valid),
      "label_area": count(safe, valid),
  }


def iou_metrics(sums) -> dict:
  """mmseg's `mean_iou` of summed `confusion_counts`: per-class IoU = intersect / union (NaN for a class in
  neither the labels nor the predictions, left out of the mean), `miou`, `macc` (per-class accuracy over
  the classes present in the labels) and `aacc` (all valid pixels)."""
  inter, pred, label = (np.asarray(sums[k], np.float64) for k in ("intersect", "pred_area", "label_area"))
  union = pred + label - inter
  with np.errstate(invalid="ignore", divide="ignore"):
    iou, acc = inter / union, inter / label
  if not label.sum():
    raise DataError("the evaluation data has no labelled pixel (all are the ignore index 255)")
  return {
      "miou": float(np.nanmean(iou)),
      "macc": float(np.nanmean(acc)),
      "aacc": float(inter.sum() / label.sum()),
      "iou": [None if np.isnan(v) else float(v) for v in iou],
  }


@dataclasses.dataclass(frozen=True)
class Segmentation:
  """Per-pixel classification by a segmentor: `images` (B, H, W, C) in, `labels` int (B, H, W) with
  `IGNORE_INDEX`, logits `{head: (B, K, h, w)}` (`models.upernet.Segmentor`).

  Attributes:
    num_classes: K.
    aux_weight: weight of every head other than `decode_head` in the loss (mmseg's UPerNet: 0.4 on the
      auxiliary FCN head).
    inputs: the batch entry the model reads.
  """

  num_classes: int
  aux_weight: float = 0.4
  inputs: str = "images"

  def loss(self, logits, batch):
    """Sum over heads of weight x mean cross-entropy over *all* pixels, ignored ones counting 0 (mmseg's
    `CrossEntropyLoss` with `avg_non_ignore=False`, the behaviour its Swin configs were trained with), and
    `{"accuracy"}` of the decode head over the valid pixels."""
    labels = batch["labels"]
    total, accuracy = 0.0, None
    for name, out in logits.items():
      resized = resize_logits(out, labels.shape[1:])
      ce, valid = pixel_cross_entropy(resized, labels)
      total = total + (1.0 if name == "decode_head" else self.aux_weight) * ce.mean()
      if name == "decode_head":
        hit = (jnp.argmax(resized, -1) == labels) & valid
        accuracy = hit.sum() / jnp.maximum(valid.sum(), 1)
    return total, {"accuracy": accuracy}

  def batch_spec(self, inputs: jax.ShapeDtypeStruct, eval: bool = False) -> dict:  # pylint: disable=redefined-builtin
    """Per-pixel int labels like the inputs' (B, H, W), and for evaluation the float mask of real examples."""
    n, h, w = inputs.shape[:3]
    batch = {self.inputs: inputs, "labels": jax.ShapeDtypeStruct((n, h, w), jnp.int32)}
    if eval:
      batch["mask"] = jax.ShapeDtypeStruct((n,), jnp.float32)
    return batch

  def eval_sums(self, logits, batch):
    """`confusion_counts` of the decode head's argmax (at the labels' size) over the real examples, the
    summed cross-entropy of their valid pixels (`loss_sum`) and the number of examples (`count`)."""
    labels = batch["labels"]
    mask = batch.get("mask", jnp.ones(labels.shape[:1], jnp.float32)).astype(jnp.float32)
    resized = resize_logits(logits["decode_head"], labels.shape[1:])
    ce, _ = pixel_cross_entropy(resized, labels)
    sums = confusion_counts(jnp.argmax(resized, -1), labels, self.num_classes, mask[:, None, None])
    return {**sums, "loss_sum": jnp.sum(ce * mask[:, None, None]), "count": jnp.sum(mask)}

  def metrics(self, sums) -> dict:
    """`iou_metrics` (mIoU, mAcc, aAcc, per-class IoU), `eval_loss` per valid pixel, `eval_examples`."""
    m = iou_metrics(sums)
    m["eval_loss"] = float(sums["loss_sum"]) / float(np.sum(sums["label_area"]))
    m["eval_examples"] = int(sums["count"])
    return m

  def describe(self, m) -> str:
    """One-line summary of `metrics`."""
    return f"mIoU {m['miou']:.4f} aAcc {m['aacc']:.4f} mAcc {m['macc']:.4f}"
