"""Super-supernet (Flax linen) whose paths are selected by mask arrays, and the stand-alone `PathNet`.

# Usage

```python
space = get_space('fmnist')
model = SuperNet(space)
params = init_supernet(model, jax.random.key(0))
arch = apply_scaling(alpha, S, space)           # S.r is the image size to feed
path = path_arrays(arch, space)                 # pytree of float32 numpy arrays (fixed shapes)
logits = model.apply({'params': params}, images_NHWC, path=path, train=True)
```

One `jax.jit` of `model.apply` serves *every* path of a given resolution (only the image shape changes
the compiled program), and `jax.vmap` over a stacked batch of path pytrees (`stack_paths`) evaluates
many paths at once.

# Path arrays (same structure and shapes at every resolution)

```
{'stem': f32[C_stem_max],
 'stages': ({'active': f32[L_s],          # 1 = layer runs, 0 = identity (layer 0 always 1)
             'kernel': f32[L_s, 3],       # one-hot over space.kernels; all-zero for inactive layers
             'out':    f32[C_s_max],      # left-aligned channel mask of the stage output
             'hidden': (f32[H_{s,l}_max] for l),  # hidden (expanded) channel mask per layer
             'se':     (f32[H_{s,l}_max // 4] for l)},   # SE squeeze channel mask per layer
            ... one dict per stage)}
```
`L_s = space.max_layers(s)`; maxima are those of `supernet_arch(space)` (largest α scaled by the
largest multipliers).

# How a path is realised
* **Kernel**: one depthwise conv with a 7×7 weight that is the one-hot mix of the zero-padded 3×3, 5×5
  and 7×7 candidate weights (each candidate keeps its own parameters `dw3`, `dw5`, `dw7`). Padding is
  symmetric k//2 (PyTorch convention), so the centred, zero-padded kernels give the same result as the
  small conv at stride 1 and 2.
* **Width**: activations are multiplied by left-aligned channel masks *after* each BN (BN of an all-zero
  channel would otherwise output its bias). SE squeeze outputs are masked too (their bias would leak).
  Masked channels are exactly zero, so they contribute exactly nothing to the next conv.
* **Depth**: non-first layers are stride-1 residual blocks; an inactive layer computes x + 0·f(x) = x.
  Its parameters get zero gradient.
* **BN**: always batch statistics, per path (no running averages are kept; the one-shot evaluation of
  the official code also uses batch statistics). Statistics are per channel, so masked BN equals BN on
  the sliced channels. `stat_weights` (f32[N], 0/1) restricts the statistics to a subset of the batch:
  concatenating a few training images (weight 1) with evaluation images (weight 0) gives BN
  *recalibration* in one pass (see `evaluate.py`).

`PathNet(arch)` is the stand-alone network built with exactly the sliced shapes (same module names;
its depthwise conv is named `dw{k}` after its kernel) and standard BN with running averages
(`batch_stats` collection). `slice_params(supernet_params, arch)` returns its parameters, cut
left-aligned out of the supernet's. With `PathNet(arch, bn_batch_stats=True)` it uses batch statistics
in eval mode too, which is what the equivalence test compares against.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scalenet_jax.nas.space import Arch, LayerArch, Scaling, SearchSpace, apply_scaling, largest_alpha

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

  `track_running=True` keeps `batch_stats/{mean,var}` (updated when that collection is mutable, used
  when `use_running_average`)."""

  features: int
  track_running: bool = False
  momentum: float = 0.9
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x, *, use_running_average=False, mask=None, stat_weights=None):
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    if self.track_running:
      ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,))
      ra_var = self.variable("batch_stats", "var", jnp.ones, (self.features,))
    if use_running_average:
      if not self.track_running:
        raise ValueError("BatchNorm: use_running_average needs track_running=True")
      mean, var = ra_mean.value, ra_var.value
    else:
      if stat_weights is None:
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
      else:
        w = stat_weights.astype(x.dtype)[:, None, None, None]
        denom = jnp.sum(w) * x.shape[1] * x.shape[2]
        mean = jnp.sum(x * w, axis=(0, 1, 2)) / denom
        var = jnp.sum(jnp.square(x - mean) * w, axis=(0, 1, 2)) / denom
      if self.track_running and self.is_mutable_collection("batch_stats") and not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    y = (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
    return y if mask is None else y * mask


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


def _shift_sum(xp, w, h: int, wd: int):
  """Σ_ij xp[:, i:i+h, j:j+wd, :] · w[i, j, :]: stride-1 depthwise correlation of a padded input.
  A `fori_loop` over the k² taps keeps the program small (an unrolled loop doubles compile time)."""
  k = w.shape[0]
  ii, jj = _taps(k)
  shape = (xp.shape[0], h, wd, xp.shape[3])

  def body(t, y):
    i, j = ii[t], jj[t]
    return y + jax.lax.dynamic_slice(xp, (0, i, j, 0), shape) * w[i, j]

  return jax.lax.fori_loop(0, k * k, body, jnp.zeros(shape, xp.dtype))


def _tap_grads(xp, g, k: int):
  """dw[i, j, c] = Σ_{n,h,w} xp[n, h+i, w+j, c] · g[n, h, w, c] for every tap (loop over taps)."""
  ii, jj = _taps(k)

  def body(t, dw):
    x_t = jax.lax.dynamic_slice(xp, (0, ii[t], jj[t], 0), g.shape)
    return dw.at[t].set(jnp.sum(x_t * g, axis=(0, 1, 2)))

  dw = jax.lax.fori_loop(0, k * k, body, jnp.zeros((k * k, g.shape[-1]), g.dtype))
  return dw.reshape(k, k, g.shape[-1])


def _pad_same(x, p: int):
  return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


@jax.custom_vjp
def _depthwise_s1(x, w):
  return _shift_sum(_pad_same(x, w.shape[0] // 2), w, x.shape[1], x.shape[2])


def _depthwise_s1_fwd(x, w):
  return _depthwise_s1(x, w), (x, w)


def _depthwise_s1_bwd(res, g):
  x, w = res
  k, (h, wd) = w.shape[0], x.shape[1:3]
  dx = _shift_sum(_pad_same(g, k // 2), w[::-1, ::-1], h, wd)  # correlation with the flipped kernel
  dw = _tap_grads(_pad_same(x, k // 2), g, k)
  return dx, dw.astype(w.dtype)


_depthwise_s1.defvjp(_depthwise_s1_fwd, _depthwise_s1_bwd)


def depthwise_conv(x, kernel, stride: int = 1):
  """Depthwise k×k conv (HWIO kernel with I = 1, symmetric padding k//2) as k² shifted multiply-adds.

  Why not `lax.conv_general_dilated(feature_group_count=C)`: XLA's CPU backend runs grouped
  convolutions on a slow generic path (≈10× slower forward, ≈4× slower gradient at these sizes), and
  the depthwise convs dominated the supernet step. Stride s = the stride-1 result subsampled (with
  padding k//2 the stride-s output positions are exactly every s-th stride-1 position)."""
  y = _depthwise_s1(x, kernel[:, :, 0, :])
  return y if stride == 1 else y[:, ::stride, ::stride, :]


class IRBlock(nn.Module):
  """Inverted residual + SE. `kernels` holds the candidate kernel sizes (3 in the supernet, 1 in a
  PathNet); `c_in/hidden/se/c_out` are the allocated (maximum) channel counts."""

  c_in: int
  c_out: int
  hidden: int
  se: int
  stride: int
  expand: bool
  residual: bool
  kernels: tuple[int, ...]
  track_running: bool = False

  @nn.compact
  def __call__(
      self,
      x,
      *,
      use_ra=False,
      stat_weights=None,
      kernel_onehot=None,
      hidden_mask=None,
      se_mask=None,
      out_mask=None,
      active=None,
  ):
    bn = lambda n, name: BatchNorm(n, self.track_running, name=name)
    bn_kw = dict(use_running_average=use_ra, stat_weights=stat_weights)
    h = x
    if self.expand:
      w = self.param("expand", _conv_init, (1, 1, self.c_in, self.hidden))
      h = hswish(bn(self.hidden, "bn_expand")(_conv(h, w), mask=hidden_mask, **bn_kw))
    # Depthwise: one conv whose weight mixes the zero-padded candidates by the one-hot.
    kmax = max(self.kernels)
    ws = [self.param(f"dw{k}", _conv_init, (k, k, 1, self.hidden)) for k in self.kernels]
    if len(ws) == 1:
      dw = ws[0]
    else:
      dw = 0.0
      for i, (k, wk) in enumerate(zip(self.kernels, ws)):
        p = (kmax - k) // 2
        dw = dw + kernel_onehot[i] * jnp.pad(wk, ((p, p), (p, p), (0, 0), (0, 0)))
    h = depthwise_conv(h, dw, self.stride)
    h = hswish(bn(self.hidden, "bn_dw")(h, mask=hidden_mask, **bn_kw))
    # Squeeze-excite on the hidden channels (biases: the squeeze output must be masked).
    pooled = jnp.mean(h, axis=(1, 2))
    w1 = self.param("se_reduce", _conv_init, (self.hidden, self.se))
    b1 = self.param("se_reduce_bias", nn.initializers.zeros, (self.se,))
    s = jax.nn.relu(pooled @ w1 + b1)
    if se_mask is not None:
      s = s * se_mask
    w2 = self.param("se_expand", _conv_init, (self.se, self.hidden))
    b2 = self.param("se_expand_bias", nn.initializers.zeros, (self.hidden,))
    h = h * hsigmoid(s @ w2 + b2)[:, None, None, :]
    w3 = self.param("project", _conv_init, (1, 1, self.hidden, self.c_out))
    y = bn(self.c_out, "bn_project")(_conv(h, w3), mask=out_mask, **bn_kw)
    if self.residual:
      y = x + y
    if active is not None:
      y = x + active * (y - x)
    return y


class _Net(nn.Module):
  """Shared trunk: `arch` gives the allocated shapes; `kernels` is None for a PathNet (use the layer's
  own kernel) or the candidate tuple for the supernet."""

  arch: Arch
  kernels: tuple[int, ...] | None = None
  track_running: bool = False

  @nn.compact
  def __call__(self, x, path, use_ra, stat_weights):
    a = self.arch
    if x.ndim != 4 or x.shape[-1] != a.in_channels:
      raise ValueError(f"expected NHWC images with {a.in_channels} channels, got shape {x.shape}")
    bn_kw = dict(use_running_average=use_ra, stat_weights=stat_weights)
    w = self.param("stem", _conv_init, (a.stem_kernel, a.stem_kernel, a.in_channels, a.stem_channels))
    x = _conv(x, w, a.stem_stride)
    x = hswish(
        BatchNorm(a.stem_channels, self.track_running, name="bn_stem")(
            x, mask=None if path is None else path["stem"], **bn_kw
        )
    )
    for s, layers in enumerate(a.stages):
      sp = None if path is None else path["stages"][s]
      for l, la in enumerate(layers):
        masks = {}
        if sp is not None:
          masks = dict(
              kernel_onehot=sp["kernel"][l],
              hidden_mask=sp["hidden"][l],
              se_mask=sp["se"][l],
              out_mask=sp["out"],
              active=None if l == 0 else sp["active"][l],
          )
        x = IRBlock(
            la.c_in,
            la.c_out,
            la.hidden,
            la.se,
            la.stride,
            la.expand,
            la.residual,
            self.kernels or (la.kernel,),
            self.track_running,
            name=f"stage{s}_layer{l}",
        )(x, use_ra=use_ra, stat_weights=stat_weights, **masks)
    c_last = a.stages[-1][-1].c_out
    w = self.param("head", _conv_init, (1, 1, c_last, a.head_channels))
    x = hswish(BatchNorm(a.head_channels, self.track_running, name="bn_head")(_conv(x, w), **bn_kw))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(a.num_classes, kernel_init=_dense_init, name="classifier")(x)


# ----------------------------------------------------------------------------------------------------
# Supernet
# ----------------------------------------------------------------------------------------------------
def supernet_arch(space: SearchSpace) -> Arch:
  """The allocated shapes: largest α, largest depth/width multipliers (resolution irrelevant)."""
  m = space.max_mult
  return apply_scaling(largest_alpha(space), Scaling(m, m, space.base_resolution), space)


class SuperNet(nn.Module):
  """Super-supernet of `space`; `__call__(images, *, path, train=False, stat_weights=None)`.

  `train` does not change the computation (BN always uses batch statistics); it is accepted for the
  project's apply convention."""

  space: SearchSpace

  @nn.compact
  def __call__(self, images, *, path, train: bool = False, stat_weights=None):
    del train
    trunk = _Net(supernet_arch(self.space), kernels=tuple(self.space.kernels), name="net")
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
  """Supernet parameters (the `params` collection; shapes do not depend on the resolution)."""
  sp = model.space
  images = jax.ShapeDtypeStruct((2, sp.base_resolution, sp.base_resolution, sp.in_channels), jnp.float32)
  return init_params(model, seed, images, path=path_arrays(supernet_arch(sp), sp))["params"]


def init_pathnet(arch: Arch, seed: int = 0) -> dict:
  """Variables {'params', 'batch_stats'} of a freshly initialised `PathNet(arch)`."""
  images = jax.ShapeDtypeStruct((2, arch.resolution, arch.resolution, arch.in_channels), jnp.float32)
  return init_params(PathNet(arch), seed, images)


def path_arrays(arch: Arch, space: SearchSpace) -> dict:
  """Mask pytree (numpy float32, see module docstring) selecting `arch` inside the supernet of `space`."""
  sup = supernet_arch(space)

  def mask(n, nmax, what):
    if n > nmax:
      raise ValueError(f"path needs {n} {what} but the supernet allocates {nmax}")
    m = np.zeros((nmax,), np.float32)
    m[:n] = 1.0
    return m

  if len(arch.stages) != len(sup.stages):
    raise ValueError(f"arch has {len(arch.stages)} stages, space {space.name!r} has {len(sup.stages)}")
  stages = []
  for s, (layers, slots) in enumerate(zip(arch.stages, sup.stages)):
    if len(layers) > len(slots):
      raise ValueError(f"stage {s}: {len(layers)} layers but only {len(slots)} slots")
    kernel = np.zeros((len(slots), len(space.kernels)), np.float32)
    hidden, se = [], []
    for l, slot in enumerate(slots):
      if l < len(layers):
        kernel[l, space.kernels.index(layers[l].kernel)] = 1.0
        hidden.append(mask(layers[l].hidden, slot.hidden, f"hidden channels (stage {s} layer {l})"))
        se.append(mask(layers[l].se, slot.se, f"SE channels (stage {s} layer {l})"))
      else:
        hidden.append(np.zeros((slot.hidden,), np.float32))
        se.append(np.zeros((slot.se,), np.float32))
    stages.append(
        {
            "active": mask(len(layers), len(slots), f"layers (stage {s})"),
            "kernel": kernel,
            "out": mask(layers[0].c_out, slots[0].c_out, f"channels (stage {s})"),
            "hidden": tuple(hidden),
            "se": tuple(se),
        }
    )
  return {"stem": mask(arch.stem_channels, sup.stem_channels, "stem channels"), "stages": tuple(stages)}


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
    return _Net(self.arch, kernels=None, track_running=not self.bn_batch_stats, name="net")(
        images, None, use_ra, stat_weights
    )


def slice_params(supernet_params: Any, arch: Arch) -> Any:
  """Parameters of `PathNet(arch)` cut left-aligned out of the supernet's (strict: every PathNet
  parameter must exist in the supernet and fit in it)."""
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
    return src[tuple(slice(0, n) for n in t.shape)]

  return jax.tree_util.tree_map_with_path(cut, target)
