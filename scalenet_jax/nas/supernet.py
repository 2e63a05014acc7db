"""Super-supernet (Flax linen) whose paths are selected by arrays, and the stand-alone `PathNet`.

Design in `docs/nas.md` §2: usage, one parameter set per candidate op (weight mixing), channel buffers
and BCNet coupling, the path arrays and buckets, how a path is realised (masks, conditional depth and
kernel compute, batch-statistics BN and recalibration) and `PathNet` / `slice_params`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scalenet_jax.nas.space import (
    Arch,
    LayerArch,
    Scaling,
    SearchSpace,
    apply_scaling,
    largest_alpha,
    left_sides,
    scaled_channels,
    validate_sides,
)

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_dense_init = nn.initializers.variance_scaling(1.0 / 3, "fan_in", "uniform")


def hswish(x):
  return x * jax.nn.relu6(x + 3.0) / 6.0


def hsigmoid(x):
  return jax.nn.relu6(x + 3.0) / 6.0


# ----------------------------------------------------------------------------------------------------
# Building blocks (shared by SuperNet and PathNet so that parameter names match)
# ----------------------------------------------------------------------------------------------------
class BatchNorm(nn.Module):
  """BN over N,H,W with optional output channel mask and per-sample statistic weights.

  The affine parameters are its own `scale`/`bias` unless `affine=(scale, bias)` is given (the mixed
  weights of an op); `window` maps them before use (a path's slice of a BCNet buffer).
  `track_running=True` keeps `batch_stats/{mean,var}` (updated when that collection is mutable, used
  when `use_running_average`)."""

  features: int
  track_running: bool = False
  momentum: float = 0.9
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x, *, affine=None, window=None, use_running_average=False, mask=None, stat_weights=None):
    if affine is None:
      affine = Affine(self.features).make(self)
    scale, bias = affine if window is None else (window(a) for a in affine)
    if self.track_running:
      ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (x.shape[-1],))
      ra_var = self.variable("batch_stats", "var", jnp.ones, (x.shape[-1],))
    if use_running_average:
      if not self.track_running:
        raise ValueError("BatchNorm: use_running_average needs track_running=True")
      stats = ra_mean.value, ra_var.value
    else:
      stats = batch_moments(x, stat_weights)
      if self.track_running and self.is_mutable_collection("batch_stats") and not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * stats[0]
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * stats[1]
    return normalize(x, stats, scale, bias, mask, self.eps)


def batch_moments(x, stat_weights=None):
  """Per-channel mean and variance over N, H, W (over the images with `stat_weights` 1 if given)."""
  if stat_weights is None:
    mean = jnp.mean(x, axis=(0, 1, 2))
    return mean, jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
  w = stat_weights.astype(x.dtype)[:, None, None, None]
  denom = jnp.sum(w) * x.shape[1] * x.shape[2]
  mean = jnp.sum(x * w, axis=(0, 1, 2)) / denom
  return mean, jnp.sum(jnp.square(x - mean) * w, axis=(0, 1, 2)) / denom


def normalize(x, stats, scale, bias, mask=None, eps: float = 1e-5):
  mean, var = stats
  y = (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias
  return y if mask is None else y * mask


@dataclasses.dataclass(frozen=True)
class Affine:
  """BN `scale` (ones) and `bias` (zeros) of `features` channels, declared in a module's scope."""

  features: int

  def make(self, module: nn.Module):
    return (
        module.param("scale", nn.initializers.ones, (self.features,)),
        module.param("bias", nn.initializers.zeros, (self.features,)),
    )


class _AffineParams(nn.Module):
  """A named scope holding one BN's affine parameters (an op's `bn_*`)."""

  features: int

  @nn.compact
  def __call__(self):
    return Affine(self.features).make(self)


def _conv(x, kernel, stride=1, groups=1):
  k = kernel.shape[0]
  if k == 1 and stride == 1 and groups == 1:
    # A 1×1 conv is a matmul; as a dot XLA's CPU backend also runs its weight gradient fast.
    return jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0])
  p = k // 2
  return jax.lax.conv_general_dilated(
      x,
      kernel,
      (stride, stride),
      ((p, p), (p, p)),
      feature_group_count=groups,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


def _taps(k: int):
  ii, jj = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
  return jnp.asarray(ii.ravel(), jnp.int32), jnp.asarray(jj.ravel(), jnp.int32)


def _out_size(n: int, stride: int) -> int:
  return -(-n // stride)


def _phases(xp, stride: int):
  """xp (N, H, W, C) as its stride×stride phases, (s, s, N, ⌈H/s⌉, ⌈W/s⌉, C): xp[:, s·a + u, s·b + v]
  is phase (u, v) at (a, b). Tap (i, j) of a stride-s conv then reads phase (i % s, j % s) at offset
  (i // s, j // s) with unit stride, so only the output positions are computed."""
  if stride == 1:
    return xp  # stride 1 reads xp itself (`_tap`)
  n, h, w, c = xp.shape
  hq, wq = _out_size(h, stride), _out_size(w, stride)
  xq = jnp.pad(xp, ((0, 0), (0, hq * stride - h), (0, wq * stride - w), (0, 0)))
  return xq.reshape(n, hq, stride, wq, stride, c).transpose(2, 4, 0, 1, 3, 5)


def _tap(ph, t, ii, jj, stride: int, shape):
  """The input window that tap t (of `_taps`) multiplies, from `_phases`."""
  i, j = ii[t], jj[t]
  if stride == 1:
    return jax.lax.dynamic_slice(ph, (0, i, j, 0), shape)
  start = (i % stride, j % stride, 0, i // stride, j // stride, 0)
  return jax.lax.dynamic_slice(ph, start, (1, 1, *shape))[0, 0]


def _shift_sum(xp, w, h: int, wd: int, stride: int = 1):
  """Σ_ij xp[:, s·y + i, s·x + j, :] · w[i, j, :] over output positions (y, x) < (h, wd): depthwise
  correlation of a padded input. A `fori_loop` over the k² taps keeps the program small (an unrolled
  loop doubles compile time)."""
  k = w.shape[0]
  ii, jj = _taps(k)
  ph = _phases(xp, stride)
  shape = (xp.shape[0], h, wd, xp.shape[3])

  def body(t, y):
    return y + _tap(ph, t, ii, jj, stride, shape) * w[ii[t], jj[t]]

  return jax.lax.fori_loop(0, k * k, body, jnp.zeros(shape, xp.dtype))


def _tap_grads(xp, g, k: int, stride: int = 1):
  """dw[i, j, c] = Σ_{n,y,x} xp[n, s·y + i, s·x + j, c] · g[n, y, x, c] for every tap (loop over taps)."""
  ii, jj = _taps(k)
  ph = _phases(xp, stride)

  def body(t, dw):
    return dw.at[t].set(jnp.sum(_tap(ph, t, ii, jj, stride, g.shape) * g, axis=(0, 1, 2)))

  dw = jax.lax.fori_loop(0, k * k, body, jnp.zeros((k * k, g.shape[-1]), g.dtype))
  return dw.reshape(k, k, g.shape[-1])


def _pad_same(x, p: int):
  return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise(x, w, stride: int):
  h, wd = (_out_size(n, stride) for n in x.shape[1:3])
  return _shift_sum(_pad_same(x, w.shape[0] // 2), w, h, wd, stride)


def _depthwise_fwd(x, w, stride):
  return _depthwise(x, w, stride), (x, w)


def _depthwise_bwd(stride, res, g):
  x, w = res
  k, (h, wd) = w.shape[0], x.shape[1:3]
  p = k // 2
  # dx: stride-1 correlation with the flipped kernel of g dilated by the stride (zeros between its
  # entries) and padded so that the output has the input's size.
  hi = lambda n, m: n + p - stride * (m - 1) - 1
  cfg = ((0, 0, 0), (p, hi(h, g.shape[1]), stride - 1), (p, hi(wd, g.shape[2]), stride - 1), (0, 0, 0))
  dx = _shift_sum(jax.lax.pad(g, jnp.zeros((), g.dtype), cfg), w[::-1, ::-1], h, wd)
  dw = _tap_grads(_pad_same(x, p), g, k, stride)
  return dx, dw.astype(w.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def _centre(w, k: int):
  """The centred k×k taps of a (K, K, C) kernel (K ≥ k, same parity)."""
  p = (w.shape[0] - k) // 2
  return w[p : p + k, p : p + k] if p else w


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _depthwise_choice(x, w, choice, stride: int, sizes: tuple[int, ...]):
  """`_depthwise` of the centred `sizes[choice]`² taps of w (the zero-padded mixed kernel of a slot):
  a `lax.switch`, so only the chosen size's taps run, forward and backward. The outer taps of w are
  zero, so this is the full-size result exactly; their gradient is dropped (it only reaches the
  padding of the mixed kernel, which the candidate ops never see)."""
  return jax.lax.switch(choice, [functools.partial(_choice_fwd_k, k=k, stride=stride) for k in sizes], x, w)


def _choice_fwd_k(x, w, *, k, stride):
  return _depthwise(x, _centre(w, k), stride)


def _depthwise_choice_fwd(x, w, choice, stride, sizes):
  return _depthwise_choice(x, w, choice, stride, sizes), (x, w, choice)


def _depthwise_choice_bwd(stride, sizes, res, g):
  x, w, choice = res

  def branch(k):
    def grads(x, w, g):
      dx, dw = _depthwise_bwd(stride, (x, _centre(w, k)), g)
      p = (w.shape[0] - k) // 2
      return dx, jnp.pad(dw, ((p, p), (p, p), (0, 0)))

    return grads

  dx, dw = jax.lax.switch(choice, [branch(k) for k in sizes], x, w, g)
  return dx, dw, None


_depthwise_choice.defvjp(_depthwise_choice_fwd, _depthwise_choice_bwd)


def _shift_sum_unrolled(xp, w, h: int, wd: int, stride: int = 1):
  """`_shift_sum` with the k² taps unrolled into one expression, which XLA fuses into a single pass
  over the output reading the taps from cache. Measured on 2 CPU cores (7×7, 96 channels, batch 32,
  16 px): ≈2× faster than the tap loop for one path and ≈5× under `vmap` over 8 paths, where the tap
  loop's P× larger working set no longer fits in cache; the price is a larger program (slower to
  compile), so it is an option for forward-only evaluation, not the training default."""
  k, s = w.shape[0], stride
  return sum(
      xp[:, i : i + s * (h - 1) + 1 : s, j : j + s * (wd - 1) + 1 : s, :] * w[i, j] for i in range(k) for j in range(k)
  )


DEPTHWISE = ("loop", "unrolled")


def depthwise_conv(x, kernel, stride: int = 1, impl: str = "loop", choice=None, sizes=None):
  """Depthwise k×k conv (HWIO kernel with I = 1, symmetric padding k//2) as k² shifted multiply-adds;
  `impl` 'loop' (a tap loop with a hand-written gradient, the default) or 'unrolled' (one fused sum).
  `choice` (traced int) and `sizes`: run only the centred `sizes[choice]`² taps of a zero-padded kernel
  (`lax.switch`; the same result as all k² taps).

  Why not `lax.conv_general_dilated(feature_group_count=C)`: XLA's CPU backend runs grouped
  convolutions on a slow generic path (≈10× slower forward, ≈4× slower gradient at these sizes), and
  the depthwise convs dominated the supernet step. A stride-s conv computes only its output positions
  (the tap loop reads the input's stride phases, `_phases`), not the stride-1 result subsampled."""
  w = kernel[:, :, 0, :]
  if impl not in DEPTHWISE:
    raise ValueError(f"depthwise impl {impl!r} not in {DEPTHWISE}")
  if impl == "loop":
    return _depthwise(x, w, stride) if choice is None else _depthwise_choice(x, w, choice, stride, tuple(sizes))

  def unrolled(x, w):
    h, wd = (_out_size(n, stride) for n in x.shape[1:3])
    return _shift_sum_unrolled(_pad_same(x, w.shape[0] // 2), w, h, wd, stride)

  if choice is None:
    return unrolled(x, w)
  return jax.lax.switch(choice, [lambda x, w, k=k: unrolled(x, _centre(w, k)) for k in sizes], x, w)


# ----------------------------------------------------------------------------------------------------
# One layer slot: candidate ops, weight mixing, BCNet windows
# ----------------------------------------------------------------------------------------------------
# Channel group of each axis of an op's weights (BN entries are (scale, bias) pairs).
_OP_AXES = {
    "expand": ((2, "in"), (3, "hidden")),
    "bn_expand": ((0, "hidden"),),
    "dw": ((3, "hidden"),),
    "bn_dw": ((0, "hidden"),),
    "se_reduce": ((0, "hidden"), (1, "se")),
    "se_reduce_bias": ((0, "se"),),
    "se_expand": ((0, "se"), (1, "hidden")),
    "se_expand_bias": ((0, "hidden"),),
    "project": ((2, "hidden"), (3, "out")),
    "bn_project": ((0, "out"),),
}


def _sizes(la: LayerArch) -> dict[str, int]:
  return {"in": la.c_in, "hidden": la.hidden, "se": la.se, "out": la.c_out}


def window(w, axis: int, size: int, offset=None):
  """`size` entries of `w` along `axis` from `offset` on, wrapping round the buffer: a path's slice.

  `offset=None` is the static left-aligned slice. A right-aligned slice of c channels of a buffer of B
  has offset B − c; its entries past c wrap onto the buffer's start, where they only ever meet masked
  (zero) channels, so they change neither the output nor any gradient."""
  if offset is None:
    return w if w.shape[axis] == size else jax.lax.slice_in_dim(w, 0, size, axis=axis)
  idx = (jnp.arange(size) + offset) % w.shape[axis]
  return jnp.take(w, idx, axis=axis)


def side_offset(side, buffer: int, mask):
  """Window offset of a BCNet side (0 left, 1 right) for the channels `mask` keeps in a buffer."""
  return (side * (buffer - jnp.sum(mask))).astype(jnp.int32)


class IROp(nn.Module):
  """Parameters of one candidate op (kernel `kernel`) of a layer slot, at buffer shapes `buf`;
  `__call__()` returns them as a dict keyed like `_OP_AXES` (BN entries as (scale, bias))."""

  buf: LayerArch
  kernel: int

  @nn.compact
  def __call__(self) -> dict:
    b, k = self.buf, self.kernel
    w = {}
    if b.expand:
      w["expand"] = self.param("expand", _conv_init, (1, 1, b.c_in, b.hidden))
      w["bn_expand"] = _AffineParams(b.hidden, name="bn_expand")()
    w["dw"] = self.param(f"dw{k}", _conv_init, (k, k, 1, b.hidden))
    w["bn_dw"] = _AffineParams(b.hidden, name="bn_dw")()
    w["se_reduce"] = self.param("se_reduce", _conv_init, (b.hidden, b.se))
    w["se_reduce_bias"] = self.param("se_reduce_bias", nn.initializers.zeros, (b.se,))
    w["se_expand"] = self.param("se_expand", _conv_init, (b.se, b.hidden))
    w["se_expand_bias"] = self.param("se_expand_bias", nn.initializers.zeros, (b.hidden,))
    w["project"] = self.param("project", _conv_init, (1, 1, b.hidden, b.c_out))
    w["bn_project"] = _AffineParams(b.c_out, name="bn_project")()
    return w


def mix_ops(ops: Sequence[dict], kernels: Sequence[int], onehot) -> dict:
  """Σ_k onehot_k · W_k for every weight of the candidate ops (depthwise kernels zero-padded, centred,
  to the largest size). With a path's exact one-hot this *is* the chosen op's weights, and the
  gradient reaching W_k is onehot_k times the mixed weight's: exactly zero for the other ops."""
  if len(ops) == 1:
    return ops[0]
  kmax = max(kernels)

  def pad(w, k):
    p = (kmax - k) // 2
    return jnp.pad(w, ((p, p), (p, p), (0, 0), (0, 0)))

  ops = [dict(o, dw=pad(o["dw"], k)) for o, k in zip(ops, kernels)]
  return jax.tree.map(lambda *ws: sum(onehot[i] * w for i, w in enumerate(ws)), *ops)


class IRBlock(nn.Module):
  """Inverted residual + SE in one layer slot. `la`: compute shapes (a bucket's widest path, or a
  PathNet's own); `buf`: parameter shapes; `kernels`: the candidate ops (one in a PathNet);
  `conditional`: see `SuperNet`."""

  la: LayerArch
  buf: LayerArch
  kernels: tuple[int, ...]
  track_running: bool = False
  depthwise: str = "loop"
  conditional: bool = False

  @nn.compact
  def __call__(self, x, *, use_ra=False, stat_weights=None, sel=None):
    """`sel`: the path's choices for this slot (None in a PathNet): `kernel` one-hot, `in`, `hidden`,
    `se`, `out` masks, `active` (None for a stage's first layer) and `side` (None without BCNet)."""
    la = self.la
    ops = [IROp(self.buf, k, name=f"k{k}")() for k in self.kernels]
    w = self._windows(mix_ops(ops, self.kernels, None if sel is None else sel["kernel"]), sel)
    sel = sel or {}
    if self.track_running:  # PathNet: running averages live in BatchNorm modules
      bn_kw = dict(use_running_average=use_ra, stat_weights=stat_weights)

      def bn(name, h, n, mask):
        return BatchNorm(n, True, name=name)(h, affine=w[name], mask=mask, **bn_kw)

    else:  # batch statistics, no variables: a pure function (it may run inside lax.cond)

      def bn(name, h, n, mask):
        return normalize(h, batch_moments(h, stat_weights), *w[name], mask)

    choice = None
    if self.conditional and len(self.kernels) > 1:
      choice = jnp.argmax(sel["kernel"]).astype(jnp.int32)

    def block(x):
      h = x
      if la.expand:
        h = hswish(bn("bn_expand", _conv(h, w["expand"]), la.hidden, sel.get("hidden")))
      h = depthwise_conv(h, w["dw"], la.stride, impl=self.depthwise, choice=choice, sizes=self.kernels)
      h = hswish(bn("bn_dw", h, la.hidden, sel.get("hidden")))
      # Squeeze-excite on the hidden channels (biases: the squeeze output must be masked).
      s = jax.nn.relu(jnp.mean(h, axis=(1, 2)) @ w["se_reduce"] + w["se_reduce_bias"])
      if sel.get("se") is not None:
        s = s * sel["se"]
      h = h * hsigmoid(s @ w["se_expand"] + w["se_expand_bias"])[:, None, None, :]
      y = bn("bn_project", _conv(h, w["project"]), la.c_out, sel.get("out"))
      return x + y if la.residual else y

    if sel.get("active") is None:
      return block(x)
    if self.conditional:
      # An inactive slot is skipped: exactly x, zero gradient for its weights, and no compute.
      return jax.lax.cond(sel["active"] > 0, block, lambda x: x, x)
    # A select, not x + a·(y − x): exactly x (and exactly y), and y gets zero gradient when skipped.
    return jnp.where(sel["active"] > 0, block(x), x)

  def _windows(self, w: dict, sel) -> dict:
    """The path's slice (compute shapes) of every mixed weight: static, or at its side's offsets."""
    size, buf = _sizes(self.la), _sizes(self.buf)
    offs = dict.fromkeys(size)
    if sel is not None and sel.get("side") is not None:
      offs = {g: side_offset(sel["side"], buf[g], sel[g]) for g in size}

    def cut(name, a):
      for axis, g in _OP_AXES[name]:
        a = window(a, axis, size[g], offs[g])
      return a

    return {name: jax.tree.map(lambda a, n=name: cut(n, a), v) for name, v in w.items()}


class _Net(nn.Module):
  """Shared trunk. `arch`: compute shapes; `buffer`: parameter shapes; `kernels`: the candidate ops of
  every slot (None: a PathNet, each layer its own kernel); `bcnet`: read weights at the path's sides;
  `depthwise`: `depthwise_conv` impl."""

  arch: Arch
  buffer: Arch
  kernels: tuple[int, ...] | None = None
  track_running: bool = False
  bcnet: bool = False
  depthwise: str = "loop"
  conditional: bool = False

  @nn.compact
  def __call__(self, x, path, use_ra, stat_weights):
    a, b = self.arch, self.buffer
    if x.ndim != 4 or x.shape[-1] != a.in_channels:
      raise ValueError(f"expected NHWC images with {a.in_channels} channels, got shape {x.shape}")
    bcnet = self.bcnet and path is not None
    bn_kw = dict(use_running_average=use_ra, stat_weights=stat_weights)
    in_mask = None if path is None else path["stem"]
    off = side_offset(path["stem_side"], b.stem_channels, in_mask) if bcnet else None
    w = self.param("stem", _conv_init, (a.stem_kernel, a.stem_kernel, a.in_channels, b.stem_channels))
    x = _conv(x, window(w, 3, a.stem_channels, off), a.stem_stride)
    cut = lambda v: window(v, 0, a.stem_channels, off)
    x = hswish(BatchNorm(b.stem_channels, self.track_running, name="bn_stem")(x, window=cut, mask=in_mask, **bn_kw))
    for s, layers in enumerate(a.stages):
      sp = None if path is None else path["stages"][s]
      for l, la in enumerate(layers):
        sel = None
        if sp is not None:
          sel = {
              "kernel": sp["kernel"][l],
              "in": in_mask,
              "hidden": sp["hidden"][l],
              "se": sp["se"][l],
              "out": sp["out"],
              "active": None if l == 0 else sp["active"][l],
              "side": sp["side"][l] if bcnet else None,
          }
          in_mask = sp["out"]
        kernels = self.kernels or (la.kernel,)
        block = IRBlock(
            la, b.stages[s][l], kernels, self.track_running, self.depthwise, self.conditional, name=f"stage{s}_layer{l}"
        )
        x = block(x, use_ra=use_ra, stat_weights=stat_weights, sel=sel)
    c_last, c_buf = a.stages[-1][-1].c_out, b.stages[-1][-1].c_out
    off = side_offset(path["head_side"], c_buf, in_mask) if bcnet else None
    w = self.param("head", _conv_init, (1, 1, c_buf, a.head_channels))
    x = _conv(x, window(w, 2, c_last, off))
    x = hswish(BatchNorm(a.head_channels, self.track_running, name="bn_head")(x, **bn_kw))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(a.num_classes, kernel_init=_dense_init, name="classifier")(x)


# ----------------------------------------------------------------------------------------------------
# Supernet
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def supernet_arch(space: SearchSpace, bucket: int | None = None) -> Arch:
  """Compute shapes: the widest path of scaling stages 0..`bucket` (all stages for None): largest α
  scaled by that stage's largest multiplier (resolution irrelevant)."""
  m = space.max_mult if bucket is None else max(space.mult_candidates[bucket])
  return apply_scaling(largest_alpha(space), Scaling(m, m, space.base_resolution), space)


@functools.lru_cache(maxsize=64)
def buffer_arch(space: SearchSpace) -> Arch:
  """Parameter shapes: the widest path for `'left'` coupling; for `'bcnet'` the official buffers
  ceil(C·m_max) + C per stage and stem, hidden round(C_in buffer · t), SE hidden // 4."""
  sup = supernet_arch(space)
  if space.coupling == "left":
    return sup
  grow = lambda c: scaled_channels(c, space.max_mult) + c
  stem = c_in = grow(space.stem_channels)
  stages = []
  for st, layers in zip(space.stages, sup.stages):
    c_out, out = grow(st.c_out), []
    for la in layers:
      hidden = int(round(c_in * st.t))
      out.append(dataclasses.replace(la, c_in=c_in, c_out=c_out, hidden=hidden, se=hidden // space.se_reduction))
      c_in = c_out
    stages.append(tuple(out))
  return dataclasses.replace(sup, stem_channels=stem, stages=tuple(stages))


def bucket_of(S: Scaling, space: SearchSpace) -> int:
  """The smallest bucket whose compute shapes hold every path scaled by S."""
  m = max(S.d, S.w)
  for j, cands in enumerate(space.mult_candidates):
    if m <= max(cands) + 1e-9:
      return j
  raise ValueError(f"scaling {S} exceeds the largest multiplier {space.max_mult} of space {space.name!r}")


def _arch_signature(arch: Arch) -> tuple:
  """What fixes the shapes of the path arrays of a bucket: stem width, and per stage the slot count,
  output width and hidden width of each slot."""
  return (arch.stem_channels, tuple((len(ls), ls[0].c_out, tuple(la.hidden for la in ls)) for ls in arch.stages))


def _path_signature(path: dict) -> tuple:
  size = lambda a: int(np.shape(a)[0])
  stages = tuple((size(sp["active"]), size(sp["out"]), tuple(size(h) for h in sp["hidden"])) for sp in path["stages"])
  return (size(path["stem"]), stages)


def path_bucket(path: dict, space: SearchSpace) -> int | None:
  """The bucket whose compute shapes `path`'s arrays have (`path_arrays(..., bucket=j)`; None: the whole
  supernet's). The shapes are static under `jit`, so this chooses a program, not a branch. Buckets with
  equal shapes compute the same, so the first match is returned."""
  sig = _path_signature(path)
  for j in [*range(space.num_scaling_stages), None]:
    if _arch_signature(supernet_arch(space, j)) == sig:
      return j
  raise ValueError(f"path arrays of shapes {sig} match no bucket of space {space.name!r}")


BUCKET_FROM_PATH = "path"


class SuperNet(nn.Module):
  """Super-supernet of `space`; `__call__(images, *, path, train=False, stat_weights=None)`.

  `bucket` (None = all) restricts the compute shapes to the paths of scaling stages 0..bucket; the
  parameters are the same. `bucket='path'` takes the bucket from the shapes of each call's path arrays
  (`path_bucket`), so one module serves paths made with `path_arrays(..., bucket=j)` for any j (one
  compiled program per bucket and image shape): what supernet training uses. `depthwise`: `depthwise_conv` impl ('unrolled' for fast forward-only
  evaluation). `train` does not change the computation (BN always uses batch statistics); it is
  accepted for the project's apply convention.

  `conditional` (default): a slot the path leaves out is skipped (`lax.cond`) and the depthwise conv
  runs only the chosen kernel's taps (`lax.switch`), instead of computing every slot at 7×7 and
  selecting; same outputs and gradients, less work (a path averages well under the supernet's depth,
  and a 3×3 or 5×5 choice 9 or 25 of 49 taps). Under `jax.vmap` over paths a cond with a per-path
  predicate becomes a select that computes every branch, so the vmap evaluator turns it off."""

  space: SearchSpace
  bucket: int | str | None = None
  depthwise: str = "loop"
  conditional: bool = True

  @nn.compact
  def __call__(self, images, *, path, train: bool = False, stat_weights=None):
    del train
    sp = self.space
    bucket = self.bucket
    if bucket == BUCKET_FROM_PATH:
      bucket = path_bucket(path, sp)
    elif bucket is not None and not isinstance(bucket, int):
      raise ValueError(f"SuperNet bucket must be an int, None or {BUCKET_FROM_PATH!r}, got {bucket!r}")
    trunk = _Net(
        supernet_arch(sp, bucket),
        buffer_arch(sp),
        kernels=tuple(sp.kernels),
        bcnet=sp.coupling == "bcnet",
        depthwise=self.depthwise,
        conditional=self.conditional,
        name="net",
    )
    return trunk(images, path, False, stat_weights)


def init_params(module: nn.Module, seed: int, *args, **kwargs) -> dict:
  """Variables of `module` (shapes from `jax.eval_shape(module.init, ...)`) filled on the host.

  Why not `jax.jit(module.init)`: on CPU, XLA compiles the init of this many-branch network (forward
  pass + one RNG program per parameter) in over a minute, and eager init is as slow. Values follow the
  module's intent: conv/SE weights He-normal (fan-out, as torchvision/timm MobileNets), classifier
  uniform(±1/sqrt(fan_in)), BN scale 1, biases 0, running mean 0 / var 1. Deterministic in `seed`."""
  shapes = jax.eval_shape(lambda k: module.init(k, *args, **kwargs), jax.random.key(0))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  rng = np.random.default_rng(seed)
  out = []
  for keypath, leaf in leaves:
    names = [str(getattr(k, "key", k)) for k in keypath]
    name, shape = names[-1], leaf.shape
    if name in ("scale", "var"):
      v = np.ones(shape, np.float32)
    elif name in ("bias", "mean") or name.endswith("_bias"):
      v = np.zeros(shape, np.float32)
    elif "classifier" in names:
      lim = 1.0 / np.sqrt(shape[0])
      v = rng.uniform(-lim, lim, size=shape).astype(np.float32)
    else:  # conv HWIO (depthwise has I = 1) or SE matrix (in, out)
      fan_out = int(np.prod(shape[:-2])) * shape[-1] if len(shape) == 4 else shape[-1]
      if len(shape) == 4 and shape[2] == 1 and names[-1].startswith("dw"):
        fan_out = int(np.prod(shape[:-2]))  # depthwise: out/groups = 1 channel per group
      v = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_out)).astype(np.float32)
    out.append(jnp.asarray(v))
  return jax.tree_util.tree_unflatten(treedef, out)


def init_supernet(model: "SuperNet", seed: int = 0) -> dict:
  """Supernet parameters (the `params` collection; shapes depend on neither resolution nor bucket)."""
  sp = model.space
  images = jax.ShapeDtypeStruct((2, sp.base_resolution, sp.base_resolution, sp.in_channels), jnp.float32)
  full = SuperNet(sp)  # every slot of every bucket
  return init_params(full, seed, images, path=path_arrays(supernet_arch(sp), sp))["params"]


def init_pathnet(arch: Arch, seed: int = 0) -> dict:
  """Variables {'params', 'batch_stats'} of a freshly initialised `PathNet(arch)`."""
  images = jax.ShapeDtypeStruct((2, arch.resolution, arch.resolution, arch.in_channels), jnp.float32)
  return init_params(PathNet(arch), seed, images)


def _mask(n: int, nmax: int, what: str) -> np.ndarray:
  if n > nmax:
    raise ValueError(f"path needs {n} {what} but the supernet allocates {nmax}")
  m = np.zeros((nmax,), np.float32)
  m[:n] = 1.0
  return m


def path_arrays(arch: Arch, space: SearchSpace, sides: dict | None = None, bucket: int | None = None) -> dict:
  """Path pytree (numpy, see `docs/nas.md` §2) selecting `arch` inside the supernet of `space` (in
  bucket `bucket`'s compute shapes). `sides`: BCNet slice sides (`space.left_sides` format, e.g. from
  `sampling.sample_sides`); None = all left-aligned."""
  sup = supernet_arch(space, bucket)
  sides = left_sides(space) if sides is None else sides
  validate_sides(sides, space)
  if len(arch.stages) != len(sup.stages):
    raise ValueError(f"arch has {len(arch.stages)} stages, space {space.name!r} has {len(sup.stages)}")
  stages = []
  for s, (layers, slots) in enumerate(zip(arch.stages, sup.stages)):
    if len(layers) > len(slots):
      raise ValueError(f"stage {s}: {len(layers)} layers but only {len(slots)} slots (bucket {bucket})")
    kernel = np.zeros((len(slots), len(space.kernels)), np.float32)
    hidden, se = [], []
    for l, slot in enumerate(slots):
      here = l < len(layers)
      if here:
        kernel[l, space.kernels.index(layers[l].kernel)] = 1.0
      where = f"(stage {s} layer {l})"
      hidden.append(_mask(layers[l].hidden if here else 0, slot.hidden, f"hidden channels {where}"))
      se.append(_mask(layers[l].se if here else 0, slot.se, f"SE channels {where}"))
    stages.append(
        {
            "active": _mask(len(layers), len(slots), f"layers (stage {s})"),
            "kernel": kernel,
            "side": np.asarray(sides["stages"][s][: len(slots)], np.float32),
            "out": _mask(layers[0].c_out, slots[0].c_out, f"channels (stage {s})"),
            "hidden": tuple(hidden),
            "se": tuple(se),
        }
    )
  return {
      "stem": _mask(arch.stem_channels, sup.stem_channels, "stem channels"),
      "stem_side": np.asarray(sides["stem"], np.float32),
      "head_side": np.asarray(sides["head"], np.float32),
      "stages": tuple(stages),
  }


def stack_paths(paths: Sequence[dict]) -> dict:
  """Stacks path pytrees along a new leading axis (for `jax.vmap`)."""
  if not paths:
    raise ValueError("stack_paths: empty list of paths")
  return jax.tree.map(lambda *xs: np.stack(xs), *paths)


# ----------------------------------------------------------------------------------------------------
# Stand-alone network
# ----------------------------------------------------------------------------------------------------
class PathNet(nn.Module):
  """Stand-alone network with exactly the shapes of `arch`; BN keeps running averages.

  `__call__(images, *, train=False)`: train ⇒ batch statistics (and running-average update when
  `batch_stats` is mutable); eval ⇒ running averages. `bn_batch_stats=True`: always batch statistics
  and no `batch_stats` collection (the supernet's BN semantics)."""

  arch: Arch
  bn_batch_stats: bool = False

  @nn.compact
  def __call__(self, images, *, train: bool = False, stat_weights=None):
    use_ra = not train and not self.bn_batch_stats
    return _Net(self.arch, self.arch, kernels=None, track_running=not self.bn_batch_stats, name="net")(
        images, None, use_ra, stat_weights
    )


def _module_side(module: str, sides: dict) -> int:
  """The BCNet side of a top-level module of `net` (`stem`, `stage{s}_layer{l}`, `head`, ...)."""
  m = re.fullmatch(r"stage(\d+)_layer(\d+)", module)
  if m:
    return int(sides["stages"][int(m[1])][int(m[2])])
  return int({"stem": sides["stem"], "bn_stem": sides["stem"], "head": sides["head"]}.get(module, 0))


def slice_params(supernet_params: Any, arch: Arch, sides: dict | None = None) -> Any:
  """Parameters of `PathNet(arch)` cut out of the supernet's: per module left-aligned (the first n
  channels of every axis) or right-aligned (the last n) as `sides` says (None = all left). Strict:
  every PathNet parameter must exist in the supernet and fit in it."""
  images = jax.ShapeDtypeStruct((1, arch.resolution, arch.resolution, arch.in_channels), jnp.float32)
  target = jax.eval_shape(PathNet(arch).init, jax.random.key(0), images)["params"]
  flat_sup = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(supernet_params)}

  def cut(keypath, t):
    name = jax.tree_util.keystr(keypath)
    if name not in flat_sup:
      raise KeyError(f"slice_params: supernet has no parameter {name}")
    src = flat_sup[name]
    if src.ndim != len(t.shape) or any(n > m for n, m in zip(t.shape, src.shape)):
      raise ValueError(f"slice_params: {name} needs shape {t.shape}, supernet has {src.shape}")
    right = sides is not None and _module_side(str(getattr(keypath[1], "key", keypath[1])), sides)
    return src[tuple(slice(m - n, m) if right else slice(0, n) for n, m in zip(t.shape, src.shape))]

  return jax.tree_util.tree_map_with_path(cut, target)


@functools.lru_cache(maxsize=8)
def supernet_shapes(space: SearchSpace) -> dict:
  """The supernet's `params` tree as `jax.ShapeDtypeStruct`s (tracing the init costs seconds: cached)."""
  images = jax.ShapeDtypeStruct((1, space.base_resolution, space.base_resolution, space.in_channels), jnp.float32)
  path = path_arrays(supernet_arch(space), space)
  return jax.eval_shape(lambda k: SuperNet(space).init(k, images, path=path), jax.random.key(0))["params"]


def embed_params(pathnet_params: Any, arch: Arch, space: SearchSpace) -> dict:
  """Supernet-shaped parameters (`init_supernet`'s tree) holding `PathNet(arch)`'s params left-aligned
  and zeros elsewhere: the inverse of `slice_params(., arch)` with left sides. With a left-aligned path
  the masked supernet then computes exactly the PathNet (train-mode BN), and the zeros never change:
  they get zero gradient, and weight decay and momentum of zero are zero. This is how a stand-alone path
  trains through the one compiled masked program of its (resolution, bucket)."""
  flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(pathnet_params)}
  used = set()

  def fill(keypath, t):
    name = jax.tree_util.keystr(keypath)
    out = np.zeros(t.shape, t.dtype)
    if name in flat:
      v = flat[name]
      if v.ndim != out.ndim or any(n > m for n, m in zip(v.shape, out.shape)):
        raise ValueError(f"embed_params: {name} has shape {v.shape}, the supernet's is {out.shape}")
      out[tuple(slice(0, n) for n in v.shape)] = v
      used.add(name)
    return out

  out = jax.tree_util.tree_map_with_path(fill, supernet_shapes(space))
  if used != set(flat):
    raise KeyError(f"embed_params: the supernet has no parameters {sorted(set(flat) - used)}")
  return out
