"""The transformer block stack shared by every model in this package.

A stack of L' transformer blocks is described by a `StackLayout`:

* `num_core` *core* layers own the big weights (qkv, proj, fc1, fc2 and, for window
  attention, the relative-position-bias table). They live **once**, stacked along a leading
  axis of size `num_core` under the `core` param collection.
* `mapping[l]` says which core layer block `l` runs. A plain (unexpanded) model is the
  identity mapping; ScaleNet's interpolate/stack expansions are other mappings. Weight sharing
  is therefore structural: every block that maps to core layer `c` gathers the same arrays,
  and the gradient of `core[c]` is the sum over those blocks (the transpose of a gather).
* Every block owns its two LayerNorms and its adjustment module (`adjust[l]`: `none`,
  `adapter` or `lora`). Consecutive blocks with the same adjustment kind form a *segment*
  (`seg0`, `seg1` ...), each one `nn.scan` over its blocks, so compile time does not
  grow with depth and per-block params are stacked along a leading axis.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ADJUST_KINDS = ("none", "adapter", "lora")
Dtype = Any


@dataclasses.dataclass(frozen=True)
class StackLayout:
  """Which core layer and which adjustment each block of a stack uses (validated on construction).

  Attributes:
    num_core: core layers of the stack (the pretrained depth L).
    mapping: per block (L' entries), the core layer it runs.
    adjust: per block, its adjustment kind (`ADJUST_KINDS`).

  Raises:
    ValueError: `num_core` < 1, `mapping` and `adjust` of different lengths, a mapping index out of range
      or an unknown adjustment.
  """

  num_core: int
  mapping: tuple[int, ...]
  adjust: tuple[str, ...]

  def __post_init__(self):
    if self.num_core < 1:
      raise ValueError(f"StackLayout needs num_core >= 1, got {self.num_core}")
    if len(self.mapping) != len(self.adjust):
      raise ValueError(f"StackLayout mapping has {len(self.mapping)} entries but adjust has {len(self.adjust)}")
    bad = [m for m in self.mapping if not 0 <= m < self.num_core]
    if bad:
      raise ValueError(f"StackLayout mapping index {bad[0]} out of range [0, {self.num_core})")
    for a in self.adjust:
      if a not in ADJUST_KINDS:
        raise ValueError(f"unknown adjustment {a!r}; choose one of {ADJUST_KINDS}")

  @classmethod
  def identity(cls, depth: int) -> "StackLayout":
    """The plain layout of `depth` blocks: block l runs core l, no adjustment."""
    return cls(depth, tuple(range(depth)), ("none",) * depth)

  @property
  def depth(self) -> int:
    """Blocks of the stack (L')."""
    return len(self.mapping)

  def segments(self) -> list[tuple[int, int, str]]:
    """Maximal runs of blocks with equal adjustment kind, as (start, stop, kind)."""
    out, start = [], 0
    for kind, group in itertools.groupby(self.adjust):
      n = len(list(group))
      out.append((start, start + n, kind))
      start += n
    return out

  def locate(self, layer: int) -> tuple[int, int]:
    """(segment index, position inside the segment) of block `layer`."""
    for i, (start, stop, _) in enumerate(self.segments()):
      if start <= layer < stop:
        return i, layer - start
    raise IndexError(f"layer {layer} out of range for a stack of depth {self.depth}")


def trunc_normal(std=0.02):
  """Truncated-normal initializer with standard deviation `std` (timm's default for linears)."""
  return nn.initializers.truncated_normal(std)


def patch_embed(images, cfg, dtype):
  """Input check, then the patchify conv (timm's `patch_embed.proj`). Call inside a compact method.

  Args:
    images: (B, img_size, img_size, in_chans) float.
    cfg: the image config (`img_size`, `in_chans`, `patch_size`, `embed_dim`).
    dtype: compute dtype.

  Returns:
    (B, img_size / p, img_size / p, embed_dim) patch embeddings.

  Raises:
    ValueError: images of another shape.
  """
  if images.shape[1:] != (cfg.img_size, cfg.img_size, cfg.in_chans):
    raise ValueError(
        f"expected images of shape (B, {cfg.img_size}, {cfg.img_size}, {cfg.in_chans})," f" got {images.shape}"
    )
  return PatchEmbed(cfg.patch_size, cfg.embed_dim, dtype, name="patch_embed")(images)


class PatchEmbed(nn.Module):
  """A p×p, stride-p conv with nn.Conv's params (HWIO kernel, bias; same init), computed as a matmul
  on non-overlapping patches. Why: XLA's CPU backend runs this conv's weight gradient ~2.8x slower than
  the equivalent dot (DeiT-S at 224 px: 554 vs 198 ms at batch 64).

  Attributes:
    patch: p, the patch size (height and width must be multiples of it).
    dim: output channels.
    dtype: compute dtype.

  `__call__(images)`: (B, H, W, C) -> (B, H / p, W / p, dim).
  """

  patch: int
  dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    b, h, w, c = images.shape
    p = self.patch
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.dim))
    bias = self.param("bias", nn.initializers.zeros, (self.dim,))
    patches = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, h // p, w // p, p * p * c)
    return linear(patches, {"kernel": kernel.reshape(p * p * c, self.dim), "bias": bias}, self.dtype)


class StackedDense(nn.Module):
  """`n` independent Linear layers, kernels stacked as (n, d_in, d_out).

  Attributes:
    n: number of layers.
    d_in: input features.
    d_out: output features.
    use_bias: whether they have biases (stacked as (n, d_out)).

  `__call__()` takes no input and returns the weights `{"kernel", "bias"}` (bias None without biases).
  """

  n: int
  d_in: int
  d_out: int
  use_bias: bool = True

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", trunc_normal(), (self.n, self.d_in, self.d_out))
    bias = self.param("bias", nn.initializers.zeros, (self.n, self.d_out)) if self.use_bias else None
    return {"kernel": kernel, "bias": bias}


class CoreStack(nn.Module):
  """The shared (possibly frozen) weights of `n` transformer layers, stacked once.

  Attributes:
    n: core layers.
    dim: model width C.
    hidden: MLP width.
    num_heads: attention heads (the width of the relative-position-bias table).
    rel_pos_size: (2w-1)^2 entries of the Swin relative-position-bias table, 0 = none.
    qkv_bias: whether the qkv linear has a bias.

  `__call__()` takes no input and returns `{"qkv", "proj", "fc1", "fc2"}` (each `StackedDense` weights
  with a leading axis of n) and, with a table, `"rel_pos"` (n, rel_pos_size, num_heads).
  """

  n: int
  dim: int
  hidden: int
  num_heads: int
  rel_pos_size: int = 0  # (2w-1)^2 entries of the Swin relative-position-bias table, 0 = none
  qkv_bias: bool = True

  @nn.compact
  def __call__(self):
    core = {
        "qkv": StackedDense(self.n, self.dim, 3 * self.dim, self.qkv_bias, name="qkv")(),
        "proj": StackedDense(self.n, self.dim, self.dim, name="proj")(),
        "fc1": StackedDense(self.n, self.dim, self.hidden, name="fc1")(),
        "fc2": StackedDense(self.n, self.hidden, self.dim, name="fc2")(),
    }
    if self.rel_pos_size:
      core["rel_pos"] = self.param("rel_pos_bias_table", trunc_normal(), (self.n, self.rel_pos_size, self.num_heads))
    return core


class Adjust(nn.Module):
  """Per-block adjustment added to a shared linear: parallel adapter or LoRA.

  adapter: y = θx + B σ(A x)   (A: d_in→r, B: r→d_out, no biases, B zero-init)
  lora:    y = (θ + B A) x      (A Gaussian, B zero-init). θ is shared, so LoRA cannot be merged.
  Both start as the identity adjustment, so an expanded model starts from the pretrained function.

  Attributes:
    kind: `'adapter'` or `'lora'`.
    d_out: output features of the adjusted linear.
    rank: r (> 0).
    act: σ of the adapter (`'gelu'` or `'relu'`).
    dtype: compute dtype.

  `__call__(x)`: x (..., d_in), the adjusted linear's input -> the term added to its output (..., d_out);
  raises ValueError on rank <= 0 or an unknown kind.
  """

  kind: str
  d_out: int
  rank: int
  act: str = "gelu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.rank <= 0:
      raise ValueError(f"adjustment rank must be > 0, got {self.rank}")
    # 2-D for the same reason as `linear`: on a (B, N, C) input XLA:CPU builds A's weight gradient from a
    # transposed copy of x (for the fc2 adapter of DeiT-S, a (1536, B*N) copy per block: 20% of the step).
    lead, x = x.shape[:-1], x.reshape(-1, x.shape[-1])
    if self.kind == "adapter":
      h = nn.Dense(self.rank, use_bias=False, dtype=self.dtype, name="A")(x)
      h = activation(self.act)(h)
    elif self.kind == "lora":
      h = nn.Dense(
          self.rank, use_bias=False, dtype=self.dtype, name="A", kernel_init=nn.initializers.normal(1.0 / self.rank)
      )(x)
    else:
      raise ValueError(f"unknown adjustment {self.kind!r}")
    y = nn.Dense(self.d_out, use_bias=False, dtype=self.dtype, name="B", kernel_init=nn.initializers.zeros)(h)
    return y.reshape(*lead, self.d_out)


@jax.custom_vjp
def gelu(x):
  """Exact (erf) GELU in PyTorch's form, x/2 · (1 + erf(x/√2)).

  Not `nn.gelu(approximate=False)`: that goes through erfc, which XLA's CPU backend runs slowly; this
  form made the micro ViT's MLP forward+backward ~1.9x faster on CPU (values agree to ~1e-6).
  Custom VJP: the backward keeps only `x` and recomputes Φ(x) and φ(x); autodiff of the formula keeps
  three (B, N, 4C) intermediates per block (x/2, exp(-x²/2) from erf's derivative, 1 + erf)."""
  return 0.5 * x * (1 + jax.lax.erf(x * np.asarray(1 / np.sqrt(2), x.dtype)))


def _gelu_fwd(x):
  return gelu(x), x


def _gelu_bwd(x, g):
  cdf = 0.5 * (1 + jax.lax.erf(x * np.asarray(1 / np.sqrt(2), x.dtype)))
  pdf = jnp.exp(-0.5 * x * x) * np.asarray(1 / np.sqrt(2 * np.pi), x.dtype)
  return (g * (cdf + x * pdf),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


@jax.custom_vjp
def softmax(x):
  """`jax.nn.softmax(x, axis=-1)` (same values); the backward keeps only the probabilities.

  Autodiff of jax's formula keeps exp(x - max), the probabilities and 1/sum² (two (B, H, N, N)
  arrays per block)."""
  return jax.nn.softmax(x, axis=-1)


def _softmax_fwd(x):
  p = softmax(x)
  return p, p


def _softmax_bwd(p, g):
  return (p * (g - jnp.sum(g * p, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x, scale, bias, epsilon):
  """flax's `nn.LayerNorm` forward over the last axis, op for op (fast variance, float32 statistics)."""
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean, mean2 = xf.mean(-1, keepdims=True), jax.lax.square(xf).mean(-1, keepdims=True)
  var = jnp.maximum(0.0, mean2 - jax.lax.square(mean))
  return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias


def _layer_norm_fwd(x, scale, bias, epsilon):
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean, mean2 = xf.mean(-1, keepdims=True), jax.lax.square(xf).mean(-1, keepdims=True)
  var = jnp.maximum(0.0, mean2 - jax.lax.square(mean))
  rstd = jax.lax.rsqrt(var + epsilon)
  y = (x - mean) * (rstd * scale) + bias
  return y, ((xf - mean) * rstd, rstd, scale, jnp.zeros((), x.dtype))  # the scalar carries x's dtype


def _layer_norm_bwd(epsilon, res, g):
  del epsilon
  xhat, rstd, scale, x_like = res
  g = g.astype(xhat.dtype)
  dxhat = g * scale
  dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
  lead = tuple(range(g.ndim - 1))
  return dx.astype(x_like.dtype), jnp.sum(g * xhat, lead).astype(scale.dtype), jnp.sum(g, lead).astype(scale.dtype)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
  """`nn.LayerNorm` over the last axis: same params ('scale' ones, 'bias' zeros, float32), same forward
  values; the backward keeps x̂ and 1/σ only (autodiff of flax's keeps x², x - mean and the output: three
  (B, N, C) arrays per norm).

  Attributes:
    epsilon: added to the variance.
    dtype: output dtype.

  `__call__(x)`: normalised x, same shape.
  """

  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    return _layer_norm(x, scale, bias, self.epsilon).astype(self.dtype)


def activation(name: str):
  """The activation function `name` (`'gelu'`: the exact `gelu` above, `'relu'`); ValueError otherwise."""
  acts = {"gelu": gelu, "relu": nn.relu}
  if name not in acts:
    raise ValueError(f"unknown activation {name!r}; choose one of {sorted(acts)}")
  return acts[name]


def linear(x, w, dtype):
  """`x @ kernel + bias` over the last axis, computed as one 2-D matmul.

  Why 2-D: for a (B, N, C) input, XLA's CPU backend builds the weight gradient (a contraction over both B
  and N) from an explicit transposed copy of the output gradient; flattened to (B*N, C) it contracts the
  rows in place (DeiT-S: one fewer 3152 x 1536 copy per linear and step). Same products, same values.

  Args:
    x: (..., d_in).
    w: `{"kernel": (d_in, d_out), "bias": (d_out,) or None}`.
    dtype: compute dtype (x and the weights are cast to it).

  Returns:
    (..., d_out).
  """
  lead = x.shape[:-1]
  y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(dtype), w["kernel"].astype(dtype))
  if w["bias"] is not None:
    y = y + w["bias"].astype(dtype)
  return y.reshape(*lead, y.shape[-1])


def drop_path(x, rate, rng, train: bool):
  """Stochastic depth with a traced per-block rate (so it can be scanned).

  Args:
    x: (B, ...) the residual branch's output.
    rate: drop probability (a traced scalar).
    rng: PRNG key; None = no drop path.
    train: drop only in training.

  Returns:
    x with each example's branch zeroed with probability `rate` and the others scaled by 1 / (1 - rate).
  """
  if not train or rng is None:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Attention flavours. Both take tokens and return tokens; window attention needs the spatial grid.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WindowSpec:
  """Static geometry of Swin window attention for one stage (timm's conventions, mmseg's padding).

  Attributes:
    resolution: (H, W) token grid of the stage.
    window: window size (the whole grid when it fits in one window).
    shift: shift used by odd blocks; 0 when the stage fits in one window.
    pad: (bottom, right) zero rows / columns that make the grid a multiple of the window (mmseg's Swin:
      the normalised tokens are padded before the cyclic shift, windows and the shift mask cover the
      padded grid, and the output is cropped back); (0, 0) for timm's geometry.
  """

  resolution: tuple[int, int]
  window: int
  shift: int  # shift used by odd blocks; 0 when the stage fits in one window
  pad: tuple[int, int] = (0, 0)

  @classmethod
  def for_stage(cls, resolution, window, pad: bool = False):
    """The spec of a stage at `resolution` with windows of `window`.

    Args:
      resolution: (H, W) token grid.
      window: the configured window size.
      pad: pad a grid that is not a multiple of the window (mmseg's dense backbones at e.g. 512 px);
        False raises instead, as timm's classifiers do.

    Raises:
      ValueError: the grid does not tile and `pad` is False.
    """
    # timm: when the stage fits in one window, the window shrinks to it and nothing shifts.
    if min(resolution) <= window:
      return cls(tuple(resolution), min(resolution), 0)
    extra = tuple(-r % window for r in resolution)
    if any(extra) and not pad:
      raise ValueError(f"stage resolution {tuple(resolution)} is not a multiple of window size {window}")
    return cls(tuple(resolution), window, window // 2, extra)

  @property
  def padded(self) -> tuple[int, int]:
    """The (H, W) grid the windows tile: `resolution` plus `pad`."""
    return (self.resolution[0] + self.pad[0], self.resolution[1] + self.pad[1])

  @property
  def area(self):
    """Tokens per window."""
    return self.window * self.window

  def rel_pos_index(self) -> np.ndarray:
    """(area, area) indices into the (2w-1)^2 relative-position-bias table."""
    w = self.window
    coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (w - 1)
    return rel[..., 0] * (2 * w - 1) + rel[..., 1]

  def shift_mask(self) -> np.ndarray:
    """(num_windows, area, area) additive mask of shifted-window attention (-100 across regions), over the
    padded grid (mmseg's: padding forms regions like any other cells)."""
    h, w = self.padded
    img = np.zeros((h, w), np.float32)
    cuts = (slice(0, -self.window), slice(-self.window, -self.shift), slice(-self.shift, None))
    for cnt, (hs, ws) in enumerate(itertools.product(cuts, cuts)):
      img[hs, ws] = cnt
    win = window_partition(img[None, :, :, None], self.window).reshape(-1, self.area)
    diff = win[:, None, :] - win[:, :, None]
    return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


def window_partition(x, w):
  """(B, H, W, C) -> (B * H/w * W/w, w*w, C) non-overlapping windows, image-major."""
  b, h, wd, c = x.shape
  x = x.reshape(b, h // w, w, wd // w, w, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, w * w, c)


def window_reverse(x, w, b, h, wd):
  """Inverse of `window_partition`: windows (B * nW, w*w, C) -> (b, h, wd, C)."""
  c = x.shape[-1]
  x = x.reshape(b, h // w, wd // w, w, w, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, wd, c)


def multihead_attention(x, core, num_heads, dtype, bias=None, adjust=None):
  """Multi-head self-attention with the core weights of one block.

  Layout (why): q, k, v are split from the fused qkv with `jnp.split`, whose transpose is one concatenate
  (indexing a (B, N, 3, H, D) view transposes to three zero-padded full-size buffers that are then summed),
  and are moved once to head-major (B, H, N, D), so both attention products are plain batched matmuls.

  Args:
    x: (B, N, C) tokens.
    core: the block's core weights (`qkv`, `proj`).
    num_heads: heads H (C / H per head).
    dtype: compute dtype (softmax in float32).
    bias: added to the logits: (1 | W, heads, N, N), W = windows per image (the B windows are
      image-major, so the logits are viewed as (B / W, W, heads, N, N) rather than tiling `bias`).
    adjust: `adjust(name, x, d_out)` LoRA term added to qkv and proj, or None.

  Returns:
    (B, N, C).
  """
  b, n, c = x.shape
  d = c // num_heads
  qkv = linear(x, core["qkv"], dtype)
  if adjust is not None:
    qkv = qkv + adjust("qkv", x, 3 * c)
  q, k, v = (t.reshape(b, n, num_heads, d).transpose(0, 2, 1, 3) for t in jnp.split(qkv, 3, axis=-1))
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) * d**-0.5
  if bias is not None:
    if bias.shape[0] > 1:
      w = bias.shape[0]
      logits = (logits.reshape(b // w, w, *logits.shape[1:]) + bias).reshape(logits.shape)
    else:
      logits = logits + bias
  probs = softmax(logits.astype(jnp.float32)).astype(dtype)
  out = jnp.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3).reshape(b, n, c)
  y = linear(out, core["proj"], dtype)
  if adjust is not None:
    y = y + adjust("proj", out, c)
  return y


def window_attention(x, core, num_heads, spec: WindowSpec, shifted, dtype, adjust=None):
  """Swin (shifted) window attention on a (B, H*W, C) token grid.

  Args:
    x: (B, H*W, C) tokens of the stage's grid.
    core: the block's core weights (`qkv`, `proj`, `rel_pos`).
    num_heads: heads.
    spec: the stage's window geometry.
    shifted: a traced 0/1 flag so one scanned block serves both W-MSA and SW-MSA blocks.
    dtype: compute dtype.
    adjust: LoRA term of `multihead_attention`, or None.

  Returns:
    (B, H*W, C).
  """
  b, _, c = x.shape
  h, w = spec.resolution
  grid = x.reshape(b, h, w, c)
  if any(spec.pad):  # zero tokens, which attend and are attended to like any other (mmseg's Swin)
    grid = jnp.pad(grid, ((0, 0), (0, spec.pad[0]), (0, spec.pad[1]), (0, 0)))
  hp, wp = spec.padded
  s = spec.shift
  if s:
    grid = jnp.where(shifted, jnp.roll(grid, (-s, -s), axis=(1, 2)), grid)
  windows = window_partition(grid, spec.window)  # (B*nW, area, C)
  table = core["rel_pos"]  # ((2w-1)^2, heads)
  bias = table[spec.rel_pos_index().reshape(-1)].reshape(spec.area, spec.area, num_heads)
  bias = jnp.transpose(bias, (2, 0, 1))[None]  # (1, heads, area, area)
  if s:
    mask = jnp.asarray(spec.shift_mask()) * shifted  # (nW, area, area)
    bias = (bias + mask[:, None]).astype(jnp.float32)  # (nW, heads, area, area), broadcast over images
  out = multihead_attention(windows, core, num_heads, dtype, bias=bias, adjust=adjust)
  grid = window_reverse(out, spec.window, b, hp, wp)
  if s:
    grid = jnp.where(shifted, jnp.roll(grid, (s, s), axis=(1, 2)), grid)
  return grid[:, :h, :w].reshape(b, h * w, c)


class Block(nn.Module):
  """One pre-norm transformer block running gathered core weights plus its own LNs/adjustments.

  Called by `scan_blocks` (one `nn.scan` per segment), not directly.

  Attributes:
    dim: width C.
    num_heads: attention heads.
    hidden: MLP width.
    adjust: this block's adjustment kind (`ADJUST_KINDS`): adapters on fc1 / fc2, LoRA on all four linears.
    rank: adjustment rank.
    adapter_act: adapter activation.
    norm_eps: LayerNorm epsilon.
    window: Swin window geometry, None = global attention.
    dtype: compute dtype.
    train: training mode (drop path).
    drop_path: False: every rate of the segment is 0, so no masks are drawn (same values).

  `__call__(x, step_inputs, shared)`: x (B, N, C); `step_inputs` = (core index, own core weights or None,
  drop-path rate, shifted flag) of this block; `shared` = (the broadcast core stack or None,). Returns
  `(x, None)`; sows the output as `intermediates/block_out`.
  """

  dim: int
  num_heads: int
  hidden: int
  adjust: str = "none"
  rank: int = 16
  adapter_act: str = "gelu"
  norm_eps: float = 1e-6
  window: Optional[WindowSpec] = None
  dtype: Dtype = jnp.float32
  train: bool = False
  drop_path: bool = True  # False: every rate of the segment is 0, so no masks are drawn (same values)

  def _mlp_out(self, h, fc2):
    """fc2(gelu(h)) plus the fc2 adjustment, if any."""
    h = gelu(h)
    out = linear(h, fc2, self.dtype)
    if self.adjust != "none":
      out = out + self._adjust("fc2", h, self.dim)
    return out

  def _adjust(self, name, x, d_out):
    return Adjust(self.adjust, d_out, self.rank, self.adapter_act, self.dtype, name=f"{self.adjust}_{name}")(x)

  @nn.compact
  def __call__(self, x, step_inputs, shared):
    idx, own_core, dpr, shifted = step_inputs
    core = block_core(idx, own_core, shared[0])
    # Adapters sit on fc1/fc2 only; LoRA (ablation) on all four linears.
    attn_adjust = self._adjust if self.adjust == "lora" else None
    mlp_adjust = self._adjust if self.adjust != "none" else None
    active = self.train and self.drop_path
    rngs = jax.random.split(self.make_rng("dropout"), 2) if active else (None, None)

    y = LayerNorm(self.norm_eps, dtype=self.dtype, name="norm1")(x)
    if self.window is None:
      y = multihead_attention(y, core, self.num_heads, self.dtype, adjust=attn_adjust)
    else:
      y = window_attention(y, core, self.num_heads, self.window, shifted, self.dtype, adjust=attn_adjust)
    x = x + drop_path(y, dpr, rngs[0], self.train)

    y = LayerNorm(self.norm_eps, dtype=self.dtype, name="norm2")(x)
    h = linear(y, core["fc1"], self.dtype)
    if mlp_adjust is not None:
      h = h + mlp_adjust("fc1", y, self.hidden)
    # Rematerialised: the backward recomputes gelu(h) (elementwise) rather than keeping the (B, N, 4C)
    # activation that fc2's weight gradient and the fc2 adapter need; only `h` is kept.
    out = nn.remat(Block._mlp_out)(self, h, core["fc2"])
    x = x + drop_path(out, dpr, rngs[1], self.train)
    # For analysis (apply(..., mutable=['intermediates'])); a no-op unless that collection is mutable.
    self.sow("intermediates", "block_out", x)
    return x, None


# Segments of at most this many blocks are unrolled by default. A scanned segment stacks every residual the
# backward needs into (length, ...) loop buffers: zero-filled, written by dynamic-update-slice and copied out
# again by dynamic-slice, which cost DeiT-S ~12% and the micro ViT ~30% of a CPU train step. Unrolled,
# compile time grows with depth (~2x at 12 blocks), so deeper segments (ScaleNet-expanded stacks, 24-layer
# baselines) stay scanned and compile in about constant time.
UNROLL_MAX_BLOCKS = 12


def unroll_segment(length: int, unroll: Optional[bool] = None) -> bool:
  """Whether a segment of `length` blocks is unrolled (`unroll` None = the `UNROLL_MAX_BLOCKS` rule)."""
  return length <= UNROLL_MAX_BLOCKS if unroll is None else bool(unroll)


def segment_core(core, seg_mapping: np.ndarray, unroll: bool):
  """(per-block core weights scanned as xs, or None; the broadcast core stack, or None) of one segment.

  Why not always gather `core[idx]` inside the scan body: unrolled, the transpose of each block's gather
  is a zero-padded full-size copy of the whole core stack, summed over blocks (O(depth^2) memory traffic;
  DeiT-S: ~1 GB per step). Scanned as xs instead, the per-block weight gradients are concatenated and
  reach the core through one slice (contiguous mapping) or one scatter-add (`jnp.take`). A rolled scan
  with a non-contiguous mapping (ScaleNet's shared layers) keeps the in-loop gather: its gradient
  accumulates in place in the loop carry, and no (depth, ...) copy of the weights is materialised.

  Args:
    core: the stack's core weights (leaves with a leading axis of `num_core`).
    seg_mapping: int (n,) core index of each block of the segment.
    unroll: whether the segment is unrolled.

  Returns:
    `(own, broadcast)`: exactly one is set. `own`: the blocks' weights (leading axis n; a slice for a
    contiguous mapping, else a `jnp.take`); `broadcast`: `core` itself, gathered per block in the loop.
  """
  lo, n = int(seg_mapping[0]), len(seg_mapping)
  if np.array_equal(seg_mapping, np.arange(lo, lo + n)):
    return jax.tree.map(lambda a: a[lo : lo + n], core), None
  if unroll:
    return jax.tree.map(lambda a: jnp.take(a, seg_mapping, axis=0), core), None
  return None, core


class BlockStack(nn.Module):
  """`layout.depth` blocks over `layout.num_core` shared core layers (see module doc).

  Attributes:
    layout: the stack's layout.
    dim: width C.
    num_heads: attention heads.
    mlp_ratio: MLP width / C.
    drop_path: drop-path rate per block; empty = no drop path.
    rank: adjustment rank.
    adapter_act: adapter activation.
    norm_eps: LayerNorm epsilon.
    window: Swin window geometry, None = global attention.
    qkv_bias: whether qkv has a bias.
    dtype: compute dtype.
    remat: rematerialise each block.
    unroll: as `StackedModel.unroll`.

  `__call__(x, train=False)`: x (B, N, C) -> (B, N, C); raises ValueError when `drop_path` has not one
  rate per block.
  """

  layout: StackLayout
  dim: int
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: Sequence[float] = ()  # per block; empty = no drop path
  rank: int = 16
  adapter_act: str = "gelu"
  norm_eps: float = 1e-6
  window: Optional[WindowSpec] = None
  qkv_bias: bool = True
  dtype: Dtype = jnp.float32
  remat: bool = False
  # None: `unroll_segment` decides per segment; True / False: unroll / scan every segment.
  unroll: Optional[bool] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    layout = self.layout
    hidden = int(self.dim * self.mlp_ratio)
    rel = (2 * self.window.window - 1) ** 2 if self.window is not None else 0
    core = CoreStack(layout.num_core, self.dim, hidden, self.num_heads, rel, self.qkv_bias, name="core")()
    dpr = np.asarray(self.drop_path if len(self.drop_path) else [0.0] * layout.depth, np.float32)
    if len(dpr) != layout.depth:
      raise ValueError(f"drop_path has {len(dpr)} rates for a stack of depth {layout.depth}")
    # Block i of a stage shifts its windows when i is odd (position in the *scaled* stage).
    shifted = np.arange(layout.depth) % 2
    x, _ = scan_blocks(
        Block,
        layout,
        x,
        core,
        (dpr, shifted),
        remat=self.remat,
        unroll=self.unroll,
        dim=self.dim,
        num_heads=self.num_heads,
        hidden=hidden,
        rank=self.rank,
        adapter_act=self.adapter_act,
        norm_eps=self.norm_eps,
        window=self.window,
        dtype=self.dtype,
        train=train,
        # One flag per stack: a segment whose rates are all 0 draws masks that keep everything (same values).
        drop_path=bool(np.any(dpr > 0)),
    )
    return x


# ----------------------------------------------------------------------------------------------
# The scan over a stack's segments, shared by every block type (ViT/Swin `Block`, the decoder's).
# ----------------------------------------------------------------------------------------------
def take_core(core_stack, idx):
  """Core layer `idx` (traced) of the stacked core weights: gathered inside the scan, so the shared
  tensors are held once and the gradient of a core layer sums over the blocks that use it."""
  return jax.tree.map(lambda a: jnp.asarray(a)[idx], core_stack)


def block_core(idx, own_core, core_stack):
  """A block's core weights: its own scanned slice when `segment_core` gave one, else gathered."""
  return own_core if own_core is not None else take_core(core_stack, idx)


def scan_blocks(block, layout: StackLayout, x, core, per_block=(), shared=(), *, remat=False, unroll=None, **fields):
  """Runs the `layout.depth` blocks of one stack; call it inside the stack module's compact method.

  Each segment of `layout` is one `nn.scan` named `seg{i}` whose params (and sown intermediates)
  are stacked along a leading block axis. Block `l` is `block(adjust=kind, **fields)` called as
  `(x, (mapping[l], own_core, *[a[l] for a in per_block]), (core_or_None, *shared)) -> (x, y)`;
  it takes its weights with `block_core(mapping[l], own_core, core_or_None)` (`segment_core` decides
  which of the two is set). `per_block` arrays have a leading axis of `layout.depth`; `shared` is
  broadcast. `unroll`: None = `unroll_segment`'s rule per segment, True / False = every segment.

  Args:
    block: the block module class (`Block`, `llama.DecoderBlock`).
    layout: the stack's layout (segments, mapping).
    x: the stack's input activations (the scan carry).
    core: the stack's core weights.
    per_block: arrays with a leading axis of `layout.depth`, sliced per block.
    shared: values broadcast to every block.
    remat: rematerialise each block.
    unroll: as above.
    **fields: the block's module fields (besides `adjust`).

  Returns:
    The final `x` and the blocks' `y` stacked over all blocks (None when blocks return None).
  """
  mapping = np.asarray(layout.mapping, np.int32)
  cls = nn.remat(block) if remat else block
  ys = []
  for i, (start, stop, kind) in enumerate(layout.segments()):
    seg_unroll = unroll_segment(stop - start, unroll)
    own_core, broadcast_core = segment_core(core, mapping[start:stop], seg_unroll)
    # 'intermediates': 0 stacks the sown block outputs of a segment along a leading layer axis.
    scanned = nn.scan(
        cls,
        variable_axes={"params": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast),
        length=stop - start,
        unroll=(stop - start) if seg_unroll else 1,
    )
    steps = (mapping[start:stop], own_core) + tuple(a[start:stop] for a in per_block)
    x, y = scanned(adjust=kind, name=f"seg{i}", **fields)(x, steps, (broadcast_core,) + tuple(shared))
    ys.append(y)
  return x, jax.tree.map(lambda *a: jnp.concatenate(a), *ys)
