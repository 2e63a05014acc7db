"""One registry of model architectures by (timm / Hugging Face) name.

Each entry is a family ('vit', 'swin' or 'llama') and the architecture kwargs, named as timm (vision)
or `transformers.LlamaConfig` (decoder LM) names them so the same kwargs build the reference twin
(used by the parity tests and the weight converter).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from scalenet_jax.errors import ConfigError
from scalenet_jax.models import llama, swin, vit

FAMILIES = {
    "vit": (vit.ViTConfig, vit.ViT),
    "swin": (swin.SwinConfig, swin.Swin),
    "llama": (llama.LlamaConfig, llama.Llama),
}

_VIT_SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
_SWIN_SIZES = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}

REGISTRY: dict[str, tuple[str, dict[str, Any]]] = {}
for _size, (_dim, _heads) in _VIT_SIZES.items():
  REGISTRY[f"deit_{_size}_patch16_224"] = ("vit", dict(embed_dim=_dim, depth=12, num_heads=_heads))
for _size, (_dim, _depths, _heads) in _SWIN_SIZES.items():
  REGISTRY[f"swin_{_size}_patch4_window7_224"] = ("swin", dict(embed_dim=_dim, depths=_depths, num_heads=_heads))
# Small models for CPU tests and the Fashion-MNIST demo (28x28 / 32x32 grey images, 10 classes).
REGISTRY["vit_micro_patch4_28"] = (
    "vit",
    dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=6, num_heads=4),
)
REGISTRY["swin_micro_patch2_window4_32"] = (
    "swin",
    dict(
        img_size=32,
        patch_size=2,
        in_chans=1,
        num_classes=10,
        embed_dim=32,
        depths=(2, 2, 2),
        num_heads=(2, 4, 8),
        window_size=4,
    ),
)

# Llama-3.2-1B (its config.json; the paper's §IV-E3 base model) and small decoders for CPU tests / runs.
REGISTRY["llama3_2_1b"] = (
    "llama",
    dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=0,  # 64
        rope_theta=500000.0,
        rope_type="llama3",
        rope_factor=32.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_position_embeddings=8192,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
)
_SMALL_LLAMA = dict(rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=1024)
REGISTRY["llama_micro"] = (
    "llama",
    dict(
        _SMALL_LLAMA,
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        # llama3 scaling with a short original context, so that the scaling changes some frequencies
        rope_type="llama3",
        rope_factor=4.0,
        rope_original_max_position_embeddings=64,
    ),
)
REGISTRY["llama_small"] = (  # a CPU-sized LM for the fortunes corpus (2048-token BPE)
    "llama",
    dict(
        _SMALL_LLAMA,
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
    ),
)

# The fortunes study's base (configs/llama_fortunes_2x.py): llama_small at half width and half the
# vocabulary, ~4x cheaper per token, so that pretraining plus 3 seeds x 3 arms fit half an hour of 2 CPU cores.
REGISTRY["llama_tiny"] = (
    "llama",
    dict(
        _SMALL_LLAMA,
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
)


def list_models() -> list[str]:
  """The registered model names, sorted."""
  return sorted(REGISTRY)


def family_of(name: str) -> str:
  """The family (`'vit'`, `'swin'`, `'llama'`) of model `name`; raises `ConfigError` on an unknown name."""
  return _lookup(name)[0]


def _lookup(name):
  if name not in REGISTRY:
    raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
  return REGISTRY[name]


def arch_kwargs(name: str, **overrides) -> dict[str, Any]:
  """The timm-style architecture kwargs of `name` with `overrides` applied.

  Args:
    name: a registered model name.
    **overrides: fields of the family's config dataclass (lists become tuples).

  Returns:
    The kwargs of the family's config dataclass.

  Raises:
    ConfigError: an unknown name or a field the family's config does not have.
  """
  family, kwargs = _lookup(name)
  fields = {f.name for f in dataclasses.fields(FAMILIES[family][0])}
  bad = sorted(set(overrides) - fields)
  if bad:
    raise ConfigError(f"model {name!r} has no architecture field {bad[0]!r}; fields: {', '.join(sorted(fields))}")
  return {**kwargs, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}}


def model_config(name: str, **overrides):
  """The family's config dataclass of `name` (`ViTConfig`, `SwinConfig`, `LlamaConfig`), as `arch_kwargs`."""
  family, _ = _lookup(name)
  return FAMILIES[family][0](**arch_kwargs(name, **overrides))


def create_model(name: str, arch: dict | None = None, **module_kwargs):
  """Build the Flax module `name`.

  Args:
    name: a registered model name (`list_models()`).
    arch: architecture field overrides (e.g. num_classes), as in `arch_kwargs`.
    **module_kwargs: runtime options, the `StackedModel` fields (drop_path_rate, dtype, remat, layouts,
      rank, unroll ...).

  Returns:
    The (plain unless `layouts` are given) `StackedModel`.

  Raises:
    ConfigError: an unknown name or architecture field.
  """
  family, _ = _lookup(name)
  return FAMILIES[family][1](config=model_config(name, **(arch or {})), **module_kwargs)
