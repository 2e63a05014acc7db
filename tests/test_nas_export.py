"""Released ScaleNet archs (FLOPs and params vs the paper), JSON export round trip, configs."""

import math

import jax
import jax.numpy as jnp
import pytest

import helpers
from scalenet_jax.nas import export
from scalenet_jax import paths
from scalenet_jax.nas.space import Scaling, apply_scaling, count_params, get_space, largest_alpha, official_macs

# Paper Table 1 (../shared/docs/paper_tables.md, ScaleNet-search): FLOPs (G multiply-accumulates) and
# #Param (M). Both are truncated, not rounded, to the digits shown (S1's 805.3 M MACs print as 0.80 G,
# S4's 16.19 M params as 16.1 M), so the counts must truncate to exactly these digits.
PAPER = {
    "s0": (0.35, 4.4),
    "s1": (0.80, 7.4),
    "s2": (1.45, 10.2),
    "s3": (2.76, 13.2),
    "s4": (5.97, 16.1),
    "s5": (10.22, 20.9),
}
# Released (d, w, r) (scalenet_search.md §2 and §5 [code]): r = ceil(224 · resolution multiplier).
RELEASED_DWR = {
    "s0": (1.0, 1.0, 224),
    "s1": (1.04, 1.04, math.ceil(224 * 1.14)),
    "s2": (1.36, 1.2, math.ceil(224 * 1.355)),
    "s3": (1.4, 1.4, math.ceil(224 * 1.58)),
    "s4": (1.653, 1.534, 458),
    "s5": (1.848, 1.688, 533),
}


def truncate(x: float, digits: int) -> float:
  return math.floor(x * 10**digits + 1e-9) / 10**digits


def test_released_archs_have_the_papers_flops_and_params():
  space = get_space("imagenet")
  for name, (gflops, params_m) in PAPER.items():
    alpha, S = export.RELEASED[name]
    assert (round(S.d, 3), round(S.w, 3), S.r) == RELEASED_DWR[name], name
    # S2 is released at 304 px (ceil), the paper's FLOPs are those of 303 px (int(224 · 1.355)).
    r = 303 if name == "s2" else S.r
    assert truncate(official_macs(alpha, Scaling(S.d, S.w, r), space) / 1e9, 2) == gflops, name
    assert truncate(count_params(export.released_arch(name, "paper")) / 1e6, 1) == params_m, name
  # S1's 13 % gap of an old table was the second layer of the one-layer stages 1 and 7.
  assert [len(export.released_arch("s1").stages[s]) for s in (0, 6)] == [2, 2]


def test_save_load_round_trip_builds_model(tmp_path):
  space = get_space("fmnist", in_channels=3)
  alpha, S = largest_alpha(space, 5), Scaling(1.2, 1.1, 36)
  rec = export.save_arch(str(tmp_path / "a" / "arch.json"), alpha, S, space)
  arch = export.load_arch(str(tmp_path / "a" / "arch.json"))
  assert arch.in_channels == 3 and arch.resolution == 36 and rec["macs"] > 0
  model = export.build_model(arch)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 36, 36, 3), jnp.float32))
  assert "batch_stats" in shapes
  with pytest.raises(FileNotFoundError):
    export.load_arch(str(tmp_path / "missing.json"))


def test_round_trip_keeps_the_space_arguments(tmp_path):
  """An arch of the stride-2-stem fmnist space (the search run's) loads as itself; a file written
  before `space_kwargs` existed still loads with its in_channels."""
  space = get_space("fmnist", stem_stride=2)
  alpha, S = largest_alpha(space, 5), Scaling(1.25, 1.3, 40)
  path = str(tmp_path / "s2.json")
  rec = export.save_arch(path, alpha, S, space)
  assert rec["space_kwargs"] == {"in_channels": 1, "stem_stride": 2}
  arch = export.load_arch(path)
  assert arch.stem_stride == 2 and arch == apply_scaling(alpha, S, space)
  old = dict(export.arch_record(alpha, S, get_space("fmnist")))
  del old["space_kwargs"]
  paths.write_json(str(tmp_path / "old.json"), old)
  assert export.load_arch(str(tmp_path / "old.json")).stem_stride == 1


def test_configs():
  from scalenet_jax.nas.space import Alpha

  archs = helpers.config_module("nas_scalenet_archs.py")
  for k in export.RELEASED:
    c = archs.get_config(k)
    assert (Alpha.from_dict(c.alpha), Scaling.from_dict(c.scaling)) == export.RELEASED[k]
  with pytest.raises(ValueError):
    archs.get_config("nope")
