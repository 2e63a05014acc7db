"""The one config schema: overrides, the quick switch, strict parsing, and no field that nothing reads.

"Read" is tracked on real runs: every `ConfigDict` field access (attribute, item, `get`) made by the
package while tiny runs of the image trainer (plain and expanded) and of the NAS supernet and stand-alone
trainers go through `scalenet_jax.main.run`. Bulk copies (`to_dict`, iteration) and the override
machinery (`config_lib.override`) do not count. A declared field that no run reads is a silently ignored
field: remove it or use it.
"""

from __future__ import annotations

import contextlib
import os
import sys

import ml_collections
import pytest

from scalenet_jax import config_lib
from scalenet_jax.errors import ConfigError

import helpers
import tiny_runs

_ML_COLLECTIONS = os.path.dirname(ml_collections.__file__)
_CONFIG_LIB = config_lib.__file__


@contextlib.contextmanager
def tracking_reads():
  """Yields a set that collects (frozenset of the dict's keys, key) for every field read by the package."""
  reads = set()
  cls = ml_collections.ConfigDict
  orig_getitem, orig_get = cls.__getitem__, cls.get

  def caller():
    f = sys._getframe(2)
    while f is not None and (f.f_code.co_filename.startswith(_ML_COLLECTIONS) or f.f_code.co_filename == __file__):
      f = f.f_back
    return (f.f_code.co_filename, f.f_code.co_name) if f is not None else ("", "")

  def record(self, key):
    if caller() != (_CONFIG_LIB, "override"):  # setting fields is not reading them
      reads.add((frozenset(self._fields), key))

  def getitem(self, key):
    record(self, key)
    return orig_getitem(self, key)

  def get(self, key, default=None):
    record(self, key)
    return orig_get(self, key, default)

  cls.__getitem__, cls.get = getitem, get
  try:
    yield reads
  finally:
    cls.__getitem__, cls.get = orig_getitem, orig_get


def leaves(c: ml_collections.ConfigDict, prefix=""):
  """(dotted path, parent key set, key) of every leaf field (an empty sub-config counts as a leaf)."""
  for k in c.keys():
    v = c._fields[k]
    if isinstance(v, ml_collections.ConfigDict) and len(v):
      yield from leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", frozenset(c._fields), k


def unread(schema, reads):
  return sorted(path for path, keys, k in leaves(schema) if (keys, k) not in reads)


# ----------------------------------------------------------------------------------------------------
# Overrides, resolve, parsing
# ----------------------------------------------------------------------------------------------------
def test_override_dotted_nested_and_unknown():
  c = config_lib.train_config()
  config_lib.override(c, {"optim.lr": 0.5, "data": {"pad": 2}, "steps": 7})
  assert (c.optim.lr, c.data.pad, c.steps) == (0.5, 2, 7)
  with pytest.raises(ConfigError, match="unknown config field 'optim.lrr'"):
    config_lib.override(c, {"optim.lrr": 1.0})
  with pytest.raises(ConfigError, match="steps"):
    config_lib.override(c, {"steps": "many"})


def test_resolve_merges_quick_overrides_into_a_locked_copy():
  c = config_lib.train_config(steps=100, quick_overrides={"steps": 3, "data": {"eval_split": "minival"}})
  assert config_lib.resolve(c).steps == 100
  c.quick = True
  r = config_lib.resolve(c)
  assert (r.steps, r.data.eval_split, c.steps) == (3, "minival", 100)  # the input is not modified
  with pytest.raises(AttributeError):
    r.bogus = 1  # locked
  with pytest.raises(ConfigError, match="quick"):
    config_lib.override(c, {"quick": "yes"})  # typed: a bool field takes only bools


@pytest.mark.parametrize(
    "text,want",
    [
        ("False", False),
        ("false", False),
        ("0", False),
        ("no", False),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("on", True),
    ],
)
def test_bool_arguments_parse_strictly(text, want):
  assert config_lib.parse_arg(f"flag={text}", flag=True, n=1)["flag"] is want


def test_bad_arguments_are_config_errors():
  with pytest.raises(ConfigError, match="expected true or false"):
    config_lib.parse_arg("flag=maybe", flag=True)
  with pytest.raises(ConfigError, match="expected int"):
    config_lib.parse_arg("n=two", n=1)
  with pytest.raises(ConfigError, match="bad config argument"):
    config_lib.parse_arg("m=1", n=1)
  assert config_lib.int_list("0, 1,2") == (0, 1, 2) and config_lib.int_list("") is None
  with pytest.raises(ConfigError, match="comma-separated list of integers"):
    config_lib.int_list("0,x", "expansion.subset")


# ----------------------------------------------------------------------------------------------------
# Every declared field is read by a real run
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_trainer_reads(tmp_path_factory):
  """Reads of a plain run (train/eval/export) and an expanded, quick, eval-at-init, mixup, EMA run."""
  from scalenet_jax import main

  root = tmp_path_factory.mktemp("reads")
  plain = tiny_runs.micro_config({**tiny_runs.TINY, "steps": 2, "ckpt_every": 2})
  expanded = tiny_runs.micro_config(
      {
          **tiny_runs.TINY,
          "steps": 50,
          "quick": True,
          "quick_overrides": {"steps": 2},
          "init_from": str(root / "plain" / "export" / "params"),
          "expansion.kind": "scalenet",
          "expansion.rank": 2,
          "expansion.trainable": "adjust_ln_head",
          "eval_at_init": True,
          "init_eval_split": "minival",
          "data.mixup": 0.2,
          "ema_decay": 0.9,
          "eval_every": 1,
      }
  )
  with tracking_reads() as reads:
    main.run(plain, str(root / "plain"))
    main.run(plain, str(root / "plain"), "eval")
    main.run(plain, str(root / "plain"), "export")
    main.run(expanded, str(root / "expanded"))
  return reads


@pytest.mark.e2e
def test_every_image_trainer_field_is_read(image_trainer_reads):
  # Fields only the other optimizer reads (SGD here, AdamW in the NAS runs) are checked there.
  sgd_only = {"optim.momentum", "optim.nesterov"}
  missing = [f for f in unread(config_lib.train_config(), image_trainer_reads) if f not in sgd_only]
  assert not missing, f"declared but never read: {missing}"


@pytest.mark.e2e
def test_every_nas_training_field_is_read(image_trainer_reads, tmp_path):
  helpers.fashion_mnist_dir()
  from scalenet_jax import main
  from scalenet_jax.nas import train_supernet as ts
  from scalenet_jax.nas.sampling import sample_path
  from scalenet_jax.nas.space import apply_scaling, get_space

  c = helpers.nas_tiny_config(steps=2, log_every=1, ckpt_every=0, eval_batch_size=50)
  with tracking_reads() as reads:
    main.run(c, str(tmp_path / "supernet"))
    alpha, S = sample_path(get_space("tiny"), "hss", 0, 0)
    ts.train_standalone(c, str(tmp_path / "standalone"), apply_scaling(alpha, S, get_space("tiny")))
  adam_only = {"optim.b1", "optim.b2", "optim.eps"}  # read by the image trainer's AdamW
  missing = [f for f in unread(c, reads | image_trainer_reads) if f not in adam_only]
  assert not missing, f"declared but never read: {missing}"
  assert not [f for f in adam_only if f in unread(c, image_trainer_reads)]
