r"""ScaleNet-grow ablations (doc §5), one parameterised config for every family.

The argument is `key=value,...` over: model (deit_tiny|deit_small|deit_base|swin_tiny|...), adjust
(adapter|lora|none), share (1 = ScaleNet's weight-shared new layers; 0 = no sharing: the pretrained model
with its adjustment modules only, no new layers — the paper's Table II "no WSPT" rows, parameter-matched
by the adjustment modules alone), subset (0-based layer range, e.g. 0-2, 3-5, 6-8, 9-11, all; Swin: a stage
index), reuse (R), mapping (interpolate|stack), rank, drop_path (-1 = paper's), scope (reused|all; '' =
the family's: DeiT reused, Swin all). The parameter-matched independent-layer baselines are the paper
configs' arguments (e.g. `configs/deit_base_2x.py:interpolate`).

python -m scalenet_jax.main --config configs/ablation_grow.py:adjust=lora,rank=8 --mode summary
python -m scalenet_jax.main --config configs/ablation_grow.py:subset=3-5 --workdir /tmp/abl_subset
python -m scalenet_jax.main --config configs/ablation_grow.py:reuse=3 --workdir /tmp/abl_r3
"""

from scalenet_jax import config_lib
from scalenet_jax.errors import ConfigError

MODELS = {k.rsplit("_patch", 1)[0]: k for k in config_lib.GROW_PAPER}


def get_config(arg=""):
  a = config_lib.parse_arg(
      arg,
      model="deit_base",
      adjust="adapter",
      share=1,
      subset="all",
      reuse=2,
      mapping="",
      rank=16,
      drop_path=-1.0,
      scope="",
  )
  if a["model"] not in MODELS:
    raise ConfigError(f"unknown model {a['model']!r}; choose one of {sorted(MODELS)}")
  c = config_lib.grow_paper_config(MODELS[a["model"]], "scalenet")
  e = c.expansion
  e.adjust, e.rank, e.adjust_scope = a["adjust"], a["rank"], a["scope"]
  e.reuse = a["reuse"] if a["share"] else 1  # R = 1: no new layers, nothing shared
  if a["mapping"]:
    e.mapping = a["mapping"]
  if a["subset"] != "all":
    lo, _, hi = a["subset"].partition("-")
    e.subset = ",".join(str(i) for i in range(int(lo), int(hi or lo) + 1))
  if a["drop_path"] >= 0:
    c.model.drop_path_rate = a["drop_path"]
  return c
