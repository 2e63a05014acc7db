r"""Stand-alone (re)training of a searched architecture through the shared train step.

python -m scalenet_jax.main --config configs/nas_retrain.py:/tmp/nas_search/archs/s0.json --workdir /tmp/retrain_s0
python -m scalenet_jax.main --config configs/nas_retrain.py:s3 --workdir gs://.../scalenet_s3   # released ImageNet

The argument is an arch JSON written by the search (`scalenet_jax.nas.export.save_arch`; trained on
Fashion-MNIST train, evaluated on test) or a released ScaleNet ImageNet model s0..s5 (ImageNet recipe).
Writes <workdir>/result.json (top-1, MACs, params) and <workdir>/export/params.
"""

from scalenet_jax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from scalenet_jax.nas import export
from scalenet_jax.nas.train_supernet import supernet_config


def get_config(arg: str = "s0"):
  if arg in export.RELEASED:
    c = supernet_config("imagenet", batch_size=1024, steps=350 * 1200, log_every=100, ckpt_every=2000)
    c.data.name, c.data.recipe, c.data.eval_split = "tfds:imagenet2012", "rrc", "validation"
    c.data.pad, c.data.crop_padding = 0, 0
    c.data.mean, c.data.std = IMAGENET_MEAN, IMAGENET_STD
    c.data.train_split, c.data.num_threads = "train", 16
    c.optim.warmup_steps = 5 * 1200
  else:
    rec = export.load_record(arg)  # fails early on a missing or foreign file
    c = supernet_config(
        rec["space"], in_channels=rec["in_channels"], steps=2000, batch_size=64, log_every=100, ckpt_every=500
    )
    c.data.train_split, c.data.eval_split = "train", "test"
    c.optim.lr = 0.05
  c.pipeline = "nas_retrain"
  c.arch = arg
  return c
