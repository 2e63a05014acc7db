"""Train-step cost of the NAS super-supernet against the stand-alone network of the same path, per resolution.

    /work/main/.venv/bin/python benchmarks/nas_step.py --space fmnist              # every resolution
    /work/main/.venv/bin/python benchmarks/nas_step.py --space fmnist --res 32,48 --batch 32 --steps 5
    /work/main/.venv/bin/python benchmarks/nas_step.py --space fmnist --stem_stride 2 --batch 64   # the search run's space

What this answers: where a supernet training step's time goes (the `configs/nas_fmnist_search.py` run
spends most of its budget there and in the stand-alone paths of the rank correlation), and what
compiling costs (one program per resolution for the supernet, one per path stand-alone).

For each resolution r, the path is the first HSS sample (seed 0) drawn at r. Both contenders run the same
step: the label-smoothed cross-entropy gradient and an SGD-momentum update, jitted, the state donated
(the training loop's step adds sharding and metrics on top). `supernet` is `SuperNet(space)` with the
path as masks and one-hot op choices (the program that trains every path of r; conditional: skipped
slots and unchosen kernel sizes are not computed); `select` is the same supernet with
`conditional=False` (every slot at 7×7, outputs selected: what the vmap evaluator runs); `standalone`
is `PathNet(arch)` with exactly the path's shapes (BN running averages updated). Timed interleaved
after compilation and warm-up; the median is reported. Printed per resolution: the path's MACs and the
supernet's compute MACs at r (its widest path), compile seconds, ms per step, images/s of the
supernet, supernet / stand-alone time and select / supernet time.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import common  # noqa: I001  (puts the repo root on sys.path, configures the runtime before jax starts)

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scalenet_jax.nas import sampling
from scalenet_jax.nas.space import apply_scaling, count_macs, get_space
from scalenet_jax.nas.supernet import PathNet, SuperNet, init_pathnet, init_supernet, path_arrays, supernet_arch


def path_at(space, r: int, tries: int = 10_000):
  """The first HSS-sampled (α, S) with resolution r (seed 0)."""
  for step in range(tries):
    alpha, S = sampling.sample_path(space, "hss", 0, step)
    if int(S.r) == r:
      return alpha, S
  raise SystemExit(f"no HSS sample at resolution {r} in {tries} draws; resolutions: {space.res_candidates}")


def make_step(loss_fn):
  tx = optax.sgd(0.01, momentum=0.9)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, opt_state, extra, batch):
    (loss, extra), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, extra, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, extra, loss

  return tx, step


def contenders(space, arch, path, images, labels):
  """{name: (step callable that blocks, compile seconds)}. The images, labels and the supernet's path
  arrays are step inputs, as in training (the path is not a compile-time constant)."""
  xent = lambda logits, y: optax.softmax_cross_entropy(
      logits, optax.smooth_labels(jax.nn.one_hot(y, space.num_classes), 0.1)
  ).mean()
  net = PathNet(arch)

  def super_loss(supernet):
    def loss(params, extra, batch):
      logits = supernet.apply({"params": params}, batch["images"], path=batch["path"], train=True)
      return xent(logits, batch["labels"]), extra

    return loss

  def alone_loss(params, stats, batch):
    logits, upd = net.apply({"params": params, **stats}, batch["images"], train=True, mutable=["batch_stats"])
    return xent(logits, batch["labels"]), upd

  variables = init_pathnet(arch, 0)
  sup_batch = dict(images=images, labels=labels, path=path)
  # Each contender gets its own params: the step donates them.
  made = {
      "supernet": (super_loss(SuperNet(space)), init_supernet(SuperNet(space), 0), {}, sup_batch),
      "select": (super_loss(SuperNet(space, conditional=False)), init_supernet(SuperNet(space), 0), {}, sup_batch),
      "standalone": (
          alone_loss,
          variables["params"],
          {k: v for k, v in variables.items() if k != "params"},
          dict(images=images, labels=labels),
      ),
  }
  out = {}
  for name, (loss_fn, params, extra, batch) in made.items():
    tx, step = make_step(loss_fn)
    state = [params, tx.init(params), extra]
    t = time.perf_counter()
    compiled = step.lower(*state, batch).compile()
    compile_s = time.perf_counter() - t

    def call(compiled=compiled, state=state, batch=batch):
      state[0], state[1], state[2], loss = compiled(*state, batch)
      jax.block_until_ready(loss)

    out[name] = (call, compile_s)
  return out


def main():
  p = common.base_parser(__doc__)
  p.add_argument("--space", default="fmnist")
  p.add_argument("--res", default=None, help="comma-separated resolutions (default: all of the space's)")
  p.add_argument("--stem_stride", type=int, default=None, help="the fmnist space's stem stride (1 or 2)")
  args = p.parse_args()
  space = get_space(args.space, **({} if args.stem_stride is None else dict(stem_stride=args.stem_stride)))
  all_res = sorted({r for stage in space.res_candidates for r in stage})
  common.apply_quick(
      args,
      dict(steps=5, warmup=1, batch=32, res=",".join(map(str, all_res))),
      dict(steps=2, warmup=1, batch=8, res=str(all_res[0])),
  )
  info = common.print_header("NAS supernet train step vs the stand-alone path", args)
  rng = np.random.default_rng(0)
  rows = []
  print(
      f"{'r':>3s} {'path MMACs':>10s} {'supernet MMACs':>14s} {'compile s (super/select/alone)':>30s} "
      f"{'ms/step super/select/alone':>26s} {'img/s super':>11s} {'super/alone':>11s} {'select/super':>12s}"
  )
  for r in (int(x) for x in args.res.split(",")):
    alpha, S = path_at(space, r)
    arch = apply_scaling(alpha, S, space)
    images = jnp.asarray(rng.normal(size=(args.batch, r, r, space.in_channels)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, space.num_classes, size=args.batch))
    made = contenders(space, arch, path_arrays(arch, space), images, labels)
    times = common.interleaved({n: c for n, (c, _) in made.items()}, warmup=args.warmup, iters=args.steps)
    row = dict(
        resolution=r,
        path_macs=count_macs(arch),
        supernet_macs=count_macs(dataclasses.replace(supernet_arch(space), resolution=r)),
        compile_s={n: s for n, (_, s) in made.items()},
        step_s={n: t.median for n, t in times.items()},
    )
    row["ratio"] = row["step_s"]["supernet"] / row["step_s"]["standalone"]
    row["select_ratio"] = row["step_s"]["select"] / row["step_s"]["supernet"]
    rows.append(row)
    cs, ss = row["compile_s"], row["step_s"]
    compiles = " / ".join(f"{cs[n]:.1f}" for n in ("supernet", "select", "standalone"))
    steps = " / ".join(f"{ss[n] * 1e3:.0f}" for n in ("supernet", "select", "standalone"))
    print(
        f"{r:3d} {row['path_macs'] / 1e6:10.1f} {row['supernet_macs'] / 1e6:14.1f} {compiles:>30s} {steps:>26s} "
        f"{args.batch / ss['supernet']:11.1f} {row['ratio']:10.2f}x {row['select_ratio']:11.2f}x",
        flush=True,
    )
  print(f"load average after: {common.load_average()}")
  common.write_json(
      args.json, dict(machine=info, space=space.name, stem_stride=space.stem_stride, batch=args.batch, rows=rows)
  )


if __name__ == "__main__":
  main()
