"""Released ScaleNet archs (MACs/params table vs paper), JSON export round trip, configs."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from scalenet_jax.nas import export
from scalenet_jax import paths
from scalenet_jax.nas.space import Scaling, apply_scaling, get_space, largest_alpha, official_macs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# From the module docstring table (and docs/nas_flops.md): (official MMACs, count_macs MMACs, params M
# of the supernet definition, params M of the paper definition).
TABLE = {
    "s0": (354.9, 354.9, 6.69, 4.44),
    "s1": (805.3, 800.0, 12.41, 7.43),
    "s2": (1511.7, 1621.4, 17.67, 10.23),
    "s3": (2766.3, 3036.7, 23.35, 13.20),
    "s4": (5971.2, 6389.7, 28.97, 16.19),
    "s5": (10223.1, 10836.1, 38.04, 20.96),
}


def test_released_table():
  rows = {r["model"]: r for r in export.released_table()}
  for name, (official, conv, params, params_paper_def) in TABLE.items():
    r = rows[name]
    assert (r["mmacs_official"], r["mmacs"]) == pytest.approx((official, conv), abs=0.05)
    assert (r["params_m"], r["params_m_paper_def"]) == pytest.approx((params, params_paper_def), abs=0.005)
    # The official counter gives the paper's FLOPs (S2: +4.3 %, see docs/nas_flops.md) and the paper
    # definition its parameter counts.
    assert abs(r["ratio"] - 1) < (0.05 if name == "s2" else 0.015), (name, r["ratio"])
    assert abs(r["params_m_paper_def"] - r["paper_params_m"]) < 0.1, name  # paper rounds to 0.1 M
  assert [rows[k]["r"] for k in TABLE] == [224, 256, 304, 354, 458, 533]
  # S2 at 303 px (truncating 224 * 1.355) is the paper's 1.45 G.
  alpha, S = export.RELEASED["s2"]
  s303 = official_macs(alpha, Scaling(S.d, S.w, 303), get_space("imagenet"))
  assert s303 / 1e6 == pytest.approx(1454.8, abs=0.05)
  # S1's 13 % gap of the old table was the second layer of the one-layer stages 1 and 7.
  arch = export.released_arch("s1")
  assert [len(arch.stages[s]) for s in (0, 6)] == [2, 2]


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


def _load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_configs():
  from scalenet_jax.nas.space import Alpha

  archs = _load_config("nas_scalenet_archs")
  for k in export.RELEASED:
    c = archs.get_config(k)
    assert (Alpha.from_dict(c.alpha), Scaling.from_dict(c.scaling)) == export.RELEASED[k]
  with pytest.raises(ValueError):
    archs.get_config("nope")
