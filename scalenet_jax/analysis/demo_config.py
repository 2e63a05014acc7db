r"""The demo's fine-tuning run of a released base, as a config file (the analyses' default `--config`).

  python -m scalenet_jax.analysis --out DIR        # the ScaleNet row of the shipped ViT base
  python -m scalenet_jax.analysis --config=scalenet_jax/analysis/demo_config.py:base=pretrained/swin_micro_patch2_window4_32_fmnist.safetensors --out DIR

The config is the run of `configs/grow_study.py`'s demo plan (`python -m scalenet_jax.demo`) for that
base and arm: the release file's model and input normalisation, the family's expansion recipe (ViT:
interpolate mapping; Swin: stack mapping, adjustment modules in every block of the grown stage) and
`init_from` = the release file. Analysing a demo run with it therefore builds the model that run trained.
The argument is `key=value,...` over `base` (a release file; default the shipped ViT base), `kind` (the
expansion, default scalenet; '' = the base trained further) and `seed` (the run's seed, which seeds its
new params).
"""

from scalenet_jax import config_lib, paths

GROW = config_lib.load_config_module(paths.REPO_ROOT / "configs" / "grow_study.py")


def get_config(arg=""):
  a = config_lib.parse_arg(arg, base=str(GROW.RELEASED), kind="scalenet", seed=0)
  arm = a["kind"] or "further"
  runs = GROW.demo(f"base={a['base']},seed={a['seed']}")["runs"]
  return GROW.get_config(next(r["arg"] for r in runs if r["arm"] == arm))
