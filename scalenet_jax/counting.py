"""Exact parameter counts and FLOPs per image.

FLOPs convention (as timm/fvcore report for these models): **one multiply-add = 1 FLOP**, counted
for matrix products and convolutions only (attention's QK^T and AV included; norms, softmax,
activations and additions excluded). The count is read off the model's own jaxpr (scan bodies
multiplied by their length), so it follows whatever the model really computes: expanded depth,
adapters, masked NAS paths. `xla_flops` gives XLA's cost analysis of the compiled forward
for cross-checking (XLA counts a multiply-add as 2 and includes elementwise work).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

import jax
import numpy as np

from scalenet_jax.jax_utils import path_str


def count_params(params, predicate: Callable[[str], bool] | None = None) -> int:
  """Number of scalars in `params` (optionally only leaves whose '/'-joined path passes)."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if predicate is None or predicate(path_str(path)):
      total += int(np.prod(leaf.shape))
  return total


def matches_any(patterns: Iterable[str]) -> Callable[[str], bool]:
  regs = [re.compile(p) for p in patterns]
  return lambda s: any(r.search(s) for r in regs)


# ----------------------------------------------------------------------------------------------
# MACs from a jaxpr
# ----------------------------------------------------------------------------------------------
def _dot_macs(eqn) -> int:
  (lc, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  out = eqn.outvars[0].aval.shape
  return int(np.prod(out)) * int(np.prod([lhs[d] for d in lc]))


def _conv_macs(eqn) -> int:
  rhs = eqn.invars[1].aval.shape  # kernel
  dn = eqn.params["dimension_numbers"]
  out = eqn.outvars[0].aval.shape
  kspatial = [rhs[d] for d in dn.rhs_spec[2:]]
  in_per_group = rhs[dn.rhs_spec[1]]
  return int(np.prod(out)) * int(np.prod(kspatial)) * int(in_per_group)


def _sub_jaxprs(eqn):
  for v in eqn.params.values():
    vals = v if isinstance(v, (tuple, list)) else (v,)
    for j in vals:
      if hasattr(j, "jaxpr") and hasattr(j, "consts"):  # ClosedJaxpr
        yield j.jaxpr
      elif hasattr(j, "eqns"):  # Jaxpr
        yield j


def jaxpr_macs(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_macs(eqn)
    elif name == "conv_general_dilated":
      total += _conv_macs(eqn)
    elif name == "cond":
      total += max(jaxpr_macs(b.jaxpr) for b in eqn.params["branches"])
    else:
      mult = eqn.params["length"] if name == "scan" else 1
      total += mult * sum(jaxpr_macs(j) for j in _sub_jaxprs(eqn))
  return total


def macs(fn: Callable, *args: Any) -> int:
  """Multiply-accumulates of `fn(*args)` (args may be ShapeDtypeStructs)."""
  return jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def xla_flops(fn: Callable, *args: Any) -> float:
  """XLA's cost-analysis FLOPs of the compiled `fn(*args)` (multiply-add = 2)."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost["flops"])


def model_flops(model, params_or_abstract, batch: int = 1) -> int:
  """MACs of one forward pass of `model` at its configured input size (`model.input_spec`), per
  input: an image, or a decoder's sequence of `seq_len` tokens."""
  x = model.input_spec(batch)
  return macs(lambda p, x: model.apply({"params": p}, x), params_or_abstract, x) // batch


def human(n: float) -> str:
  for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if abs(n) >= div:
      return f"{n / div:.2f}{unit}"
  return str(int(n)) if float(n).is_integer() else f"{n:.3g}"
