"""Tests of the generic sharded train step (scalenet_jax/train/{optim,sharding,step}.py).

The device-layout comparisons run in subprocesses (the device count must be fixed before jax starts):
one with 8 fake CPU devices, one with 1 device as the reference, side by side. Everything else runs here
on one device and shares compiled steps where it can (compilation dominates the runtime).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mp_common
from mp_launch import start_worker, worker_result
from scalenet_jax import builder, counting
from scalenet_jax.train import objectives, optim, sharding, step


@pytest.fixture(scope="module")
def eight_device_results():
  """(results on 8 devices, results on 1 device), both in subprocesses running side by side."""
  multi, single = start_worker("layouts", 8), start_worker("layouts", 1)
  return worker_result(multi), worker_result(single)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))


@pytest.mark.parametrize("name", [c[0] for c in mp_common.CONFIGS])
def test_sharded_layouts_match_single_device(eight_device_results, name):
  multi, single = eight_device_results[0][name], eight_device_results[1][name]
  assert _rel(multi["losses"], single["losses"]) <= 1e-5, (multi["losses"], single["losses"])
  # Loss moved, so the comparison is over a real trajectory (lr is 0 only on step 0 of the warmup).
  assert abs(single["losses"][-1] - single["losses"][1]) > 1e-3
  np.testing.assert_allclose(multi["params"], single["params"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(multi["ema"], single["ema"], rtol=1e-4, atol=1e-6)
  if single["model_state"] is not None:  # BatchNorm statistics: global-batch (synchronised) stats
    np.testing.assert_allclose(multi["model_state"], single["model_state"], rtol=1e-5, atol=1e-6)
  assert multi["eval"]["count"] == single["eval"]["count"] == 13
  assert multi["eval"]["correct1"] == single["eval"]["correct1"]
  assert _rel(multi["eval"]["loss_sum"], single["eval"]["loss_sum"]) <= 1e-5


def test_fsdp_shards_params_and_their_optimizer_state(eight_device_results):
  multi = eight_device_results[0]
  dp, fsdp, fsdp42 = multi["dp"]["specs"], multi["fsdp_bn_mask"]["specs"], multi["fsdp_4x2"]["specs"]
  replicated, split0 = str(jax.sharding.PartitionSpec()), str(jax.sharding.PartitionSpec("data"))
  assert set(dp.values()) == {replicated}
  # fc1 kernel (48, 32): the largest axis divisible by the data size is axis 0.
  assert fsdp["params/fc1/kernel"] == split0
  assert fsdp42["params/fc1/kernel"] == split0
  moments = {k: v for k, v in fsdp.items() if k.endswith("fc1/kernel") and not k.startswith("params")}
  assert moments and set(moments.values()) == {split0}, moments  # mu, nu, ema
  assert fsdp["step"] == fsdp["rng"] == replicated


def test_fsdp_rule():
  assert sharding.fsdp_spec((48, 32), 8, 16) == jax.sharding.PartitionSpec("data")
  assert sharding.fsdp_spec((12, 64), 8, 16) == jax.sharding.PartitionSpec(None, "data")
  assert sharding.fsdp_spec((12, 10), 8, 16) == jax.sharding.PartitionSpec()  # nothing divisible
  assert sharding.fsdp_spec((64, 64), 8, 10**6) == jax.sharding.PartitionSpec()  # below min_size
  assert sharding.fsdp_spec((64, 64), 8, 16) == jax.sharding.PartitionSpec("data")  # tie: first axis
  with pytest.raises(ValueError, match="mode"):
    sharding.param_shardings({}, sharding.make_mesh(), mode="zero3")


def _mesh1():
  return sharding.make_mesh(devices=jax.devices()[:1])


def _batch(i, batch=16, steps=4):
  images, labels = mp_common.make_data(steps, batch)
  return {"images": images[i], "labels": labels[i]}


def _leaf_sizes(tree):
  return sum(x.size for x in jax.tree_util.tree_leaves(tree) if x.ndim > 0)


def test_gradient_accumulation_equals_large_batch():
  opt = dict(warmup_init_lr=5e-3)  # step 0 already updates, so both optimizer steps count
  common = dict(dropout=0.0, ema_decay=0.9)
  big, _, big_step, _ = mp_common.setup(_mesh1(), opt=opt, **common)
  acc, _, acc_step, _ = mp_common.setup(_mesh1(), opt=dict(opt, grad_accum_steps=2), **common)
  start = np.array(jax.tree_util.tree_leaves(acc.params)[0])
  for i in range(2):
    b = _batch(i)
    big, big_m = big_step(big, b)
    for half in (slice(0, 8), slice(8, 16)):
      acc, acc_m = acc_step(acc, {k: v[half] for k, v in b.items()})
    assert float(acc_m["lr"]) == pytest.approx(float(big_m["lr"]))
  assert int(acc.step) == 4 and int(big.step) == 2
  for a, b in zip(jax.tree_util.tree_leaves(acc.params), jax.tree_util.tree_leaves(big.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree_util.tree_leaves(acc.ema_params), jax.tree_util.tree_leaves(big.ema_params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # And the accumulated run really moved (not two no-op steps).
  assert not np.allclose(start, jax.tree_util.tree_leaves(acc.params)[0])


@pytest.fixture(scope="module")
def standard():
  """One compiled default setup shared by several tests; `fresh()` gives a new copy of the initial state
  (the step donates its input, so each test needs its own buffers)."""
  state, shardings, train_step, eval_step = mp_common.setup(_mesh1())
  host = jax.tree_util.tree_map(np.array, state)
  return dict(fresh=lambda: jax.device_put(host, shardings), train_step=train_step, eval_step=eval_step)


def _step_flops(train_step, state, batch):
  """XLA's flop count of the compiled step (the step must have run once, so it is in the cache)."""
  (jitted,) = train_step.jitted.values()
  cost = jitted.lower(state, batch).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_frozen_params_bit_identical_and_hold_no_optimizer_state(standard):
  trainable = [r"^head/", r"(^|/)norm/"]
  state, _, train_step, _ = mp_common.setup(_mesh1(), trainable=trainable)
  start = jax.tree_util.tree_map(np.array, state.params)
  mask = optim.trainable_mask(start, trainable)
  n_train, n_all = builder.count_trainable(start, mask), counting.count_params(start)
  assert 0 < n_train < n_all
  assert _leaf_sizes(state.opt_state) == 2 * n_train  # Adam mu + nu, trainable leaves only
  for i in range(3):
    state, _ = train_step(state, _batch(i))
  end = jax.tree_util.tree_map(np.array, state.params)
  for (path, a), b, t in zip(
      jax.tree_util.tree_leaves_with_path(start), jax.tree_util.tree_leaves(end), jax.tree_util.tree_leaves(mask)
  ):
    if t:
      assert not np.array_equal(a, b), f"trainable {optim.path_str(path)} did not change"
    else:
      assert a.tobytes() == b.tobytes(), f"frozen {optim.path_str(path)} changed"

  # No weight-gradient compute for the frozen fc1 kernel (48x32, batch 16): stop_gradient, not masking.
  full_state, _ = standard["train_step"](standard["fresh"](), _batch(0))
  flops = [_step_flops(train_step, state, _batch(0)), _step_flops(standard["train_step"], full_state, _batch(0))]
  assert flops[0] < flops[1] - 2 * 16 * 48 * 32, flops

  # Baselines (abstract, no compile): all trainable -> 2x all params; accumulation adds 1x trainable.
  abstract = jax.eval_shape(lambda: start)
  full = optim.make_optimizer(mp_common.opt_config(), abstract)
  assert _leaf_sizes(jax.eval_shape(full.init, abstract)) == 2 * n_all
  accum = optim.make_optimizer(mp_common.opt_config(grad_accum_steps=2), abstract, trainable)
  assert _leaf_sizes(jax.eval_shape(accum.init, abstract)) == 3 * n_train


def test_model_kwargs_reach_the_model(standard):
  losses = {}
  for name, kw in [
      ("none", None),
      ("ones", np.ones(mp_common.HIDDEN, np.float32)),
      ("half", (np.arange(mp_common.HIDDEN) < 16).astype(np.float32)),
  ]:
    b = _batch(1)
    if kw is not None:
      b["model_kwargs"] = {"hidden_mask": kw}
    _, m = standard["train_step"](standard["fresh"](), b)
    losses[name] = float(m["loss"])
  assert losses["ones"] == pytest.approx(losses["none"], rel=1e-6)
  assert abs(losses["half"] - losses["none"]) > 1e-3


def test_nonfinite_loss_is_flagged(standard):
  b = _batch(0)
  _, m = standard["train_step"](standard["fresh"](), b)
  assert bool(m["is_finite"])
  b["images"] = b["images"].copy()
  b["images"][3, 0, 0, 0] = np.nan
  _, m = standard["train_step"](standard["fresh"](), b)
  assert not bool(m["is_finite"]) and not np.isfinite(float(m["loss"]))


def test_eval_sums_match_numpy_and_skip_padding(standard):
  state = standard["fresh"]()
  model = mp_common.TinyNet()
  b = _batch(1)
  mask = (np.arange(16) < 13).astype(np.float32)
  logits = np.asarray(model.apply({"params": state.params}, jnp.asarray(b["images"]), train=False))
  order = np.argsort(-logits, axis=-1)
  top1 = order[:, 0] == b["labels"]
  top5 = (order[:, :5] == b["labels"][:, None]).any(-1)
  ce = -jax.nn.log_softmax(logits)[np.arange(16), b["labels"]]
  sums = standard["eval_step"](state, dict(b, mask=mask))
  assert float(sums["count"]) == 13
  assert float(sums["correct1"]) == float((top1 * mask).sum())
  assert float(sums["correct5"]) == float((top5 * mask).sum())
  assert float(sums["loss_sum"]) == pytest.approx(float((ce * mask).sum()), rel=1e-5)


def test_weight_decay_skips_biases_norms_and_tokens():
  params = {
      "blk": {
          "fc": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)},
          "norm1": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
      },
      "pos_embed": jnp.ones((1, 3, 4)),
      "cls_token": jnp.ones((1, 1, 4)),
      "attn": {"relative_position_bias_table": jnp.ones((9, 2))},
      "conv": {"kernel": jnp.ones((3, 3, 4, 4))},
  }
  for name, conv_mult in [("adamw", 1.0), ("sgd", 2.0)]:
    cfg = dict(
        name=name,
        lr=1.0,
        warmup_init_lr=1.0,
        warmup_steps=0,
        total_steps=10,
        weight_decay=0.1,
        wd_mults=[[r"conv/kernel", conv_mult]],
    )
    tx = optim.make_optimizer(cfg, params)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    got = {optim.path_str(p): float(np.abs(u).max()) for p, u in jax.tree_util.tree_leaves_with_path(updates)}
    decayed = {k for k, v in got.items() if v > 0}
    assert decayed == {"blk/fc/kernel", "conv/kernel"}, (name, got)
    nesterov = 1.9 if name == "sgd" else 1.0  # first Nesterov step: g + 0.9 * trace(= g)
    assert got["conv/kernel"] == pytest.approx(0.1 * conv_mult * nesterov)  # lr 1, wd 0.1, param 1
    assert got["blk/fc/kernel"] == pytest.approx(0.1 * nesterov)


def test_optimizer_config_errors():
  params = {"fc": {"kernel": jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match="unknown optimizer config key 'lr_min'"):
    optim.make_optimizer(dict(total_steps=10, lr_min=0.1), params)
  with pytest.raises(ValueError, match="matches no parameter"):
    optim.make_optimizer(dict(total_steps=10), params, [r"adaptor"])
  with pytest.raises(ValueError, match="total_steps"):
    optim.make_optimizer(dict(), params)
  with pytest.raises(ValueError, match="'adamw' or 'sgd'"):
    optim.make_optimizer(dict(total_steps=10, name="lamb"), params)


def test_lr_metric_follows_warmup_cosine_and_state_is_donated(standard):
  state, train_step = standard["fresh"](), standard["train_step"]
  sched = optim.make_lr_schedule(mp_common.opt_config())
  lrs = []
  for i in range(3):
    old = state
    state, m = train_step(state, _batch(i))
    assert jax.tree_util.tree_leaves(old.params)[0].is_deleted()  # buffers donated, not copied
    lrs.append(float(m["lr"]))
  np.testing.assert_allclose(lrs, [float(sched(i)) for i in range(3)], rtol=1e-6)
  assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1e-2)


def test_bf16_compute_tracks_float32(standard):
  losses = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    if dtype == jnp.float32:
      state, train_step = standard["fresh"](), standard["train_step"]
    else:
      state, _, train_step, _ = mp_common.setup(_mesh1(), compute_dtype=dtype)
    for i in range(3):
      state, m = train_step(state, _batch(i))
    losses[dtype] = float(m["loss"])
    assert jax.tree_util.tree_leaves(state.params)[0].dtype == jnp.float32  # master weights stay f32
  assert losses[jnp.bfloat16] == pytest.approx(losses[jnp.float32], rel=2e-2)
  assert losses[jnp.bfloat16] != losses[jnp.float32]  # bf16 really was used


def test_soft_labels_and_batch_transform():
  """A batch_transform (mixup-like, traced under jit) producing soft targets; smoothing composes."""
  mesh = _mesh1()
  model = mp_common.TinyNet(dropout=0.0)
  init_fn = lambda r: model.init(r, jnp.zeros((2, *mp_common.IMAGE)), train=False)
  params = jax.eval_shape(init_fn, jax.random.key(0))["params"]
  tx = optim.make_optimizer(mp_common.opt_config(), params)
  state, shardings = step.create_train_state(init_fn, tx, mesh, jax.random.key(0))
  host = jax.tree_util.tree_map(np.array, state)

  def mix(rng, batch):
    lam = jax.random.uniform(rng, ())
    onehot = jax.nn.one_hot(batch["labels"], mp_common.NUM_CLASSES)
    return dict(
        batch,
        images=lam * batch["images"] + (1 - lam) * batch["images"][::-1],
        labels=lam * onehot + (1 - lam) * onehot[::-1],
    )

  train = step.make_train_step(step.flax_apply_fn(model), tx, mesh, shardings, batch_transform=mix, label_smoothing=0.1)
  new_state, m = train(state, _batch(0))
  assert np.isfinite(float(m["loss"])) and 0 <= float(m["accuracy"]) <= 1
  # Same step twice from the same state gives the same loss (rng = fold_in(state.rng, step)).
  _, m2 = train(jax.device_put(host, shardings), _batch(0))
  assert float(m2["loss"]) == float(m["loss"])
  # Soft-label smoothing equals mixing smoothed one-hots.
  logits = jax.random.normal(jax.random.key(1), (4, 5))
  y1, y2 = jnp.array([0, 1, 2, 3]), jnp.array([4, 3, 2, 1])
  soft = 0.3 * jax.nn.one_hot(y1, 5) + 0.7 * jax.nn.one_hot(y2, 5)
  mixed = 0.3 * objectives.cross_entropy(logits, y1, 0.1) + 0.7 * objectives.cross_entropy(logits, y2, 0.1)
  np.testing.assert_allclose(objectives.cross_entropy(logits, soft, 0.1), mixed, rtol=1e-6)


def test_row_masked_leaves_hold_optimizer_state_for_their_trainable_rows_only():
  """A stacked leaf with a row mask (a baseline's new layers): Adam moments exist for the true rows only,
  those rows get exactly the update of an optimizer on the sliced leaf, the other rows exact zeros."""
  rows = np.array([False, True, False, True])
  params = {"core": jnp.arange(24.0).reshape(4, 6) / 10, "head": jnp.ones((3,)), "frozen": jnp.ones((5,))}
  mask = {"core": rows, "head": True, "frozen": False}
  cfg = dict(name="adamw", lr=0.1, total_steps=10, weight_decay=0.0)
  tx = optim.make_optimizer(cfg, params, mask)
  state = tx.init(params)
  assert _leaf_sizes(state) == 2 * (2 * 6 + 3)  # mu + nu of two rows and the head; nothing for frozen
  grads = jax.tree.map(lambda p: jnp.cos(p) + 0.5, params)
  updates, _ = tx.update(grads, state, params)
  np.testing.assert_array_equal(updates["core"][~rows], 0.0)
  np.testing.assert_array_equal(updates["frozen"], 0.0)
  sliced = {"core": params["core"][rows], "head": params["head"]}
  ref_tx = optim.make_optimizer(cfg, sliced)
  ref, _ = ref_tx.update(jax.tree.map(lambda p: jnp.cos(p) + 0.5, sliced), ref_tx.init(sliced), sliced)
  np.testing.assert_allclose(updates["core"][rows], ref["core"], rtol=1e-6)
  np.testing.assert_allclose(updates["head"], ref["head"], rtol=1e-6)


def test_baseline_under_adjust_ln_head_holds_state_for_its_new_layers_only():
  """The stack baseline of the micro ViT with the paper's frozen-core recipe: optimizer state = Adam's two
  moments of exactly the trainable scalars (new layers' rows, every LayerNorm, the head)."""
  from scalenet_jax import config_lib

  config = config_lib.override(
      config_lib.train_config("vit_micro_patch4_28"),
      {"expansion.kind": "stack", "expansion.trainable": "adjust_ln_head", "init_from": "unused.safetensors"},
  )
  abstract = builder.build_model(config).abstract_params()
  mask = builder.trainable_mask(config, abstract)
  assert any(isinstance(m, np.ndarray) for m in jax.tree.leaves(mask))  # row masks on the stacked core
  tx = optim.make_optimizer(dict(total_steps=10), abstract, mask)
  state = jax.eval_shape(tx.init, abstract)
  n_train = builder.count_trainable(abstract, mask)
  assert _leaf_sizes(state) == 2 * n_train
  assert n_train < counting.count_params(abstract) // 2  # the pretrained rows are most of the model
