"""Llama-style decoder LM over the shared block stack, with Hugging Face `LlamaForCausalLM` keys.

Token embedding -> L' decoder blocks -> RMSNorm -> LM head (tied to the embedding or its own). A block
is pre-norm: `x += attn(rms(x))`, `x += mlp(rms(x))` with grouped-query causal attention under rotary
position embeddings (optionally Llama-3 scaled) and a SwiGLU MLP, `down(silu(gate(x)) * up(x))`.

Like ViT/Swin the blocks run through `stack.scan_blocks` over a `StackLayout`: the seven linears
(q, k, v, o, gate, up, down) of each pretrained layer live once under `layers/core`, every block owns
its two RMSNorms (`attn_norm`, `mlp_norm`) and its adjustment modules (adapters on gate/up/down;
LoRA, an ablation, on all seven). So a ScaleNet expansion is a layout, as for the vision models.

Decoding keeps a KV cache as plain arrays (`init_cache`): each block reads and writes its own slice,
handed to it by the scan, and `generate` runs the whole greedy / sampled decode in one jitted
program of fixed length.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scalenet_jax import paths
from scalenet_jax.errors import CheckpointError, ConfigError, MissingInputError
from scalenet_jax.models import common
from scalenet_jax.models import stack as stack_lib
from scalenet_jax.models.common import Entry

ROPE_TYPES = ("default", "llama3")
CORE_LINEARS = ("q", "k", "v", "o", "gate", "up", "down")
# Adapters on the MLP linears (the paper's setting), LoRA (ablation) on all seven.
ADJUSTED_LINEARS = {"adapter": ("gate", "up", "down"), "lora": CORE_LINEARS}
_HF_LINEARS = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Architecture, with the field names of `transformers.LlamaConfig` (`rope_scaling` flattened).

  Attributes:
    vocab_size: tokens of the vocabulary.
    hidden_size: model width.
    intermediate_size: SwiGLU MLP width.
    num_hidden_layers: decoder layers.
    num_attention_heads: query heads.
    num_key_value_heads: key / value heads (grouped-query attention; divides the query heads).
    head_dim: 0 = hidden_size // num_attention_heads (must be even).
    rope_theta: RoPE base.
    rope_type: `'default'` | `'llama3'`.
    rope_factor, rope_low_freq_factor, rope_high_freq_factor, rope_original_max_position_embeddings:
      llama3 scaling (ignored for default RoPE; `rope_inv_freq`).
    max_position_embeddings: context length of the checkpoint (not a limit here).
    rms_norm_eps: RMSNorm epsilon.
    tie_word_embeddings: the LM head is the input embedding.

  Raises:
    ConfigError: query heads not a multiple of the kv heads, an unknown rope type, or an odd head_dim.
  """

  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int = 32
  head_dim: int = 0  # 0: hidden_size // num_attention_heads
  rope_theta: float = 10000.0
  rope_type: str = "default"  # default | llama3
  rope_factor: float = 8.0  # llama3 scaling (ignored for default RoPE)
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position_embeddings: int = 8192
  max_position_embeddings: int = 2048
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False

  def __post_init__(self):
    if self.num_attention_heads % self.num_key_value_heads:
      raise ConfigError(
          f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads"
          f" ({self.num_key_value_heads})"
      )
    if self.rope_type not in ROPE_TYPES:
      raise ConfigError(f"unknown rope_type {self.rope_type!r}; choose one of {ROPE_TYPES}")
    if self.dim_head % 2:
      raise ConfigError(f"rotary embeddings need an even head_dim, got {self.dim_head}")

  @property
  def dim_head(self) -> int:
    """The head dimension (`head_dim`, or hidden_size // num_attention_heads when 0)."""
    return self.head_dim or self.hidden_size // self.num_attention_heads

  # -- Hugging Face config.json -------------------------------------------------------------------
  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> "LlamaConfig":
    """From a `config.json` dict (rope as `rope_scaling` + `rope_theta`, or transformers 5's `rope_parameters`).

    Args:
      hf: the parsed `config.json`.

    Returns:
      The `LlamaConfig`.

    Raises:
      CheckpointError: not a `llama` model, or a setting this implementation does not support.
    """
    if hf.get("model_type") != "llama":
      raise CheckpointError(
          f"checkpoint config is a {hf.get('model_type')!r} model, not a Llama-style decoder ('llama')"
      )
    unsupported = {"attention_bias": False, "mlp_bias": False, "hidden_act": "silu", "pretraining_tp": 1}
    for k, want in unsupported.items():
      if hf.get(k, want) != want:
        raise CheckpointError(f"Llama config with {k}={hf[k]!r} is not supported (only {k}={want!r})")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
      raise CheckpointError(f"rope type {rope_type!r} is not supported (only {ROPE_TYPES})")
    llama3 = (
        dict(
            rope_factor=float(rope["factor"]),
            rope_low_freq_factor=float(rope["low_freq_factor"]),
            rope_high_freq_factor=float(rope["high_freq_factor"]),
            rope_original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
        )
        if rope_type == "llama3"
        else {}
    )
    heads = int(hf["num_attention_heads"])
    head_dim = int(hf.get("head_dim") or 0)
    return cls(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_hidden_layers=int(hf["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=0 if head_dim == int(hf["hidden_size"]) // heads else head_dim,
        rope_theta=float(theta),
        rope_type=rope_type,
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        **llama3,
    )

  def to_hf(self) -> dict[str, Any]:
    """`config.json` content that `transformers` (4.x and 5.x) reads as this architecture."""
    out = dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        vocab_size=self.vocab_size,
        hidden_size=self.hidden_size,
        intermediate_size=self.intermediate_size,
        num_hidden_layers=self.num_hidden_layers,
        num_attention_heads=self.num_attention_heads,
        num_key_value_heads=self.num_key_value_heads,
        head_dim=self.dim_head,
        hidden_act="silu",
        max_position_embeddings=self.max_position_embeddings,
        rms_norm_eps=self.rms_norm_eps,
        rope_theta=self.rope_theta,
        rope_scaling=None,
        tie_word_embeddings=self.tie_word_embeddings,
        attention_bias=False,
        mlp_bias=False,
    )
    if self.rope_type == "llama3":
      out["rope_scaling"] = dict(
          rope_type="llama3",
          factor=self.rope_factor,
          low_freq_factor=self.rope_low_freq_factor,
          high_freq_factor=self.rope_high_freq_factor,
          original_max_position_embeddings=self.rope_original_max_position_embeddings,
      )
    return out


# ----------------------------------------------------------------------------------------------------
# Rotary position embeddings
# ----------------------------------------------------------------------------------------------------
def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
  """Inverse frequencies (head_dim / 2,), float32 arithmetic like the reference implementation.

  llama3 scaling: wavelengths shorter than `original / high_freq_factor` stay, those longer than
  `original / low_freq_factor` are divided by `factor`, and the band between is interpolated
  linearly in `original / wavelength`.

  Args:
    cfg: the architecture (`dim_head`, `rope_*`).

  Returns:
    float32 numpy array (head_dim / 2,).
  """
  d = cfg.dim_head
  inv = (1.0 / np.float32(cfg.rope_theta) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d))).astype(np.float32)
  if cfg.rope_type == "default":
    return inv
  factor, low, high = (np.float32(v) for v in (cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor))
  old = np.float32(cfg.rope_original_max_position_embeddings)
  wavelen = np.float32(2 * np.pi) / inv
  scaled = np.where(wavelen > old / low, inv / factor, inv)
  smooth = (old / wavelen - low) / (high - low)
  mid = ~(wavelen < old / high) & ~(wavelen > old / low)
  return np.where(mid, (1 - smooth) * scaled / factor + smooth * scaled, scaled).astype(np.float32)


def rope_tables(positions, inv_freq, dtype):
  """cos / sin (B, T, head_dim) at integer `positions` (B, T); angles in float32."""
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rope(x, cos, sin):
  """x (B, T, heads, head_dim): rotate pairs (i, i + head_dim/2) (the Hugging Face convention)."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[:, :, None] + rotated * sin[:, :, None]


# ----------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
  """x / rms(x) · scale, normalised in float32 and scaled in the compute dtype.

  Attributes:
    eps: added to the mean square.
    dtype: compute (and output) dtype.

  `__call__(x)`: normalised over the last axis, same shape.
  """

  eps: float = 1e-6
  dtype: stack_lib.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * y.astype(self.dtype)


class DecoderCore(nn.Module):
  """The shared weights of `n` decoder layers, stacked once (kernels (n, d_in, d_out), no biases).

  Attributes:
    n: core layers.
    config: the architecture.

  `__call__()` takes no input and returns `{"q", "k", "v", "o", "gate", "up", "down"}` weights.
  """

  n: int
  config: LlamaConfig

  @nn.compact
  def __call__(self):
    c = self.config
    q, kv = c.num_attention_heads * c.dim_head, c.num_key_value_heads * c.dim_head
    d, h = c.hidden_size, c.intermediate_size
    shapes = {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, h), "up": (d, h), "down": (h, d)}
    return {k: stack_lib.StackedDense(self.n, i, o, use_bias=False, name=k)() for k, (i, o) in shapes.items()}


@dataclasses.dataclass(frozen=True)
class _Context:
  """What every block of one forward call shares (broadcast through the scan)."""

  cos: Any  # (B, T, head_dim)
  sin: Any
  allowed: Any  # bool (B, T, S): query t may attend key slot s
  index: Any  # int32 scalar: cache slot of the first new token (0 without a cache)


jax.tree_util.register_dataclass(_Context, data_fields=["cos", "sin", "allowed", "index"], meta_fields=[])


class DecoderBlock(nn.Module):
  """One pre-norm decoder block on gathered core weights, with its own RMSNorms and adjustments.

  Called by `stack.scan_blocks` (through `DecoderStack`), not directly.

  Attributes:
    config: the architecture.
    adjust: this block's adjustment kind (the linears of `ADJUSTED_LINEARS[adjust]` get one).
    rank: adjustment rank.
    adapter_act: adapter activation.
    dtype: compute dtype.

  `__call__(x, step, shared)`: x (B, T, hidden); `step` = (core index, own core weights or None, and with
  a cache this block's k / v cache slices); `shared` = (core stack or None, the call's context: RoPE
  tables, attention mask, cache index). Returns `(x, (k, v) or None)`; sows `intermediates/block_out`.
  """

  config: LlamaConfig
  adjust: str = "none"
  rank: int = 16
  adapter_act: str = "gelu"
  dtype: stack_lib.Dtype = jnp.float32

  def _linear(self, name, x, core):
    y = stack_lib.linear(x, core[name], self.dtype)
    if name in ADJUSTED_LINEARS.get(self.adjust, ()):
      y = y + stack_lib.Adjust(
          self.adjust, y.shape[-1], self.rank, self.adapter_act, self.dtype, name=f"{self.adjust}_{name}"
      )(x)
    return y

  def _attention(self, x, core, ctx: _Context, cache):
    c = self.config
    b, t, _ = x.shape
    heads, kv_heads, hd = c.num_attention_heads, c.num_key_value_heads, c.dim_head
    q = apply_rope(self._linear("q", x, core).reshape(b, t, heads, hd), ctx.cos, ctx.sin)
    k = apply_rope(self._linear("k", x, core).reshape(b, t, kv_heads, hd), ctx.cos, ctx.sin)
    v = self._linear("v", x, core).reshape(b, t, kv_heads, hd)
    if cache is not None:  # write this call's keys/values into the block's own cache slice, attend to all
      k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, ctx.index, 0, 0))
      v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, ctx.index, 0, 0))
    # Grouped-query attention: query head (g, j) reads kv head g, as repeat_kv does.
    q = q.reshape(b, t, kv_heads, heads // kv_heads, hd)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k.astype(self.dtype)) * hd**-0.5
    logits = jnp.where(ctx.allowed[:, None, None], logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(self.dtype)).reshape(b, t, heads * hd)
    return self._linear("o", out, core), (None if cache is None else (k, v))

  @nn.compact
  def __call__(self, x, step, shared):
    idx, own_core, *cache = step
    core_stack, ctx = shared
    core = stack_lib.block_core(idx, own_core, core_stack)
    eps = self.config.rms_norm_eps
    y, new_cache = self._attention(RMSNorm(eps, self.dtype, name="attn_norm")(x), core, ctx, cache or None)
    x = x + y
    y = RMSNorm(eps, self.dtype, name="mlp_norm")(x)
    h = nn.silu(self._linear("gate", y, core)) * self._linear("up", y, core)
    x = x + self._linear("down", h, core)
    # For analysis (apply(..., mutable=['intermediates'])); a no-op unless that collection is mutable.
    self.sow("intermediates", "block_out", x)
    return x, new_cache


class DecoderStack(nn.Module):
  """`layout.depth` decoder blocks over `layout.num_core` shared core layers (`core`, `seg{i}`).

  Attributes:
    layout: the stack's layout.
    config: the architecture.
    rank: adjustment rank.
    adapter_act: adapter activation.
    dtype: compute dtype.
    remat: rematerialise each block.
    unroll: as `StackedModel.unroll`.

  `__call__(x, ctx, cache=None)`: x (B, T, hidden) -> `(x, new k / v stacked over the blocks, or None)`
  (`stack.scan_blocks`).
  """

  layout: stack_lib.StackLayout
  config: LlamaConfig
  rank: int = 16
  adapter_act: str = "gelu"
  dtype: stack_lib.Dtype = jnp.float32
  remat: bool = False
  unroll: Optional[bool] = None

  @nn.compact
  def __call__(self, x, ctx: _Context, cache=None):
    core = DecoderCore(self.layout.num_core, self.config, name="core")()
    per_block = () if cache is None else (cache["k"], cache["v"])
    return stack_lib.scan_blocks(
        DecoderBlock,
        self.layout,
        x,
        core,
        per_block,
        (ctx,),
        remat=self.remat,
        unroll=self.unroll,
        config=self.config,
        rank=self.rank,
        adapter_act=self.adapter_act,
        dtype=self.dtype,
    )


class Llama(common.StackedModel):
  """Decoder LM (one block stack, `layers`); `layouts` make it a ScaleNet-expanded model.

  Attributes:
    config: the architecture.
    seq_len: only the length of `input_spec` (init, summaries, cost analysis): any length runs.
    (and the `StackedModel` runtime fields; `drop_path_rate` must be 0)
  """

  config: LlamaConfig = LlamaConfig()
  seq_len: int = 128
  family: ClassVar[str] = "llama"

  def plain_depths(self):
    return (self.config.num_hidden_layers,)

  def stack_names(self):
    return ("layers",)

  def with_plain_depths(self, depths):
    return self.clone(config=dataclasses.replace(self.config, num_hidden_layers=int(depths[0])), layouts=None)

  def input_spec(self, batch: int = 1):
    return jax.ShapeDtypeStruct((batch, self.seq_len), jnp.int32)

  def key_table(self):
    """Hugging Face `LlamaForCausalLM` keys (a tied head's `lm_head.weight` is an optional alias)."""
    t = [Entry("model.embed_tokens.weight", ("embed", "embedding"), None, "same")]
    t += decoder_stack_entries(self.stack_layouts[0])
    t += common.norm_entries("model.norm", ("norm",), bias=False)
    if self.config.tie_word_embeddings:
      return t + [Entry("lm_head.weight", ("embed", "embedding"), None, "same", optional=True)]
    return t + common.linear_entries("lm_head", ("head",), bias=False)

  @nn.compact
  def __call__(self, tokens, train: bool = False, *, mask=None, positions=None, cache=None):
    """tokens int (B, T) -> float32 logits (B, T, vocab); with `cache`, `(logits, updated cache)`.

    `mask` bool (B, T): False marks padding, never attended to (default: no padding).
    `positions` int (B, T): RoPE positions; by default each token's count of earlier non-padding
    tokens (0..T-1 without padding; for left-padded prompts what `transformers`' generate uses).
    `cache` (`init_cache`): the tokens go to cache slots `[cache['index'], cache['index'] + T)` and
    attend to every earlier valid slot. `train` is accepted for the trainer's interface (no dropout).

    Raises:
      ConfigError: a nonzero `drop_path_rate`.
    """
    cfg = self.config
    if self.drop_path_rate:
      raise ConfigError("the Llama decoder has no stochastic depth: set drop_path_rate=0")
    b, t = tokens.shape
    mask = jnp.ones((b, t), bool) if mask is None else jnp.asarray(mask, bool)
    if cache is None:
      index, valid = jnp.zeros((), jnp.int32), mask
    else:
      index = jnp.asarray(cache["index"], jnp.int32)
      valid = jax.lax.dynamic_update_slice(cache["valid"], mask, (0, index))
    slots = index + jnp.arange(t)
    if positions is None:
      before = jnp.cumsum(valid, axis=1) - 1
      positions = jnp.maximum(jnp.take(before, slots, axis=1), 0)
    allowed = (jnp.arange(valid.shape[1])[None, None, :] <= slots[None, :, None]) & valid[:, None, :]
    cos, sin = rope_tables(positions, rope_inv_freq(cfg), self.dtype)

    embed = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, embedding_init=nn.initializers.normal(0.02), name="embed"
    )
    x = embed(tokens)
    x, kv = DecoderStack(
        self.stack_layouts[0],
        cfg,
        self.rank,
        self.adapter_act,
        self.dtype,
        self.remat,
        self.unroll,
        name="layers",
    )(x, _Context(cos, sin, allowed, index), cache)
    x = RMSNorm(cfg.rms_norm_eps, self.dtype, name="norm")(x)
    if cfg.tie_word_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(
          cfg.vocab_size, use_bias=False, dtype=self.dtype, kernel_init=nn.initializers.normal(0.02), name="head"
      )(x)
    logits = logits.astype(jnp.float32)
    if cache is None:
      return logits
    return logits, {"k": kv[0], "v": kv[1], "valid": valid, "index": index + t}


def decoder_stack_entries(layout: stack_lib.StackLayout) -> list[Entry]:
  """HF keys of the decoder layers (`model.layers.<l>`) of one stack with the Flax params they map to."""
  out = []
  for l, c in enumerate(layout.mapping):
    seg, pos = layout.locate(l)
    segp, b = ("layers", f"seg{seg}"), f"model.layers.{l}"
    out += common.norm_entries(f"{b}.input_layernorm", segp + ("attn_norm",), pos, bias=False)
    out += common.norm_entries(f"{b}.post_attention_layernorm", segp + ("mlp_norm",), pos, bias=False)
    for name in CORE_LINEARS:
      out += common.linear_entries(f"{b}.{_HF_LINEARS[name]}", ("layers", "core", name), c, bias=False)
    kind = layout.adjust[l]
    if kind != "none":
      out += common.adjust_entries(b, segp, pos, kind, ADJUSTED_LINEARS[kind])
  return out


# ----------------------------------------------------------------------------------------------------
# KV cache and generation
# ----------------------------------------------------------------------------------------------------
def init_cache(model: Llama, batch: int, max_len: int, dtype=None) -> dict:
  """An empty KV cache for `max_len` tokens.

  Args:
    model: the decoder.
    batch: B.
    max_len: cache slots (prompt plus new tokens).
    dtype: of `k` / `v`; None = the model's compute dtype.

  Returns:
    `{"k", "v"}` zeros (blocks, B, max_len, kv_heads, head_dim), `"valid"` (B, max_len) bool all False,
    `"index"` int32 scalar 0 (the next free slot).
  """
  c = model.config
  shape = (sum(model.depths), batch, max_len, c.num_key_value_heads, c.dim_head)
  dtype = dtype or model.dtype
  return {
      "k": jnp.zeros(shape, dtype),
      "v": jnp.zeros(shape, dtype),
      "valid": jnp.zeros((batch, max_len), bool),
      "index": jnp.zeros((), jnp.int32),
  }


def _pick(logits, key, temperature: float):
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "eos_id"))
def generate(
    model: Llama,
    params,
    prompt,
    max_new_tokens: int,
    prompt_mask=None,
    rng=None,
    temperature: float = 0.0,
    eos_id: Optional[int] = None,
):
  """`max_new_tokens` tokens (B, max_new_tokens) after `prompt` (B, P), one jitted program.

  Greedy when `temperature` is 0, else sampled from softmax(logits / temperature) with `rng` (key
  `i` of `split(rng, max_new_tokens)` draws token `i`). Prompts of different lengths are
  left-padded, `prompt_mask` False on the padding. After `eos_id` a row repeats `eos_id`.
  The prompt is one prefill call; each new token is one call on the cache.

  Args:
    model: the decoder (static: hashed for the jit cache).
    params: its params.
    prompt: int (B, P) token ids.
    max_new_tokens: tokens to generate (static).
    prompt_mask: bool (B, P), False on left padding; None = no padding.
    rng: PRNG key for sampling; None = `jax.random.key(0)`.
    temperature: 0 = greedy (static).
    eos_id: end-of-sequence id, or None (static).

  Returns:
    int32 (B, max_new_tokens).
  """
  b, p = prompt.shape
  variables = {"params": params}
  keys = jax.random.split(jax.random.key(0) if rng is None else rng, max_new_tokens)
  logits, cache = model.apply(variables, prompt, mask=prompt_mask, cache=init_cache(model, b, p + max_new_tokens))
  first = _pick(logits[:, -1], keys[0], temperature)

  def step(carry, key):
    tok, cache, done = carry
    logits, cache = model.apply(variables, tok[:, None], cache=cache)
    nxt = _pick(logits[:, 0], key, temperature)
    if eos_id is not None:
      done = done | (tok == eos_id)
      nxt = jnp.where(done, eos_id, nxt)
    return (nxt, cache, done), nxt

  _, rest = jax.lax.scan(step, (first, cache, jnp.zeros((b,), bool)), keys[1:])
  return jnp.concatenate([first[:, None], rest.T], axis=1)


# ----------------------------------------------------------------------------------------------------
# Hugging Face checkpoint directories (config.json + safetensors)
# ----------------------------------------------------------------------------------------------------
def read_hf_config(path: str) -> LlamaConfig:
  """The `LlamaConfig` of a Hugging Face checkpoint directory (its `config.json`).

  Raises:
    MissingInputError: the directory has no `config.json`.
    CheckpointError: as in `LlamaConfig.from_hf`.
  """
  file = paths.path(path) / "config.json"
  if not file.is_file():
    raise MissingInputError(f"no config.json in checkpoint directory {path}")
  return LlamaConfig.from_hf(paths.read_json(file))


def check_config(model: Llama, cfg: LlamaConfig):
  """Raises `CheckpointError` naming the first architecture field where a checkpoint's config `cfg` differs
  from `model`'s (`max_position_embeddings` is not compared: it changes neither the weights nor the function)."""
  for f in dataclasses.fields(LlamaConfig):
    if f.name in ("max_position_embeddings",):  # does not change the weights or the function up to it
      continue
    have, want = getattr(cfg, f.name), getattr(model.config, f.name)
    if have != want:
      raise CheckpointError(f"checkpoint has {f.name}={have!r} but the model has {f.name}={want!r}")


def save_hf(path: str, params, model: Llama, max_shard_bytes: Optional[int] = None):
  """Write `config.json` and the weights as `transformers` lays out a checkpoint (tied head written once).

  An expanded model is written unrolled, with its adjustment modules under `...adjust.*` keys
  that `LlamaForCausalLM` does not have.

  Args:
    path: the output directory (local or gs://).
    params: the model's params.
    model: the decoder (its config and layouts; `num_hidden_layers` is written as the built depth).
    max_shard_bytes: None = one `model.safetensors`; else shards of at most this size with an index.
  """
  from scalenet_jax import convert

  hf = model.config.to_hf()
  hf["num_hidden_layers"] = model.depths[0]
  paths.write_json(paths.path(path) / "config.json", hf, indent=2)
  convert.save_state_dict_dir(path, convert.flax_to_hf(params, model, aliases=False), max_shard_bytes)
