"""Linear CKA (centered kernel alignment) between layer representations, in numpy (float64).

For representations X (n x p) and Y (n x q) of the same n examples, with Gram matrices K = X Xᵀ and
L = Y Yᵀ:

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

* biased HSIC:   tr(K H L H) / (n-1)²  with H = I - 11ᵀ/n (the classic estimator, Kornblith et al. 2019);
* unbiased HSIC (Song et al. 2012): K̃, L̃ = K, L with zeroed diagonals,
    [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n-1)(n-2)) - 2/(n-2) 1ᵀK̃L̃1] / (n(n-3)).

The biased estimator is inflated when p, q are large relative to n (two independent random representations
with p >> n score close to 1), which is exactly the regime of flattened transformer tokens on one small
batch; the unbiased one is ~0 in expectation for independent representations. `CKAAccumulator` implements
minibatch CKA (Nguyen et al. 2021): HSIC terms are averaged over batches, then combined, so memory is one
batch of features per layer however many examples are used.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def _as_matrix(x) -> np.ndarray:
  """(n, ...) features -> (n, p) float64 (tokens and channels flattened together)."""
  x = np.asarray(x, np.float64)
  if x.ndim < 2:
    raise ValueError(f"CKA features need shape (n, ...) with at least 2 dims, got {x.shape}")
  return x.reshape(x.shape[0], -1)


def gram_linear(x) -> np.ndarray:
  """Linear-kernel Gram matrix X Xᵀ of (n, ...) features."""
  x = _as_matrix(x)
  return x @ x.T


def _check_n(n: int, unbiased: bool):
  if n < (4 if unbiased else 2):
    raise ValueError(
        f"CKA needs at least {4 if unbiased else 2} examples " f"({'unbiased' if unbiased else 'biased'} HSIC), got {n}"
    )


def _hsic_terms(grams: Sequence[np.ndarray], unbiased: bool):
  """Per-Gram pieces from which every pairwise HSIC is a dot product (see `hsic_matrix`)."""
  n = grams[0].shape[0]
  _check_n(n, unbiased)
  if not unbiased:
    h = np.eye(n) - 1.0 / n
    return np.stack([(h @ k @ h).ravel() for k in grams]), None, None
  tilde = [k - np.diag(np.diag(k)) for k in grams]
  flat = np.stack([k.ravel() for k in tilde])
  rows = np.stack([k.sum(1) for k in tilde])  # K̃1
  return flat, rows, rows.sum(1)  # 1ᵀK̃1


def _check_grams(grams_a, grams_b):
  if not grams_a or not grams_b:
    raise ValueError("HSIC needs at least one Gram matrix on each side")
  n = grams_a[0].shape[0]
  if any(k.shape != (n, n) for k in list(grams_a) + list(grams_b)):
    raise ValueError("all Gram matrices must be (n, n) over the same n examples")
  return n


def _combine(n, unbiased, a, b, pairwise: bool):
  """HSIC from the terms of two Gram sets: all pairs (matrix) or matching pairs (vector)."""
  dot = (lambda u, v: u @ v.T) if pairwise else (lambda u, v: (u * v).sum(1))
  fa, ra, sa = a
  fb, rb, sb = b
  if not unbiased:
    return dot(fa, fb) / (n - 1) ** 2  # tr(HKH · HLH) = <HKH, HLH>_F  (H is idempotent)
  outer = np.outer(sa, sb) if pairwise else sa * sb
  return (dot(fa, fb) + outer / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * dot(ra, rb)) / (n * (n - 3))


def hsic_matrix(grams_a: Sequence[np.ndarray], grams_b: Sequence[np.ndarray], unbiased: bool = False):
  """HSIC of every pair (Gram of A's layer i, Gram of B's layer j), shape (len(a), len(b))."""
  n = _check_grams(grams_a, grams_b)
  return _combine(n, unbiased, _hsic_terms(grams_a, unbiased), _hsic_terms(grams_b, unbiased), True)


def hsic_self(grams: Sequence[np.ndarray], unbiased: bool = False) -> np.ndarray:
  """HSIC(K, K) of every Gram matrix (the diagonal of `hsic_matrix(grams, grams)`, cheaply)."""
  n = _check_grams(grams, grams)
  terms = _hsic_terms(grams, unbiased)
  return _combine(n, unbiased, terms, terms, False)


def _normalise(cross, self_a, self_b):
  denom = np.sqrt(np.clip(np.outer(self_a, self_b), 0.0, None))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), np.nan)


def linear_cka(x, y, unbiased: bool = False) -> float:
  """Linear CKA of two representations of the same n examples: (n, ...) arrays, any feature dims."""
  x, y = _as_matrix(x), _as_matrix(y)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"CKA needs the same examples on both sides, got {x.shape[0]} vs {y.shape[0]}")
  return float(CKAAccumulator(unbiased).update([x], [y]).result()[0, 0])


def linear_cka_features(x, y) -> float:
  """Biased linear CKA in feature space, ‖YcᵀXc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F): a cross-check of the Gram form."""
  x, y = _as_matrix(x), _as_matrix(y)
  x, y = x - x.mean(0), y - y.mean(0)
  return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


class CKAAccumulator:
  """Minibatch linear CKA between every layer of representation set A and every layer of set B.

      acc = CKAAccumulator(unbiased=True)
      for batch in batches:
        acc.update(layers_a(batch), layers_b(batch))   # lists of (n, ...) arrays, one per layer
      matrix = acc.result()                            # (len(A), len(B))

  Pass `feats_b=None` to compare A with itself.
  """

  def __init__(self, unbiased: bool = True):
    self.unbiased = unbiased
    self.cross: Optional[np.ndarray] = None
    self.self_a: Optional[np.ndarray] = None
    self.self_b: Optional[np.ndarray] = None
    self.batches = 0

  def update(self, feats_a: Sequence, feats_b: Optional[Sequence] = None) -> "CKAAccumulator":
    grams_a = [gram_linear(f) for f in feats_a]
    grams_b = grams_a if feats_b is None else [gram_linear(f) for f in feats_b]
    cross = hsic_matrix(grams_a, grams_b, self.unbiased)
    self_a = hsic_self(grams_a, self.unbiased)
    self_b = self_a if feats_b is None else hsic_self(grams_b, self.unbiased)
    if self.cross is not None and self.cross.shape != cross.shape:
      raise ValueError(f"layer counts changed between batches: {self.cross.shape} vs {cross.shape}")
    if self.cross is None:
      self.cross, self.self_a, self.self_b = cross, self_a, self_b
    else:
      self.cross, self.self_a, self.self_b = self.cross + cross, self.self_a + self_a, self.self_b + self_b
    self.batches += 1
    return self

  def result(self) -> np.ndarray:
    if self.cross is None:
      raise ValueError("CKAAccumulator.result() called before any update()")
    return _normalise(self.cross, self.self_a, self.self_b)
