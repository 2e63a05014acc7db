"""Tests of scalenet_jax.analysis: linear CKA, block outputs, gradient norms of shared layers, the CLI."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from scalenet_jax.analysis import cka
from scalenet_jax.analysis import probes
from scalenet_jax.errors import ConfigError
from scalenet_jax.grow import expand as grow_lib
from scalenet_jax.grow.spec import ExpansionSpec
from scalenet_jax.models import StackLayout, create_model
from scalenet_jax.models import stack as stack_lib

MODEL = "vit_micro_patch4_28"


# ----------------------------------------------------------------------------------------------
# Linear CKA
# ----------------------------------------------------------------------------------------------
def _orthogonal(rng, d):
  q, r = np.linalg.qr(rng.randn(d, d))
  return q * np.sign(np.diag(r))


def _hsic_unbiased_loops(k, l):
  """Song et al. (2012) unbiased HSIC written out term by term (slow, obviously right)."""
  n = k.shape[0]
  kt, lt = k.copy(), l.copy()
  np.fill_diagonal(kt, 0)
  np.fill_diagonal(lt, 0)
  one = np.ones(n)
  term = np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
  term -= 2.0 / (n - 2) * one @ kt @ lt @ one
  return term / (n * (n - 3))


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_self_is_one_and_invariant_to_rotation_and_scale(unbiased):
  rng = np.random.RandomState(0)
  x = rng.randn(40, 5, 6)  # (examples, tokens, channels): flattened to 30 features
  y = np.tanh(x.reshape(40, -1) @ rng.randn(30, 12)) + 0.3 * rng.randn(40, 12)
  assert cka.linear_cka(x, x, unbiased) == pytest.approx(1.0, abs=1e-12)
  base = cka.linear_cka(x, y, unbiased)
  assert 0.05 < abs(base) < 0.99  # a non-trivial value, so the invariances below mean something
  x_rot = x.reshape(40, -1) @ _orthogonal(rng, 30) * 7.5
  assert cka.linear_cka(x_rot, y, unbiased) == pytest.approx(base, abs=1e-10)
  assert cka.linear_cka(x, 0.01 * y @ _orthogonal(rng, 12), unbiased) == pytest.approx(base, abs=1e-10)
  # Not invariant to a general (non-orthogonal, anisotropic) linear map: the test can tell.
  assert abs(cka.linear_cka(x.reshape(40, -1) * np.linspace(0.01, 10, 30), y, unbiased) - base) > 1e-3


def test_cka_gram_form_matches_feature_form_and_unbiased_formula():
  rng = np.random.RandomState(1)
  x, y = rng.randn(25, 9), rng.randn(25, 4) + rng.randn(25, 1)
  assert cka.linear_cka(x, y) == pytest.approx(cka.linear_cka_features(x, y), rel=1e-10)
  k, l = cka.gram_linear(x), cka.gram_linear(y)
  h = cka.hsic_matrix([k, l], [k, l], unbiased=True)
  for i, a in enumerate((k, l)):
    for j, b in enumerate((k, l)):
      assert h[i, j] == pytest.approx(_hsic_unbiased_loops(a, b), rel=1e-10)
  np.testing.assert_allclose(cka.hsic_self([k, l], unbiased=True), np.diag(h), rtol=1e-12)
  np.testing.assert_allclose(cka.hsic_self([k, l]), np.diag(cka.hsic_matrix([k, l], [k, l])), rtol=1e-12)


def test_cka_of_independent_features_is_small():
  rng = np.random.RandomState(2)
  # Low-dimensional features, many examples: both estimators are near 0.
  a, b = rng.randn(1000, 4), rng.randn(1000, 4)
  assert cka.linear_cka(a, b, unbiased=False) < 0.03
  assert abs(cka.linear_cka(a, b, unbiased=True)) < 0.03
  # Features >> examples (flattened tokens on one batch): the biased estimator is inflated, the unbiased is not.
  a, b = rng.randn(64, 3000), rng.randn(64, 3000)
  assert cka.linear_cka(a, b, unbiased=False) > 0.9
  assert abs(cka.linear_cka(a, b, unbiased=True)) < 0.05


def test_cka_accumulator_matrix_and_errors():
  rng = np.random.RandomState(3)
  layers = [rng.randn(16, 3, 4) for _ in range(3)]
  layers[2] = layers[0] * 2.0  # identical up to scale to layer 0
  m = cka.CKAAccumulator(unbiased=True).update(layers).result()
  assert m.shape == (3, 3)
  np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-12)
  np.testing.assert_allclose(m, m.T, atol=1e-12)
  assert m[0, 2] == pytest.approx(1.0, abs=1e-12)
  # One batch of a cross accumulator equals pairwise linear_cka.
  other = [rng.randn(16, 7), layers[1]]
  cross = cka.CKAAccumulator(unbiased=False).update(layers, other).result()
  assert cross.shape == (3, 2)
  assert cross[1, 0] == pytest.approx(cka.linear_cka(layers[1], other[0]), rel=1e-10)
  assert cross[1, 1] == pytest.approx(1.0, abs=1e-12)
  acc = cka.CKAAccumulator()
  with pytest.raises(ValueError, match="before any update"):
    acc.result()
  with pytest.raises(ValueError, match="at least 4 examples"):
    acc.update([rng.randn(3, 5)])
  acc.update(layers)
  with pytest.raises(ValueError, match="layer counts changed"):
    acc.update(layers[:2])


# ----------------------------------------------------------------------------------------------
# Block outputs and gradient norms on a ScaleNet-expanded micro ViT
# ----------------------------------------------------------------------------------------------
def _random_params(model, seed=0):
  """Random params of every leaf (adapters included, which are zero-init in a real expansion) without
  compiling an init: the tests only need a generic point, and XLA compiles are the slow part here."""
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda a: (0.1 * rng.randn(*a.shape)).astype(a.dtype), model.abstract_params())


@pytest.fixture(scope="module")
def batch():
  return jax.random.normal(jax.random.key(0), (4, 28, 28, 1)), jnp.array([0, 3, 5, 9])


@pytest.fixture(scope="module")
def three_segments():
  # ScaleNet stack mapping over layers 1-2: segments none / adapter / none, core layers 1 and 2 run twice.
  model = grow_lib.expanded_model(create_model(MODEL), ExpansionSpec(kind="scalenet", mapping="stack", subset=(1, 2)))
  return model, _random_params(model)


def test_block_outputs_follow_layout(three_segments, batch):
  model, params = three_segments
  images, labels = batch
  layout = model.stack_layouts[0]
  assert layout.mapping == (0, 1, 2, 1, 2, 3, 4, 5) and len(layout.segments()) == 3
  table = probes.block_table(model)
  assert [b.core for b in table] == list(layout.mapping) and table[3].label == "blocks.3"
  logits, outs = probes.make_block_outputs_fn(model)(params, images)
  assert len(outs) == 8 and all(o.shape == (4, 50, 64) for o in outs)
  # Each sown output equals the block run by hand, one at a time, from the embedded tokens (scan == loop).
  cfg, stack = model.config, params["blocks"]
  patches = images.reshape(4, 7, 4, 7, 4, 1).transpose(0, 1, 3, 2, 4, 5).reshape(4, 49, 16)
  x = patches @ params["patch_embed"]["kernel"].reshape(16, 64) + params["patch_embed"]["bias"]
  x = jnp.concatenate([jnp.broadcast_to(params["cls_token"], (4, 1, 64)), x], 1) + params["pos_embed"]
  for l, core in enumerate(layout.mapping):
    seg, pos = layout.locate(l)
    block = stack_lib.Block(
        cfg.embed_dim, cfg.num_heads, 4 * cfg.embed_dim, layout.adjust[l], model.rank, norm_eps=cfg.norm_eps
    )
    own = jax.tree.map(lambda a: a[pos], stack[f"seg{seg}"])
    x, _ = block.apply({"params": own}, x, (core, None, 0.0, 0), (stack["core"],))
    np.testing.assert_allclose(outs[l], x, rtol=1e-4, atol=1e-4, err_msg=f"block {l}")
  # The sown output of the last block is what the final LayerNorm + head see.
  norm = jax.vmap(lambda t: jax.nn.standardize(t, epsilon=1e-6))(outs[-1][:, 0])
  head = norm * params["norm"]["scale"] + params["norm"]["bias"]
  head = head @ params["head"]["kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(head, logits, rtol=1e-4, atol=1e-4)


def test_layer_grad_norms_bookkeeping(three_segments):
  """Norms per distinct core layer and per block, across segments, on a gradient tree of known values."""
  model, params = three_segments
  grads = jax.tree.map(np.zeros_like, params)
  # core layer c gets value c+1 in every entry; block l's own params get value 10 + l.
  n_core = sum(int(np.prod(a.shape[1:])) for a in jax.tree.leaves(params["blocks"]["core"]))
  grads["blocks"]["core"] = jax.tree.map(
      lambda a: np.broadcast_to(np.arange(1.0, 7.0).reshape(-1, *[1] * (a.ndim - 1)), a.shape), params["blocks"]["core"]
  )
  sizes = []
  for k, (start, stop, _) in enumerate(model.stack_layouts[0].segments()):
    seg = params["blocks"][f"seg{k}"]
    sizes += [sum(int(np.prod(a.shape[1:])) for a in jax.tree.leaves(seg))] * (stop - start)
    grads["blocks"][f"seg{k}"] = jax.tree.map(
        lambda a: np.broadcast_to(np.arange(10.0 + start, 10.0 + stop).reshape(-1, *[1] * (a.ndim - 1)), a.shape), seg
    )
  grads["head"]["bias"] = np.full_like(params["head"]["bias"], 2.0)
  out = probes.layer_grad_norms(model, grads)
  np.testing.assert_allclose(out["core"]["blocks"], np.arange(1.0, 7.0) * np.sqrt(n_core))
  np.testing.assert_allclose(out["block"]["blocks"], (10.0 + np.arange(8)) * np.sqrt(sizes))
  assert sizes[0] < sizes[1]  # adapter blocks own more params than plain ones
  assert out["mapping"]["blocks"] == [0, 1, 2, 1, 2, 3, 4, 5]
  assert out["other"] == pytest.approx(2.0 * np.sqrt(10))


def test_shared_core_gradient_is_sum_over_instances(batch):
  images, labels = batch
  # One segment (adapters everywhere) keeps the two gradient compiles cheap; layers 1, 2 run twice.
  layout = StackLayout(6, (0, 1, 2, 1, 2, 3, 4, 5), ("adapter",) * 8)
  model = create_model(MODEL, layouts=(layout,))
  params = _random_params(model, 1)
  norms = probes.gradient_norms(model, params, images, labels, per_instance=True)
  assert len(norms["core"]["blocks"]) == layout.num_core == 6  # one entry per distinct shared layer
  assert len(norms["block"]["blocks"]) == len(norms["core_instance"]["blocks"]) == layout.depth == 8
  assert all(np.isfinite(v) and v > 0 for v in norms["core"]["blocks"] + norms["block"]["blocks"])
  assert np.isfinite(norms["loss"]) and norms["other"] > 0

  # The unshared copy computes the same function (same loss) ...
  umodel, uparams = probes.unshare(model, params)
  assert umodel.stack_layouts[0].num_core == 8 and not probes.is_shared(umodel) and probes.is_shared(model)
  loss, g = probes.make_grad_fn(model)(params, images, labels)  # cached: compiled by gradient_norms
  uloss, ug = probes.make_grad_fn(umodel)(uparams, images, labels)
  assert float(uloss) == pytest.approx(float(loss), rel=1e-6)
  assert float(loss) == pytest.approx(norms["loss"], rel=1e-6)
  # ... and the shared gradient of core[c] is the sum of its instances' gradients.
  mapping = np.asarray(layout.mapping)
  for shared, inst in zip(jax.tree.leaves(g["blocks"]["core"]), jax.tree.leaves(ug["blocks"]["core"])):
    summed = np.zeros_like(np.asarray(shared))
    np.add.at(summed, mapping, np.asarray(inst))
    np.testing.assert_allclose(shared, summed, rtol=1e-4, atol=1e-6)
  # Layers run once: the distinct-layer norm is the instance norm; layers run twice: it is not.
  inst = norms["core_instance"]["blocks"]
  for c in (0, 3, 4, 5):
    assert norms["core"]["blocks"][c] == pytest.approx(inst[list(mapping).index(c)], rel=1e-5)
  assert norms["core"]["blocks"][1] != pytest.approx(inst[1], rel=1e-3)
  np.testing.assert_allclose(
      norms["block"]["blocks"], probes.layer_grad_norms(umodel, ug)["block"]["blocks"], rtol=1e-4
  )


# ----------------------------------------------------------------------------------------------
# CLI end to end
# ----------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_cli_end_to_end(tmp_path):
  helpers.fashion_mnist_dir()
  from scalenet_jax.analysis import __main__ as cli
  from scalenet_jax.analysis import demo_config
  from scalenet_jax.analysis import report

  out = tmp_path / "analysis"
  # A subprocess, as a user runs it; XLA's cheapest CPU compile mode, since compiling the ~10 programs
  # (grads, block outputs, inits of every expansion) is nearly all the run time.
  env = {
      **os.environ,
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": (
          os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
          " --xla_llvm_disable_expensive_passes=true"
      ).strip(),
  }
  # The default config: the demo's ScaleNet run of the shipped base, whose release file brings the model
  # and its normalisation.
  cmd = [
      sys.executable,
      "-m",
      "scalenet_jax.analysis",
      "--out",
      str(out),
      "--batch=8",
      "--num_batches=2",
      "--eval_examples=16",
      "--compare=scalenet,random",
      "--layers=0,7,11",
  ]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "top-1 scalenet @init" in proc.stdout
  for name in report.FIGURES:
    data = (out / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
  saved = json.loads((out / "results.json").read_text())
  assert saved["figures"] == [str(out / n) for n in report.FIGURES]
  assert saved["accuracy"]["examples"] == 16
  assert set(saved["accuracy"]["top1"]) == {"pretrained", "scalenet @init", "random @init"}
  run = saved["config"]  # the run's config_lib config, as the trainer read it
  assert run["model"]["name"] == MODEL and run["init_from"] == str(demo_config.GROW.RELEASED)
  assert run["data"]["mean"] == [0.286] and run["data"]["pad"] == 0 and run["expansion"]["kind"] == "scalenet"
  assert saved["options"]["layers"] == [0, 7, 11] and saved["options"]["batch"] == 8
  assert saved["accuracy"]["top1"]["pretrained"] >= 0.75  # the 90% base (init would give ~10%)
  grads = saved["grad_norms"]
  assert grads.keys() == {"pretrained", "scalenet", "random"}
  assert len(grads["scalenet"]["core"]["blocks"]) == 6  # 12 blocks over 6 distinct shared core layers
  assert len(grads["scalenet"]["block"]["blocks"]) == len(grads["scalenet"]["core_instance"]["blocks"]) == 12
  assert len(grads["random"]["core"]["blocks"]) == saved["models"]["random"]["blocks"] > 6
  assert "core_instance" not in grads["random"]  # independent layers: nothing shared
  assert [h["scaled_block"] for h in saved["activations"]] == [0, 7, 11]
  assert [h["pretrained_block"] for h in saved["activations"]] == [0, 3, 5]  # interpolate: 0,0,1,1,...
  assert set(saved["activations"][0]["series"]) == {"pretrained", "scalenet @init"}
  pairs = {(p["rows"], p["cols"]): np.array(p["matrix"], float) for p in saved["cka"]["pairs"]}
  assert pairs.keys() == {("pretrained", "pretrained"), ("scalenet @init", "pretrained")}
  assert pairs[("pretrained", "pretrained")].shape == (6, 6)
  assert pairs[("scalenet @init", "pretrained")].shape == (12, 6)
  np.testing.assert_allclose(np.diag(pairs[("pretrained", "pretrained")]), 1.0, atol=1e-9)
  # ScaleNet at init: its first block runs pretrained layer 0 on the same input, so the outputs are equal.
  assert pairs[("scalenet @init", "pretrained")][0, 0] == pytest.approx(1.0, abs=1e-9)

  # A bad command line is one line and exit code 2; a config without an expansion has nothing to compare.
  with pytest.raises(SystemExit, match="2"):
    cli.main(["--config.init_from="])  # no --out
  with pytest.raises(SystemExit, match="2"):
    cli.main(["--out", str(tmp_path / "x"), "--config.expansion.knd=scalenet"])
  with pytest.raises(ConfigError, match="set --config.expansion.kind"):
    cli.main(["--out", str(tmp_path / "x"), "--config.init_from=", "--config.expansion.kind="])
  # Bad layer selections fail fast, before any params are built (empty init_from: random base params).
  with pytest.raises(ValueError, match="out of range: the scaled model has 12 blocks"):
    cli.main(["--config.init_from=", "--out", str(tmp_path / "x"), "--layers=12"])
  with pytest.raises(ValueError, match="unknown expansion kind"):
    cli.main(["--config.init_from=", "--out", str(tmp_path / "x"), "--compare=nope"])


def _shapes(model):
  return jax.tree.map(lambda a: a.shape, model.abstract_params())


def test_swin_analysis_builds_the_trained_model(tmp_path):
  """The analyses build every expansion from the run's config, as the trainer does. A Swin ScaleNet run has
  adjustment modules in every block of its grown stage (the family's adjust_scope, 'all'); the analyses'
  former own schema left adjust_scope at 'reused' and analysed a model the run never trained."""
  from scalenet_jax import builder, config_lib, study
  from scalenet_jax.analysis import __main__ as cli
  from scalenet_jax.analysis import report

  swin = helpers.REPO / "pretrained" / "swin_micro_patch2_window4_32_fmnist.safetensors"
  config, options = cli.parse([f"--config={cli.DEFAULT_CONFIG}:base={swin}", "--out", str(tmp_path)])
  # The run analysed: the demo's ScaleNet row of the Swin base (stack mapping over the last stage), as the
  # study runner builds it from the demo's plan.
  demo = study.Study(f"{helpers.REPO / 'configs' / 'grow_study.py'}:demo,base={swin}")
  trained = config_lib.resolve(demo.config(next(r for r in demo.plan["runs"] if r["arm"] == "scalenet")))
  assert config.model.name == "swin_micro_patch2_window4_32" and config.data.pad == 2  # the base's 32x32 input
  spec = builder.expansion_spec(trained)
  assert spec.adjust_scope == "all"
  base = builder.base_model(config)
  # The test can tell: the 'reused' scope builds another param tree (no adapters on the kept blocks).
  reused = grow_lib.expanded_model(base, dataclasses.replace(spec, adjust_scope="reused"))
  assert _shapes(reused) != _shapes(grow_lib.expanded_model(base, spec))
  for kind in options.compare:  # the analysed expansion and the compared ones alike
    expected = builder.build_model(config_lib.override(config_lib.resolve(trained), {"expansion.kind": kind}))
    got = grow_lib.expanded_model(base, report.expansion_spec(config, kind))
    assert got.stack_layouts == expected.stack_layouts, kind
    assert _shapes(got) == _shapes(expected), kind
