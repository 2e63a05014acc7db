"""Objectives of the shared step: token-weighted next-token loss under masks, eval sums -> metrics."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from scalenet_jax.train import objectives


def lm_batch(seed=0, b=3, t=5, v=7):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=(b, t, v)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
  mask = jnp.asarray(rng.random((b, t)) < 0.6).at[0].set(True).at[2].set(False)
  return logits, {"labels": labels, "mask": mask}


def log_softmax64(x):
  """Reference log-softmax in float64 (numpy)."""
  x = np.asarray(x, np.float64)
  top = x.max(-1, keepdims=True)
  return x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))


def nll64(logits, labels):
  """Reference per-position negative log-likelihood of `labels` in float64 (numpy)."""
  return -np.take_along_axis(log_softmax64(logits), np.asarray(labels)[..., None], -1)[..., 0]


def test_next_token_loss_is_token_weighted_and_honours_the_mask():
  logits, batch = lm_batch()
  obj = objectives.NextToken()
  loss, m = obj.loss(logits, batch)
  # token-weighted: a row with more counted tokens weighs more (not the mean of per-row means)
  nll, mask = nll64(logits, batch["labels"]), np.asarray(batch["mask"], np.float64)
  assert float(loss) == pytest.approx((nll * mask).sum() / mask.sum(), rel=1e-5)
  assert float(loss) != pytest.approx(np.mean([(n * w).sum() / w.sum() for n, w in zip(nll[:2], mask[:2])]), rel=1e-3)
  # the masked-out row does not count at all, however large its logits
  other = logits.at[2].set(100.0 * logits[2])
  np.testing.assert_allclose(obj.loss(other, batch)[0], loss, rtol=1e-6)
  assert float(m["tokens"]) == float(batch["mask"].sum())
  counted = np.asarray(batch["mask"])
  top = np.argmax(np.asarray(logits), -1) == np.asarray(batch["labels"])
  assert float(m["accuracy"]) == pytest.approx(top[counted].mean())


def test_next_token_eval_sums_add_up_to_perplexity():
  obj = objectives.NextToken()
  parts = [lm_batch(seed) for seed in range(3)]
  sums = None
  for logits, batch in parts:
    s = obj.eval_sums(logits, batch)
    sums = s if sums is None else {k: sums[k] + s[k] for k in s}
  m = obj.metrics(sums)
  total = sum(float(obj.loss(l, b)[0]) * float(b["mask"].sum()) for l, b in parts)
  tokens = sum(float(b["mask"].sum()) for _, b in parts)
  assert m["eval_tokens"] == tokens and m["eval_examples"] == 2 * 3
  assert m["eval_loss"] == pytest.approx(total / tokens, rel=1e-5)
  assert m["perplexity"] == pytest.approx(math.exp(m["eval_loss"]), rel=1e-12)
  assert "perplexity" in obj.describe(m)


def test_next_token_label_smoothing_and_no_mask():
  logits, batch = lm_batch()
  plain = objectives.NextToken().loss(logits, {"labels": batch["labels"]})[0]
  np.testing.assert_allclose(plain, nll64(logits, batch["labels"]).mean(), rtol=1e-5)
  smooth = objectives.NextToken(0.1).loss(logits, {"labels": batch["labels"]})[0]
  uniform = -np.mean(log_softmax64(logits))
  np.testing.assert_allclose(smooth, 0.9 * nll64(logits, batch["labels"]).mean() + 0.1 * uniform, rtol=1e-5)


def test_classification_matches_the_old_eval_sums():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(6, 10)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, 6), jnp.int32)
  mask = jnp.asarray([1, 1, 1, 1, 0, 0], jnp.float32)
  obj = objectives.Classification(0.1)
  m = obj.metrics(obj.eval_sums(logits, {"labels": labels, "mask": mask}))
  top1 = float(np.mean(np.argmax(logits[:4], -1) == labels[:4]))
  assert m["top1"] == pytest.approx(top1) and m["eval_examples"] == 4
  loss, tm = obj.loss(logits, {"labels": labels})
  # smoothing 0.1 over 10 classes: target 0.91 on the label, 0.01 elsewhere (timm / torch convention)
  targets = np.full((6, 10), 0.01)
  targets[np.arange(6), np.asarray(labels)] = 0.91
  np.testing.assert_allclose(loss, -(targets * log_softmax64(logits)).sum(-1).mean(), rtol=1e-5)
  assert float(tm["accuracy"]) == pytest.approx(np.mean(np.argmax(logits, -1) == labels))
  assert m["eval_loss"] == pytest.approx(nll64(logits[:4], labels[:4]).mean(), rel=1e-5)  # eval: no smoothing
