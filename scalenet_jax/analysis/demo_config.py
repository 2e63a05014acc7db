r"""The demo's fine-tuning run of a released base, as a config file (the analyses' default `--config`).

  python -m scalenet_jax.analysis --out DIR        # the ScaleNet row of the shipped ViT base
  python -m scalenet_jax.analysis --config=scalenet_jax/analysis/demo_config.py:base=pretrained/swin_micro_patch2_window4_32_fmnist.safetensors --out DIR

The config is `demo.variant_config(kind, demo.released_base(base), ...)`, the one `python -m
scalenet_jax.demo` and `scalenet_jax.reproduce` train each row with: the release file's model and input
normalisation, the family's expansion recipe (ViT: interpolate mapping; Swin: stack mapping, adjustment
modules in every block of the grown stage) and `init_from` = the release file. Analysing a demo run with
it therefore builds the model that run trained. The argument is `key=value,...` over `base` (a release
file; default the shipped ViT base), `kind` (the expansion, default scalenet) and `seed` (the run's
seed, which seeds its new params).
"""

from scalenet_jax import config_lib, demo


def get_config(arg=""):
  a = config_lib.parse_arg(arg, base=str(demo.RELEASED), kind="scalenet", seed=0)
  full = demo.BUDGETS[False]  # the full-budget runs: fine-tuning steps, test-set evaluation
  return demo.variant_config(a["kind"], demo.released_base(a["base"]), full["finetune"], full["eval_split"], a["seed"])
