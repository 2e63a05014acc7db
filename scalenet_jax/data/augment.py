"""On-device batch augmentation: Mixup / CutMix with label smoothing (jit-friendly, fixed shapes).

Batch-wise mixing as in the Swin/DeiT recipe: one mixing coefficient per batch, each example mixed with
its mirror in the batch (`x[::-1]`); with both Mixup and CutMix enabled, CutMix is chosen with
probability `switch_prob`. CutMix's coefficient is corrected to the exact pasted area (after clipping
the box at the border), so the soft labels match the pixels. The alphas are Python floats (static);
`switch_prob`, `label_smoothing` and `prob` may be traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
  """One-hot targets with `smoothing` spread uniformly: on = 1 - s + s/K, off = s/K (rows sum to 1)."""
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + smoothing / num_classes


def sample_beta(rng: jax.Array, alpha: float, num_candidates: int = 64) -> jax.Array:
  """One draw from Beta(alpha, alpha) (scalar float32).

  For alpha <= 1 (the Mixup/CutMix range) uses Johnk's exact rejection method with a fixed number of
  candidates instead of `jax.random.beta`'s while-loop gamma sampler, which compiles several times
  slower on CPU. Acceptance is >= 1/2 per candidate, so all 64 failing has probability < 1e-19.
  alpha = 1 is the uniform distribution.
  """
  if alpha == 1.0:
    return jax.random.uniform(rng)
  if alpha > 1.0:
    return jax.random.beta(rng, alpha, alpha)
  ku, kv = jax.random.split(rng)
  log_x = jnp.log(jax.random.uniform(ku, (num_candidates,), minval=1e-30)) / alpha  # log U^(1/a)
  log_y = jnp.log(jax.random.uniform(kv, (num_candidates,), minval=1e-30)) / alpha
  log_sum = jnp.logaddexp(log_x, log_y)
  first = jnp.argmax(log_sum <= 0.0)  # First accepted candidate (X + Y <= 1).
  return jnp.clip(jnp.exp(log_x[first] - log_sum[first]), 0.0, 1.0)


def _cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """Box of area about (1 - lam) * H * W at a uniform centre, clipped. Returns (mask [H, W], area frac)."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = (height * ratio).astype(jnp.int32), (width * ratio).astype(jnp.int32)
  ky, kx = jax.random.split(rng)
  cy, cx = jax.random.randint(ky, (), 0, height), jax.random.randint(kx, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  ys, xs = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  mask = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
  return mask, ((y1 - y0) * (x1 - x0)) / (height * width)


def mixup_cutmix(
    rng: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    num_classes: int,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    switch_prob: float = 0.5,
    label_smoothing: float = 0.1,
    prob: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
  """Mixes a batch `images` [B, H, W, C] with integer `labels` [B].

  Returns (mixed images, soft labels [B, num_classes] summing to 1). With both alphas 0 (or prob 0)
  images are returned unchanged and labels are only smoothed.
  """
  targets = smooth_labels(labels, num_classes, label_smoothing)
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, targets
  k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(rng, 5)
  _, height, width, _ = images.shape
  flipped = images[::-1]
  one = jnp.ones((), jnp.float32)

  lam_mix = sample_beta(k_mix, mixup_alpha) if mixup_alpha > 0 else one
  if cutmix_alpha > 0:
    mask, area = _cutmix_box(k_box, sample_beta(k_cut, cutmix_alpha), height, width)
    lam_cut = 1.0 - area
  else:
    mask, lam_cut = jnp.zeros((height, width), bool), one
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cut = jax.random.uniform(k_switch) < switch_prob
  else:
    use_cut = jnp.asarray(cutmix_alpha > 0)
  apply = jax.random.uniform(k_apply) < prob

  lam = jnp.where(apply, jnp.where(use_cut, lam_cut, lam_mix), 1.0).astype(jnp.float32)
  mixed = (lam_mix * images + (1.0 - lam_mix) * flipped).astype(images.dtype)
  cut = jnp.where(mask[None, :, :, None], flipped, images)
  out = jnp.where(apply, jnp.where(use_cut, cut, mixed), images)
  return out, lam * targets + (1.0 - lam) * targets[::-1]
