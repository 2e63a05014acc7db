"""Llama decoder: logits parity with `transformers`, Hugging Face checkpoints in and out, KV-cache generation,
exact parameter counts (Llama-3.2-1B and its ScaleNet 2x), the expanded model at init, errors."""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_params
from helpers import load_hf
from scalenet_jax import convert, counting
from scalenet_jax.errors import CheckpointError, MissingInputError
from scalenet_jax.grow import expand
from scalenet_jax.grow.spec import ExpansionSpec
from scalenet_jax.models import llama, registry

MICRO = "llama_micro"  # 4 layers, width 64, 4 heads / 2 kv heads, vocab 256, tied, llama3 RoPE (original 64)
T = 12  # tokens per test sequence

# Llama-3.2-1B's config.json as published with the model (the fields that define the architecture).
LLAMA_3_2_1B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}
BASE_1B = 1_235_814_400  # transformers' count of LlamaForCausalLM(config above), tied head counted once


def quick_jit(fn, *args, **kwargs):
  """Compile with XLA's backend optimisations off (compiling, not running, is what costs here)."""
  return jax.jit(fn).lower(*args, **kwargs).compile(compiler_options={"xla_backend_optimization_level": 0})


def tokens(vocab=256, batch=2, length=T, seed=0):
  return np.random.default_rng(seed).integers(0, vocab, (batch, length)).astype(np.int32)


def logits(model, params, x, **kw):
  p = {"params": params}
  return np.asarray(quick_jit(functools.partial(model.apply, **kw), p, x)(p, x))


@functools.lru_cache(maxsize=None)
def pretrained(name=MICRO, **arch):
  """A model with random params of trained-like scale: kernels ~ 1/sqrt(fan-in), embeddings ~ 1, norm gains
  ~ 1 (at 0.02 everywhere the residual stream is the embedding and greedy decoding repeats one token)."""
  model = registry.create_model(name, arch=arch)

  def scale(path, a):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "kernel":
      return a * np.float32(1 / (0.02 * np.sqrt(a.shape[-2])))
    return a * np.float32(50) if name == "embedding" else a

  return model, jax.tree_util.tree_map_with_path(scale, random_params(model.abstract_params(), seed=7))


def perturb_adjust_b(params, seed=0):
  """Non-zero adapter / LoRA B, so the instances of a shared layer really differ."""
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    keys = [str(getattr(k, "key", k)) for k in path]
    return (0.05 * rng.standard_normal(a.shape)).astype(a.dtype) if keys[-2:-1] == ["B"] else a

  return jax.tree_util.tree_map_with_path(leaf, params)


def hf_twin(transformers, torch, model, seed=0):
  """A random `LlamaForCausalLM` of `model`'s architecture with perturbed RMSNorm gains (init 1 would
  hide a swapped or dropped norm), eval mode."""
  torch.manual_seed(seed)
  hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**model.config.to_hf())).eval()
  with torch.no_grad():
    for p in hf.parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  return hf


def hf_logits(torch, hf, x, **kw):
  with torch.no_grad():
    return hf(torch.from_numpy(x.astype(np.int64)), **kw).logits.float().numpy()


# ---------------------------------------------------------------------------------------------------------
# Parity with transformers
# ---------------------------------------------------------------------------------------------------------
PARITY_CASES = {
    "tied-gqa-llama3": dict(),
    "untied-gqa-llama3": dict(tie_word_embeddings=False),
    "untied-mha-default-rope": dict(tie_word_embeddings=False, num_key_value_heads=4, rope_type="default"),
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_parity_with_transformers(transformers, torch, case):
  model = registry.create_model(MICRO, arch=PARITY_CASES[case])
  hf = hf_twin(transformers, torch, model)
  rotary = hf.model.rotary_emb
  assert rotary.rope_type == model.config.rope_type
  np.testing.assert_allclose(llama.rope_inv_freq(model.config), rotary.inv_freq.numpy(), rtol=1e-6)
  if model.config.rope_type == "llama3":  # the scaling really changes some frequencies here
    assert not np.allclose(llama.rope_inv_freq(dataclasses.replace(model.config, rope_type="default")), rotary.inv_freq)
  params = convert.timm_to_flax(hf.state_dict(), model)
  x = tokens()
  want = hf_logits(torch, hf, x)
  got = logits(model, params, x)
  assert got.shape == want.shape == (2, T, 256) and got.dtype == np.float32
  assert np.abs(want).max() > 0.1  # a dead network would match trivially
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
  assert counting.count_params(params) == sum(p.numel() for p in hf.parameters())


def test_bf16_compute_keeps_fp32_params():
  model, params = pretrained()
  bf16 = model.clone(dtype=jnp.bfloat16)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(bf16.abstract_params()))
  x = tokens()
  want, got = logits(model, params, x), logits(bf16, params, x)
  assert got.dtype == np.float32
  assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


# ---------------------------------------------------------------------------------------------------------
# Generation with the KV cache
# ---------------------------------------------------------------------------------------------------------
# Generation tests use an untied head: with a tied one a random model's logits favour the current token
# (its own embedding dominates the residual stream), and greedy decoding repeats it.
GEN = dict(tie_word_embeddings=False)


def prompts():
  """Two prompts of lengths 5 and 3, left-padded to 5 (the padding holds junk tokens on purpose)."""
  x = tokens(length=5, seed=3)
  mask = np.ones_like(x, bool)
  mask[1, :2] = False
  return x, mask


def full_sequence_decode(model, params, prompt, mask, n, pick):
  """Reference: no cache; every step runs the whole right-padded sequence (causal, so the padding to
  the right of the current position cannot matter) and picks from the logits at the last real token."""
  b, p = prompt.shape
  seq = np.concatenate([prompt, np.zeros((b, n), np.int32)], axis=1)
  full_mask = np.concatenate([mask, np.ones((b, n), bool)], axis=1)
  pp = {"params": params}
  run = quick_jit(lambda pp, s, m: model.apply(pp, s, mask=m), pp, seq, full_mask)
  for i in range(n):
    seq[:, p + i] = pick(i, np.asarray(run(pp, seq, full_mask))[:, p + i - 1])
  return seq[:, p:]


def expanded_micro(spec):
  model, pre = pretrained(**GEN)
  new, params = expand.expand(pre, model, spec)
  return new, perturb_adjust_b(params)


@pytest.mark.parametrize("which", ["plain", "scalenet-interpolate-adapter"])
def test_cached_greedy_generation_equals_full_sequence_argmax(which):
  model, params = pretrained(**GEN) if which == "plain" else expanded_micro(ExpansionSpec())
  prompt, mask = prompts()
  got = np.asarray(llama.generate(model, params, prompt, 7, prompt_mask=mask))
  want = full_sequence_decode(model, params, prompt, mask, 7, lambda i, l: l.argmax(-1))
  np.testing.assert_array_equal(got, want)
  assert len(set(got[0])) > 1  # not a degenerate constant stream


def test_cached_sampling_equals_full_sequence_sampling():
  model, params = pretrained(**GEN)
  prompt, mask = prompts()
  rng = jax.random.key(5)
  got = np.asarray(llama.generate(model, params, prompt, 6, prompt_mask=mask, rng=rng, temperature=0.7))
  keys = jax.random.split(rng, 6)
  pick = lambda i, l: np.asarray(jax.random.categorical(keys[i], jnp.asarray(l) / 0.7, axis=-1))  # noqa: E731
  np.testing.assert_array_equal(got, full_sequence_decode(model, params, prompt, mask, 6, pick))
  greedy = np.asarray(llama.generate(model, params, prompt, 6, prompt_mask=mask))
  assert (got != greedy).any()


def test_generation_stops_at_eos_and_matches_transformers(transformers, torch):
  """Greedy tokens equal `transformers`' generate on the same weights (left padding, attention mask);
  after `eos_id` a row repeats it."""
  model, params = pretrained(**GEN)
  hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**model.config.to_hf())).eval()
  hf.load_state_dict({k: torch.from_numpy(v) for k, v in convert.flax_to_hf(params, model).items()})
  prompt, mask = prompts()
  got = np.asarray(llama.generate(model, params, prompt, 6, prompt_mask=mask))
  with torch.no_grad():
    want = hf.generate(
        input_ids=torch.from_numpy(prompt.astype(np.int64)),
        attention_mask=torch.from_numpy(mask.astype(np.int64)),
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
    )[:, prompt.shape[1] :].numpy()
  np.testing.assert_array_equal(got, want)
  eos = int(got[0, 1])
  stopped = np.asarray(llama.generate(model, params, prompt, 6, prompt_mask=mask, eos_id=eos))
  first = int(np.argmax(got[0] == eos))
  np.testing.assert_array_equal(stopped[0, : first + 1], got[0, : first + 1])
  assert (stopped[0, first:] == eos).all()


def test_prefill_logits_equal_uncached_forward():
  model, params = pretrained()
  x, mask = prompts()
  cache = llama.init_cache(model, 2, 9)
  got, new_cache = model.apply({"params": params}, x, mask=mask, cache=cache)
  # at real tokens (a padding query attends to nothing and its row is junk in both)
  np.testing.assert_allclose(np.asarray(got)[mask], logits(model, params, x, mask=mask)[mask], rtol=0, atol=1e-4)
  assert int(new_cache["index"]) == 5 and new_cache["k"].shape == (4, 2, 9, 2, 16)
  np.testing.assert_array_equal(np.asarray(new_cache["valid"][:, :5]), mask)
  assert not np.asarray(new_cache["valid"][:, 5:]).any()


# ---------------------------------------------------------------------------------------------------------
# Hugging Face weights in and out
# ---------------------------------------------------------------------------------------------------------
def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_through_transformers_is_exact(transformers, torch, tied):
  model, params = pretrained(tie_word_embeddings=tied)
  sd = convert.flax_to_hf(params, model)
  assert "lm_head.weight" in sd  # as `state_dict()` has it; `save_pretrained` writes a tied head once
  assert ("lm_head.weight" in convert.flax_to_hf(params, model, aliases=False)) == (not tied)
  hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**model.config.to_hf()))
  result = hf.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  assert not result.missing_keys and not result.unexpected_keys
  assert_trees_equal(convert.timm_to_flax(hf.state_dict(), model), params)


def test_key_table_covers_every_param_once():
  for tied in (True, False):
    model, params = pretrained(tie_word_embeddings=tied)
    table = [e for e in model.key_table() if not e.optional]
    assert len({e.key for e in table}) == len(table)
    n = sum(np.asarray(convert._get(params, e.path))[0 if e.index is not None else ...].size for e in table)
    assert n == counting.count_params(params)


def test_transformers_checkpoint_directories(transformers, torch, tmp_path):
  """`save_pretrained` single-file and sharded (bf16 too) load through `builder.load_pretrained`; `save_hf` loads in
  `from_pretrained` and runs the same function."""
  model = registry.create_model(MICRO)
  hf = hf_twin(transformers, torch, model)
  want = convert.timm_to_flax(hf.state_dict(), model)
  hf.save_pretrained(tmp_path / "single")
  hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
  assert (tmp_path / "single" / "model.safetensors").exists()
  assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) > 2
  for d in ("single", "sharded"):
    got_model, got = load_hf(str(tmp_path / d))
    assert got_model.config == model.config
    assert_trees_equal(got, want)
  hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", max_shard_size="100KB")
  _, got = load_hf(str(tmp_path / "bf16"), model)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, np.asarray(b).astype(jnp.bfloat16).astype(np.float32))

  llama.save_hf(str(tmp_path / "ours"), want, model, max_shard_bytes=100_000)
  assert (tmp_path / "ours" / "model.safetensors.index.json").exists()
  back = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "ours")).eval()
  x = tokens()
  np.testing.assert_allclose(hf_logits(torch, back, x), logits(model, want, x), rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Errors: one clear line each
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def micro_sd():
  model, params = pretrained()
  return model, convert.flax_to_hf(params, model, aliases=False)


def test_missing_unexpected_misshaped_keys(micro_sd):
  model, sd = micro_sd
  sd = dict(sd)
  with pytest.raises(CheckpointError, match=r"missing key in checkpoint: 'model\.layers\.1\.mlp\.up_proj\.weight'"):
    convert.timm_to_flax({k: v for k, v in sd.items() if k != "model.layers.1.mlp.up_proj.weight"}, model)
  extra = {**sd, "model.layers.4.input_layernorm.weight": sd["model.norm.weight"]}
  with pytest.raises(CheckpointError, match=r"unexpected key in checkpoint: 'model\.layers\.4\.input_layernorm.*llama"):
    convert.timm_to_flax(extra, model)
  bad = {**sd, "model.layers.0.self_attn.k_proj.weight": np.zeros((64, 64), np.float32)}  # MHA k in a GQA model
  with pytest.raises(CheckpointError, match=r"shape mismatch for key 'model\.layers\.0\.self_attn\.k_proj\.weight': "):
    convert.timm_to_flax(bad, model)
  untied = {**sd, "lm_head.weight": sd["model.embed_tokens.weight"] + 1}
  with pytest.raises(CheckpointError, match=r"'lm_head\.weight' is tied to another key .* different values"):
    convert.timm_to_flax(untied, model)


def test_checkpoint_of_another_architecture(micro_sd, tmp_path):
  model, sd = micro_sd
  vit = registry.create_model("vit_micro_patch4_28")
  vit_sd = convert.flax_to_timm(random_params(vit.abstract_params()), vit)
  with pytest.raises(CheckpointError, match=r"unexpected key in checkpoint: .*is this a llama checkpoint"):
    convert.timm_to_flax(vit_sd, model)
  d = tmp_path / "gpt2"
  convert.save_state_dict_dir(str(d), sd)
  (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
  with pytest.raises(CheckpointError, match=r"checkpoint config is a 'gpt2' model, not a Llama-style decoder"):
    load_hf(str(d))
  (d / "config.json").write_text(json.dumps(dataclasses.replace(model.config, hidden_size=128).to_hf()))
  with pytest.raises(CheckpointError, match=r"checkpoint has hidden_size=128 but the model has hidden_size=64"):
    load_hf(str(d), model)
  (d / "config.json").write_text(json.dumps({**model.config.to_hf(), "mlp_bias": True}))
  with pytest.raises(CheckpointError, match=r"mlp_bias=True is not supported"):
    load_hf(str(d))


def test_missing_files(micro_sd, tmp_path):
  model, sd = micro_sd
  d = tmp_path / "ckpt"
  llama.save_hf(str(d), pretrained()[1], model, max_shard_bytes=60_000)
  index = json.loads((d / "model.safetensors.index.json").read_text())
  shard = sorted(set(index["weight_map"].values()))[1]
  os.remove(d / shard)
  with pytest.raises(MissingInputError, match=rf"shard {shard} listed in .*model\.safetensors\.index\.json not found"):
    load_hf(str(d))
  os.remove(d / "model.safetensors.index.json")
  with pytest.raises(MissingInputError, match=r"no model\.safetensors or model\.safetensors\.index\.json in"):
    load_hf(str(d))
  os.remove(d / "config.json")
  with pytest.raises(MissingInputError, match=r"no config\.json in checkpoint directory"):
    load_hf(str(d))
  (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 16)
  with pytest.raises(CheckpointError, match=r"cannot read safetensors file"):
    convert.load_state_dict(str(tmp_path / "junk.safetensors"))


# ---------------------------------------------------------------------------------------------------------
# Parameter counts: Llama-3.2-1B and its ScaleNet 2x (shapes only)
# ---------------------------------------------------------------------------------------------------------
def test_llama3_2_1b_config_and_count(transformers, torch, tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(LLAMA_3_2_1B_CONFIG))
  cfg = llama.read_hf_config(str(tmp_path))
  assert cfg == registry.model_config("llama3_2_1b")
  model = registry.create_model("llama3_2_1b")
  assert counting.count_params(model.abstract_params()) == BASE_1B
  hf_cfg = transformers.AutoConfig.from_pretrained(str(tmp_path))
  with torch.device("meta"):  # shapes only: nothing is allocated
    hf = transformers.LlamaForCausalLM(hf_cfg)
  assert sum(p.numel() for p in hf.parameters()) == BASE_1B
  assert hf.model.rotary_emb.rope_type == "llama3"
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

  inv_freq, attention_scale = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")  # the module's buffer is on meta
  assert attention_scale == 1.0
  np.testing.assert_allclose(llama.rope_inv_freq(cfg), inv_freq.numpy(), rtol=1e-6)


D, I, KV, L = 2048, 8192, 512, 16
ADAPTER_MLP = 16 * ((D + I) + (D + I) + (I + D))  # r (d_in + d_out) for gate, up, down: 491,520
LORA_ALL = ADAPTER_MLP + 16 * ((D + D) + (D + KV) + (D + KV) + (D + D))  # + q, k, v, o: 704,512
NEW_NORMS = L * 2 * D  # two RMSNorms per new layer


@pytest.mark.parametrize(
    "spec,want",
    [
        (ExpansionSpec(), BASE_1B + 2 * L * ADAPTER_MLP + NEW_NORMS),  # 1,251,608,576
        (ExpansionSpec(mapping="stack"), BASE_1B + 2 * L * ADAPTER_MLP + NEW_NORMS),
        (ExpansionSpec(adjust="lora"), BASE_1B + 2 * L * LORA_ALL + NEW_NORMS),  # 1,258,424,320
        (ExpansionSpec(adjust="none"), BASE_1B + NEW_NORMS),
        (ExpansionSpec(rank=32), BASE_1B + 2 * 2 * L * ADAPTER_MLP + NEW_NORMS),
    ],
    ids=["interpolate-adapter16", "stack-adapter16", "lora16", "none", "adapter32"],
)
def test_scalenet_2x_param_counts(spec, want):
  model = registry.create_model("llama3_2_1b")
  new = expand.expanded_model(model, spec)
  abstract = new.abstract_params()
  assert new.depths == (32,) and abstract["layers"]["core"]["gate"]["kernel"].shape == (16, D, I)
  assert counting.count_params(abstract) == want


def test_trainable_sets():
  model = registry.create_model("llama3_2_1b", arch=dict(tie_word_embeddings=False))
  for trainable, head in (("adjust_ln", 0), ("adjust_ln_head", D * 128256)):
    spec = ExpansionSpec(trainable=trainable)
    abstract = expand.expanded_model(model, spec).abstract_params()
    pred = counting.matches_any(expand.trainable_patterns(spec))
    assert counting.count_params(abstract, pred) == 2 * L * ADAPTER_MLP + 2 * L * 2 * D + D + head
    for path, want in [
        ("layers/core/q/kernel", False),
        ("layers/seg0/adapter_gate/A/kernel", True),
        ("layers/seg0/attn_norm/scale", True),
        ("norm/scale", True),
        ("embed/embedding", False),
        ("head/kernel", bool(head)),
    ]:
      assert pred(path) == want, (trainable, path)


# ---------------------------------------------------------------------------------------------------------
# ScaleNet expansion: the function at init
# ---------------------------------------------------------------------------------------------------------
def unrolled_reference(mapping):
  """Plain decoder whose layer l' holds its own *copy* of pretrained layer `mapping[l']` (core + norms)."""
  model, pre = pretrained()
  ref = registry.create_model(MICRO, arch=dict(num_hidden_layers=len(mapping)))
  copy = lambda a: np.asarray(a)[np.asarray(mapping)]  # noqa: E731
  params = {**pre, "layers": jax.tree.map(copy, pre["layers"])}
  return ref, params


@pytest.mark.parametrize(
    "spec,mapping",
    [
        (ExpansionSpec(), [0, 0, 1, 1, 2, 2, 3, 3]),
        (ExpansionSpec(mapping="stack", adjust="lora", rank=4), [0, 1, 2, 3, 0, 1, 2, 3]),
    ],
    ids=["interpolate-adapter", "stack-lora"],
)
def test_expanded_init_equals_pretrained_layers_in_mapped_order(spec, mapping):
  model, pre = pretrained()
  new, params = expand.expand(pre, model, spec)
  assert list(new.stack_layouts[0].mapping) == mapping
  # norms are copies of the source layers'; the shared core is the pretrained one, held once
  for norm in ("attn_norm", "mlp_norm"):
    np.testing.assert_array_equal(
        params["layers"]["seg0"][norm]["scale"], pre["layers"]["seg0"][norm]["scale"][mapping]
    )
  assert_trees_equal(params["layers"]["core"], pre["layers"]["core"])
  x = tokens()
  got = logits(new, params, x)
  np.testing.assert_allclose(got, logits(*unrolled_reference(mapping), x), rtol=0, atol=1e-5)
  assert np.abs(got - logits(model, pre, x)).max() > 1e-3  # the reference is not the pretrained function


def test_expanded_export_runs_in_transformers(transformers, torch):
  """The 2x model at init, exported unrolled (adapter keys dropped), is an 8-layer `LlamaForCausalLM`
  with duplicated layers computing the same logits."""
  model, pre = pretrained()
  new, params = expand.expand(pre, model, ExpansionSpec())
  sd = convert.flax_to_hf(params, new)
  adjust = [k for k in sd if ".adjust." in k]
  assert len(adjust) == 8 * 3 * 2  # 8 instances x (gate, up, down) x (A, B)
  hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**model.config.to_hf(), "num_hidden_layers": 8}))
  hf.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items() if ".adjust." not in k}, strict=True)
  x = tokens()
  np.testing.assert_allclose(logits(new, params, x), hf_logits(torch, hf.eval(), x), rtol=0, atol=1e-4)
