r"""Plain micro ViT on Fashion-MNIST (the demo's pretraining run).

python -m scalenet_jax.main --config configs/vit_micro_fmnist.py --workdir /tmp/vit_micro
"""

from scalenet_jax import config_lib


def get_config():
  return config_lib.train_config("vit_micro_patch4_28")
