"""`--mode=summary`: parameter counts and FLOPs of a config's model (human table + one JSON line)."""

from __future__ import annotations

import json

import numpy as np

from scalenet_jax import builder, counting


def _instance_params(model, abstract) -> int:
  """Params counted per block *instance* (what an unshared model of the same depth would hold)."""
  total = counting.count_params(abstract)
  for name, layout in zip(model.stack_names(), model.stack_layouts):
    core = counting.count_params(abstract[name]["core"])
    total += core // layout.num_core * (layout.depth - layout.num_core)
  return total


def summarize(config, xla_check: bool = True) -> dict:
  if config.get("pipeline") == "segment":  # a segmentor: its own counts (no XLA cross-check)
    from scalenet_jax import segmenter  # pylint: disable=g-import-not-at-top

    return segmenter.summarize(config)
  model = builder.build_model(config)
  abstract = model.abstract_params()
  out = {
      "model": config.model.name,
      "expansion": config.expansion.kind or "none",
      "depths": [l.depth for l in model.stack_layouts],
      "params": _instance_params(model, abstract),
      "unique_params": counting.count_params(abstract),
      "trainable_params": builder.count_trainable(abstract, builder.trainable_mask(config, abstract)),
      "macs": counting.model_flops(model, abstract),
  }
  out["gflops"] = out["macs"] / 1e9
  if xla_check:
    # XLA's cost analysis does not multiply while-loop bodies by their trip count: unroll the scans.
    unrolled = builder.build_model(config, unroll=True)
    spec = unrolled.input_spec()
    x = np.zeros(spec.shape, spec.dtype)
    xf = counting.xla_flops(lambda p, x: unrolled.apply({"params": p}, x), abstract, x)
    out["xla_gflops"] = xf / 2e9
    out["xla_ratio"] = xf / 2 / out["macs"]
  return out


def render(s: dict) -> str:
  rows = [
      ("model", s["model"]),
      ("expansion", s["expansion"]),
      ("blocks per stack", str(s["depths"])),
      ("params (per instance)", f"{s['params']:,}"),
      ("unique params (stored)", f"{s['unique_params']:,}"),
      ("trainable params", f"{s['trainable_params']:,}"),
      ("GFLOPs / image (1 MAC = 1 FLOP)", f"{s['gflops']:.4f}"),
  ]
  if "xla_gflops" in s:
    rows.append(("XLA cost analysis / 2 (incl. elementwise)", f"{s['xla_gflops']:.4f} ({s['xla_ratio']:.3f}x)"))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + "\n" + json.dumps(s)
