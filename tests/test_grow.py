"""ScaleNet-grow expansion engine: function at init, real sharing, exact parameter arithmetic, summed
gradients, Swin shift pattern, baselines and spec validation.

References are built independently of grow/expand.py: a *plain* deeper model whose layer l' holds copies
of pretrained layer g(l') (the mapping of doc §1, re-derived here), with params written by hand.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_params
from scalenet_jax import convert, counting
from scalenet_jax.grow import expand
from scalenet_jax.grow import spec as spec_lib
from scalenet_jax.grow.spec import ExpansionSpec
from scalenet_jax.models import registry
from scalenet_jax.models import stack as stack_lib

VIT = "vit_micro_patch4_28"  # 6 blocks, width 64
SWIN = "swin_micro_patch2_window4_32"  # stages 16x16 / 8x8 / 4x4 tokens, window 4, widths 32/64/128, 2 blocks each
ADJUST_PER_RD = {"adapter": 10, "lora": 16, "none": 0}  # params of one instance's adjustment / (rank * width)


# ---------------------------------------------------------------------------------------------------------
# Cached pretrained models and expansions (each expansion compiles an init, which is the slow part)
# ---------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def pretrained(name):
  model = registry.create_model(name)
  return model, random_params(model.abstract_params(), seed=7)


@functools.lru_cache(maxsize=None)
def expanded(name, spec):
  model, pre = pretrained(name)
  return expand.expand(pre, model, spec)


def images(model, batch=2, seed=0):
  cfg = model.config
  return (
      np.random.default_rng(seed).standard_normal((batch, cfg.img_size, cfg.img_size, cfg.in_chans)).astype(np.float32)
  )


def quick_jit(fn, *args):
  """Compile `fn` for `args` with XLA's backend optimisations off: compiling, not running, is what
  costs here (2x faster on CPU; the numerics stay fp32)."""
  return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})


def logits(model, params, x):
  p = {"params": params}
  return np.asarray(quick_jit(model.apply, p, x)(p, x))


@functools.lru_cache(maxsize=None)
def expanded_logits(name, spec):
  new, params = expanded(name, spec)
  return logits(new, params, images(new))


@functools.lru_cache(maxsize=None)
def pretrained_logits(name):
  model, pre = pretrained(name)
  return logits(model, pre, images(model))


def leaves_equal(a, b):
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


# ---------------------------------------------------------------------------------------------------------
# Independent reference: the doc's mapping and the unrolled plain model
# ---------------------------------------------------------------------------------------------------------
def doc_mapping(num_layers, reuse, mapping, subset):
  """g(l') of doc §1; for a subset S, stack puts the R-1 extra rounds of S right after S's last layer."""
  if isinstance(mapping, tuple):
    return list(mapping)
  s = sorted(range(num_layers) if subset is None else subset)
  out = []
  for l in range(num_layers):
    if mapping == "interpolate":
      out += [l] * (reuse if l in s else 1)
    else:
      out += [l] + (s * (reuse - 1) if l == s[-1] else [])
  return out


def stacks_and_mappings(name, spec):
  """{stack name: (pretrained depth, mapping)} of the stacks `spec` expands, from the doc's rules."""
  if name == VIT:
    return {"blocks": (6, doc_mapping(6, spec.reuse, spec.mapping, spec.subset))}
  stages = spec.subset if spec.subset is not None else (2,)
  return {f"stage{i}": (2, doc_mapping(2, spec.reuse, spec.mapping, None)) for i in stages}


def unrolled_reference(name, spec):
  """Plain model whose block l' has its own *copy* of pretrained layer g(l') (core and LayerNorms)."""
  _, pre = pretrained(name)
  maps = stacks_and_mappings(name, spec)
  if name == VIT:
    arch = dict(depth=len(maps["blocks"][1]))
  else:
    arch = dict(depths=tuple(len(maps[f"stage{i}"][1]) if f"stage{i}" in maps else 2 for i in range(3)))
  ref = registry.create_model(name, arch=arch)
  params = dict(pre)
  for stack, (_, m) in maps.items():
    copy = lambda a: np.array(a)[np.asarray(m)]  # noqa: E731
    params[stack] = {"core": jax.tree.map(copy, pre[stack]["core"]), "seg0": jax.tree.map(copy, pre[stack]["seg0"])}
  return ref, params


def expected_param_count(base, widths_and_maps, adjust, rank):
  """doc §2: base + adjustment of every instance of a reused layer + two LayerNorms per new layer."""
  total = base
  for d, num_layers, mapping, subset in widths_and_maps:
    instances = sum(1 for m in mapping if m in subset)
    total += instances * ADJUST_PER_RD[adjust] * rank * d + (len(mapping) - num_layers) * 4 * d
  return total


def widths_and_maps(name, spec):
  maps = stacks_and_mappings(name, spec)
  out = []
  for stack, (num_layers, m) in maps.items():
    d = 64 if name == VIT else 32 * 2 ** int(stack[-1])
    subset = set(range(num_layers) if (spec.subset is None or name != VIT) else spec.subset)
    out.append((d, num_layers, m, subset))
  return out


# Every mapping, R in {2, 3}, every adjustment and several subsets, without the full product: each
# case costs three compilations (init of the expanded model, its forward, the reference's forward).
# doc_mapping vs the layouts is checked for the whole product in test_doc_mapping_table.
VIT_CASES = [
    ExpansionSpec(mapping="interpolate", reuse=2, adjust="adapter"),  # the DeiT default
    ExpansionSpec(mapping="stack", reuse=3, adjust="lora", rank=4, subset=(0, 1, 2)),  # 0,1,2,0,1,2,0,1,2,3,4,5
    ExpansionSpec(mapping=(0, 1, 2, 3, 4, 5, 5, 4, 3), reuse=2, adjust="adapter", rank=8, act="relu", subset=(3, 4, 5)),
    ExpansionSpec(mapping="stack", reuse=2, adjust="none"),  # WSPT only
]
SWIN_CASES = [
    ExpansionSpec(mapping="stack", reuse=2, adjust="adapter"),  # the Swin default: last stage
    # stage 0 (16x16 tokens, window 4) really shifts; stage 2 fits one window (no shift)
    ExpansionSpec(mapping="interpolate", reuse=3, adjust="lora", rank=4, subset=(0, 2)),
]
CASES = [(VIT, s) for s in VIT_CASES] + [(SWIN, s) for s in SWIN_CASES]


def case_id(case):
  name, s = case
  m = s.mapping if isinstance(s.mapping, str) else "explicit"
  return f"{name.split('_')[0]}-{m}-R{s.reuse}-{s.adjust}-subset{''.join(map(str, s.subset or ())) or 'default'}"


# ---------------------------------------------------------------------------------------------------------
# Mappings, function at init, sharing, parameter arithmetic
# ---------------------------------------------------------------------------------------------------------
def test_doc_mapping_table():
  assert doc_mapping(3, 2, "interpolate", None) == [0, 0, 1, 1, 2, 2]
  assert doc_mapping(3, 3, "stack", None) == [l % 3 for l in range(9)]
  subsets = (None, (0, 1, 2), (3, 4, 5), (1, 4))
  for reuse, mapping, subset in itertools.product((2, 3), ("interpolate", "stack"), subsets):
    spec = ExpansionSpec(reuse=reuse, mapping=mapping, subset=subset)
    (layout,) = spec_lib.model_layouts((6,), spec)
    assert list(layout.mapping) == doc_mapping(6, reuse, mapping, subset)
    s = set(range(6) if subset is None else subset)
    assert layout.adjust == tuple("adapter" if m in s else "none" for m in layout.mapping)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_function_at_init_equals_unrolled_reference(case):
  name, spec = case
  new, params = expanded(name, spec)
  for stack, (_, m) in stacks_and_mappings(name, spec).items():
    i = 0 if stack == "blocks" else int(stack[-1])
    assert list(new.stack_layouts[i].mapping) == m
  ref, ref_params = unrolled_reference(name, spec)
  x = images(new)
  want = logits(ref, ref_params, x)
  np.testing.assert_allclose(expanded_logits(name, spec), want, rtol=0, atol=1e-5)
  # the reference is not the pretrained function itself (else this test could not tell)
  assert np.abs(pretrained_logits(name) - want).max() > 1e-3


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_shared_tensors_held_once_and_exact_param_count(case):
  name, spec = case
  model, pre = pretrained(name)
  new, params = expanded(name, spec)
  for stack, (num_layers, m) in stacks_and_mappings(name, spec).items():
    core = params[stack]["core"]
    assert core["fc1"]["kernel"].shape[0] == num_layers < len(m)
    assert leaves_equal(core, pre[stack]["core"])  # the pretrained tensors themselves, unchanged
  base = counting.count_params(pre)
  want = expected_param_count(base, widths_and_maps(name, spec), spec.adjust, spec.rank)
  assert counting.count_params(params) == want
  assert counting.count_params(new.abstract_params()) == want  # structure agrees with the params
  # the non-stack params are the pretrained ones
  for k in pre:
    if k not in stacks_and_mappings(name, spec):
      assert leaves_equal(params[k], pre[k]), k


@pytest.mark.parametrize(
    "name,d,pretrained_depth,new_layers,instances",
    [
        ("deit_tiny_patch16_224", 192, 12, 12, 24),
        ("deit_small_patch16_224", 384, 12, 12, 24),
        ("deit_base_patch16_224", 768, 12, 12, 24),
        ("swin_tiny_patch4_window7_224", 768, 2, 2, 4),
        ("swin_small_patch4_window7_224", 768, 2, 2, 4),
        ("swin_base_patch4_window7_224", 1024, 2, 2, 4),
    ],
)
def test_full_size_default_param_counts(name, d, pretrained_depth, new_layers, instances):
  """Defaults (DeiT: interpolate 2x; Swin: stack 2x on the last stage; adapters r=16), shapes only."""
  model = registry.create_model(name)
  spec = ExpansionSpec() if name.startswith("deit") else ExpansionSpec(mapping="stack")
  new = expand.expanded_model(model, spec)
  abstract = new.abstract_params()
  stack = "blocks" if name.startswith("deit") else "stage3"
  assert abstract[stack]["core"]["qkv"]["kernel"].shape == (pretrained_depth, d, 3 * d)
  base = counting.count_params(model.abstract_params())
  assert counting.count_params(abstract) == base + instances * 10 * 16 * d + new_layers * 4 * d


def test_trainable_set_adjust_ln_head():
  model = registry.create_model("deit_base_patch16_224")
  spec = ExpansionSpec(trainable="adjust_ln_head")
  abstract = expand.expanded_model(model, spec).abstract_params()
  pred = counting.matches_any(expand.trainable_patterns(spec))
  d = 768
  # adapters of 24 instances, 2 LNs of 24 blocks + the final LN, the head
  assert counting.count_params(abstract, pred) == 24 * 10 * 16 * d + 24 * 4 * d + 2 * d + d * 1000 + 1000
  for path, want in [
      ("blocks/core/qkv/kernel", False),
      ("blocks/seg0/adapter_fc1/A/kernel", True),
      ("blocks/seg0/norm1/scale", True),
      ("head/kernel", True),
      ("norm/bias", True),
      ("patch_embed/kernel", False),
      ("pos_embed", False),
      ("cls_token", False),
      ("merge1/norm/scale", True),
      ("merge1/reduction/kernel", False),
      ("patch_norm/bias", True),
  ]:
    assert pred(path) == want, path
  assert counting.matches_any(expand.trainable_patterns(ExpansionSpec()))("blocks/core/qkv/kernel")
  scratch = counting.matches_any(expand.trainable_patterns(ExpansionSpec(kind="scratch", trainable="adjust_ln_head")))
  assert scratch("blocks/core/qkv/kernel") and scratch("patch_embed/kernel")  # nothing pretrained to freeze


# ---------------------------------------------------------------------------------------------------------
# Sharing is real: gradients sum over the tied blocks
# ---------------------------------------------------------------------------------------------------------
def perturb_adjust_b(params, seed=0):
  """Non-zero adapter / LoRA B, so the instances of a shared layer really differ."""
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    keys = [str(getattr(k, "key", k)) for k in path]
    if len(keys) >= 2 and keys[-2] == "B":
      return (0.05 * rng.standard_normal(a.shape)).astype(a.dtype)
    return a

  return jax.tree_util.tree_map_with_path(leaf, params)


def test_grad_of_shared_core_is_sum_over_tied_copies():
  """ViT, stack 3x on layers 0-2 with LoRA on all four linears (a LoRA segment then a plain one).

  Swin gathers its blocks' core (incl. the relative-position table) by the same code; its backward
  compiles too slowly on 2 cores to repeat here.
  """
  name, spec = CASES[1]
  new, params = expanded(name, spec)
  params = perturb_adjust_b(params)
  layout = new.stack_layouts[0]
  mapping = np.asarray(layout.mapping)
  # Reference: the same blocks and adjustments, but every block owns a copy of its core layer.
  untied = new.with_layouts([stack_lib.StackLayout(layout.depth, tuple(range(layout.depth)), layout.adjust)])
  ref_params = dict(params)
  ref_params["blocks"] = {
      **params["blocks"],
      "core": jax.tree.map(lambda a: np.asarray(a)[mapping], params["blocks"]["core"]),
  }
  x = images(new)
  w = np.random.default_rng(1).standard_normal((2, 10)).astype(np.float32)

  def grads(model, p):
    return quick_jit(jax.value_and_grad(lambda p: jnp.sum(model.apply({"params": p}, x) * w)), p)(p)

  l_tied, g_tied = grads(new, params)
  l_untied, g_untied = grads(untied, ref_params)
  np.testing.assert_allclose(l_tied, l_untied, rtol=1e-5)
  # the adjusted function differs from the init one (B really non-zero)
  assert np.abs(logits(new, params, x) - expanded_logits(name, spec)).max() > 1e-4
  for path, g in jax.tree_util.tree_leaves_with_path(g_tied["blocks"]["core"]):
    gu = np.asarray(_get(g_untied["blocks"]["core"], path))
    summed = np.stack([gu[mapping == c].sum(0) for c in range(layout.num_core)])
    np.testing.assert_allclose(np.asarray(g), summed, rtol=1e-4, atol=1e-6)
  # the tied copies get different gradients, so summing (not e.g. taking one copy) is what is checked
  gu = np.asarray(g_untied["blocks"]["core"]["fc1"]["kernel"])
  c = int(np.bincount(mapping).argmax())
  copies = gu[mapping == c]
  assert len(copies) >= 2 and np.abs(copies[0] - copies[1]).max() > 1e-6
  # per-block params (LNs, adjustments) get identical gradients in both
  for k in params["blocks"]:
    if k != "core":
      for a, b in zip(jax.tree.leaves(g_tied["blocks"][k]), jax.tree.leaves(g_untied["blocks"][k])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def _get(tree, path):
  for k in path:
    tree = tree[getattr(k, "key", k)]
  return tree


# ---------------------------------------------------------------------------------------------------------
# Swin: shifted-window alternation follows the block's position in the scaled stage
# ---------------------------------------------------------------------------------------------------------
def test_swin_shift_follows_position_in_scaled_stage():
  """Stage 0 (16x16 tokens, window 4: shifts are real) expanded by interpolate 3x: mapping 0,0,0,1,1,1.

  Position rule: shifts 0,1,0,1,0,1. The source layer's parity would give 0,0,0,1,1,1.
  """
  spec = SWIN_CASES[1]
  new, params = expanded(SWIN, spec)
  layout = new.stack_layouts[0]
  mapping = list(layout.mapping)
  assert mapping == [0, 0, 0, 1, 1, 1] and set(layout.adjust) == {"lora"}
  window = stack_lib.WindowSpec.for_stage((16, 16), 4)
  assert window.shift == 2
  stage = perturb_adjust_b(params["stage0"])  # non-zero LoRA: the blocks' own params matter too
  x = np.random.default_rng(3).standard_normal((2, 256, 32)).astype(np.float32)
  got = stack_lib.BlockStack(layout, 32, 2, rank=spec.rank, window=window).apply({"params": stage}, x)
  got = np.asarray(got)

  # One block at a time, with an explicit shift flag. CoreStack hands blocks the table as 'rel_pos'.
  core = {k: v for k, v in stage["core"].items() if k != "rel_pos_bias_table"}
  core["rel_pos"] = stage["core"]["rel_pos_bias_table"]
  block = stack_lib.Block(32, 2, 128, "lora", rank=spec.rank, window=window)
  run_block = jax.jit(lambda p, h, idx, shift: block.apply({"params": p}, h, (idx, None, 0.0, shift), (core,))[0])

  def run(shifts):
    h = x
    for l, (c, sh) in enumerate(zip(mapping, shifts)):
      h = run_block(jax.tree.map(lambda a: a[l], stage["seg0"]), h, c, sh)
    return np.asarray(h)

  np.testing.assert_allclose(got, run([l % 2 for l in range(6)]), rtol=0, atol=1e-5)
  for other in ([c % 2 for c in mapping], [0] * 6):
    assert np.abs(got - run(other)).max() > 1e-3, other


# ---------------------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------------------
def layer(stack, i):
  return jax.tree.map(lambda a: np.asarray(a)[i], {"core": stack["core"], "ln": stack["seg0"]})


def _count_with_new_layers(name, k, stage=2):
  arch = dict(depth=6 + k) if name == VIT else dict(depths=tuple(2 + (k if i == stage else 0) for i in range(3)))
  return counting.count_params(registry.create_model(name, arch=arch).abstract_params())


@pytest.mark.parametrize(
    "name,kind", [(VIT, "random"), (VIT, "stack"), (VIT, "interpolate"), (VIT, "swa"), (SWIN, "stack")]
)
def test_baseline(name, kind):
  spec = ExpansionSpec(kind=kind, mapping="stack" if name == SWIN else "interpolate", seed=1)
  model, pre = pretrained(name)
  new, params = expanded(name, spec)
  stack = "blocks" if name == VIT else "stage2"
  num_layers = 6 if name == VIT else 2
  grown = new.depths
  k = grown[0] - 6 if name == VIT else grown[2] - 2
  assert k >= 1 and (name == VIT or grown[:2] == (2, 2))
  # parameter matched: k minimises |params - ScaleNet params|
  target = counting.count_params(expand.expanded_model(model, ExpansionSpec(mapping=spec.mapping)).abstract_params())
  assert counting.count_params(params) == _count_with_new_layers(name, k)
  gap = lambda j: abs(_count_with_new_layers(name, j) - target)  # noqa: E731
  assert gap(k) <= gap(k + 1) and (k == 1 or gap(k) <= gap(k - 1))

  old = [layer(pre[stack], i) for i in range(num_layers)]
  got = [layer(params[stack], i) for i in range(num_layers + k)]
  same = lambda a, b: leaves_equal(a, b)  # noqa: E731
  if kind == "interpolate":
    # every layer is a pretrained one, in order; each copy directly follows its source
    src = [next(j for j in range(num_layers) if same(g, old[j])) for g in got]
    assert src == sorted(src) and set(src) == set(range(num_layers))
    dup = [i for i in range(1, len(src)) if src[i] == src[i - 1]]
    assert len(dup) == k
  else:
    assert all(same(got[i], old[i]) for i in range(num_layers))  # originals first, unchanged
    new_layers = got[num_layers:]
    if kind == "stack":
      for j, g in enumerate(new_layers):
        assert same(g, old[j % num_layers])
    elif kind == "random":
      for g in new_layers:
        assert not any(np.allclose(g["core"]["fc1"]["kernel"], o["core"]["fc1"]["kernel"]) for o in old)
        assert np.abs(g["core"]["fc1"]["kernel"]).max() > 0
    else:  # swa: the mean of some set of >= 2 pretrained layers (found by brute force)
      for g in new_layers:
        matches = [
            s
            for r in range(2, num_layers + 1)
            for s in itertools.combinations(range(num_layers), r)
            if all(
                np.allclose(a, np.mean([jax.tree.leaves(old[i])[n] for i in s], 0), atol=1e-7)
                for n, a in enumerate(jax.tree.leaves(g))
            )
        ]
        assert len(matches) == 1, matches
  # under adjust_ln_head exactly the new layers' rows of the grown stack train
  rows = expand.trainable_rows(model, dataclasses.replace(spec, trainable="adjust_ln_head"))
  is_new = [i in dup if kind == "interpolate" else i >= num_layers for i in range(len(got))]
  assert list(rows[stack]) == is_new and sum(is_new) == k
  assert all(not r.any() for key, r in rows.items() if key != stack)
  for key in pre:  # everything outside the grown stack is the pretrained model
    if key != stack:
      assert leaves_equal(params[key], pre[key]), key
  assert leaves_equal(pre, random_params(model.abstract_params(), seed=7))  # input not mutated


def test_baseline_explicit_layer_count():
  model, _ = pretrained(VIT)
  spec = ExpansionSpec(kind="stack", num_new_layers=4)
  assert expand.expanded_model(model, spec).depths == (10,)


def test_scratch_baseline():
  model, pre = pretrained(VIT)
  new, params = expanded(VIT, ExpansionSpec(kind="scratch", reuse=2))
  assert new.depths == (12,)
  assert new.is_plain  # independent layers
  core = params["blocks"]["core"]["fc1"]["kernel"]
  assert core.shape[0] == 12
  assert not np.allclose(params["patch_embed"]["kernel"], pre["patch_embed"]["kernel"])
  assert not any(np.allclose(core[i], pre["blocks"]["core"]["fc1"]["kernel"][j]) for i in range(12) for j in range(6))


def test_expand_takes_new_params_from_fresh():
  """`fresh` (e.g. a train state's init) supplies the new params; shared core and LNs stay pretrained."""
  model, pre = pretrained(VIT)
  spec = VIT_CASES[0]
  new = expand.expanded_model(model, spec)
  fresh = random_params(new.abstract_params(), seed=11)
  _, params = expand.expand(pre, model, spec, fresh=fresh)
  seg = params["blocks"]["seg0"]
  assert leaves_equal(seg["adapter_fc1"], fresh["blocks"]["seg0"]["adapter_fc1"])
  assert leaves_equal(params["blocks"]["core"], pre["blocks"]["core"])
  np.testing.assert_array_equal(
      seg["norm2"]["scale"], np.asarray(pre["blocks"]["seg0"]["norm2"]["scale"])[np.repeat(np.arange(6), 2)]
  )
  assert leaves_equal(params["head"], pre["head"])


def test_expand_rejects_expanded_model():
  new, params = expanded(VIT, VIT_CASES[0])
  with pytest.raises(ValueError, match="plain"):
    expand.expand(params, new, ExpansionSpec())


# ---------------------------------------------------------------------------------------------------------
# Spec validation
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(reuse=0), r"reuse times R must be >= 1, got 0"),
        (dict(rank=0), r"rank must be > 0, got 0"),
        (dict(adjust="lora", rank=-4), r"rank must be > 0, got -4"),
        (dict(kind="distill"), r"unknown expansion kind 'distill'"),
        (dict(mapping="random"), r"unknown mapping 'random'"),
        (dict(adjust="prompt"), r"unknown adjustment 'prompt'"),
        (dict(trainable="some"), r"unknown trainable set 'some'"),
        (dict(num_new_layers=-1), r"num_new_layers must be >= 0"),
    ],
)
def test_spec_validation(kwargs, msg):
  with pytest.raises(ValueError, match=msg):
    ExpansionSpec(**kwargs)


@pytest.mark.parametrize(
    "family,depths,kwargs,msg",
    [
        ("vit", (6,), dict(mapping=(0, 1, 2)), r"explicit mapping has 3 entries; expected L' = 12"),
        ("vit", (6,), dict(mapping=(0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 6)), r"explicit mapping index 6 out of range"),
        ("vit", (6,), dict(subset=(2, 6)), r"reused layer index 6 out of range: the stack has 6 layers"),
        ("vit", (6,), dict(subset=(-1,)), r"reused layer index -1 out of range"),
        ("swin", (2, 2, 2), dict(subset=(3,)), r"stage 3 out of range: the model has stages 0..2"),
    ],
)
def test_layout_validation(family, depths, kwargs, msg):
  with pytest.raises(ValueError, match=msg):
    spec_lib.model_layouts(depths, ExpansionSpec(**kwargs))


# ---------------------------------------------------------------------------------------------------------
# Export of an expanded model runs in timm as a plain deeper model
# ---------------------------------------------------------------------------------------------------------
def test_expanded_export_runs_in_timm(timm, torch):
  spec = VIT_CASES[0]
  new, params = expanded(VIT, spec)
  sd = convert.flax_to_timm(params, new)
  adjust_keys = [k for k in sd if ".adjust." in k]
  assert len(adjust_keys) == 12 * 2 * 2  # 12 instances x (fc1, fc2) x (A, B)
  plain = {k: torch.from_numpy(v) for k, v in sd.items() if ".adjust." not in k}
  tm = timm.create_model("vit_base_patch16_224", pretrained=False, **registry.arch_kwargs(VIT, depth=12)).eval()
  tm.load_state_dict(plain, strict=True)
  x = images(new)
  with torch.no_grad():
    want = tm(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(expanded_logits(VIT, spec), want, rtol=0, atol=1e-5)
