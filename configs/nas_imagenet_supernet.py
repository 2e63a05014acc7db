r"""Super-supernet training on ImageNet-1k with the official ScaleNet recipe (paper space, HSS).

python -m scalenet_jax.main --config configs/nas_imagenet_supernet.py --workdir gs://.../nas_supernet

SGD Nesterov momentum 0.9, lr 0.12 with linear warmup then cosine, weight decay 4e-5 (convolutions 2x,
BN and biases 0), label smoothing 0.1, one path per step for the whole global batch (HSS, eta ∝ width
candidates), RandomResizedCrop + flip at the path's resolution (224..354 px); 50 images per class held
out as the MCEA mini-val split.
"""

from scalenet_jax.config_lib import IMAGENET_TRAIN_IMAGES
from scalenet_jax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from scalenet_jax.nas.train_supernet import supernet_config


def get_config():
  c = supernet_config("imagenet", batch_size=1024, log_every=100, ckpt_every=2000, keep_checkpoints=3)
  c.data.name = "tfds:imagenet2012"
  c.data.recipe = "rrc"  # RandomResizedCrop + flip at the path's resolution (no RandAugment / erasing)
  c.data.pad, c.data.crop_padding = 0, 0
  c.data.mean, c.data.std = IMAGENET_MEAN, IMAGENET_STD
  c.data.minival_per_class = 50
  c.data.num_threads = 16
  epochs = 120
  steps_per_epoch = (IMAGENET_TRAIN_IMAGES - 50 * 1000) // c.batch_size
  c.steps = epochs * steps_per_epoch
  c.optim.lr = 0.12
  c.optim.warmup_steps = 5 * steps_per_epoch
  return c
