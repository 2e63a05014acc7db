r"""Super-supernet training alone on Fashion-MNIST (small 'fmnist' space, 28 px padded to 32, HSS).

python -m scalenet_jax.main --config configs/nas_fmnist_supernet.py --workdir /tmp/nas_fmnist_supernet

SGD Nesterov, warmup + cosine, weight decay 4e-5 (convs 2x, BN/bias 0), label smoothing 0.1; one
path per step; images produced at the path's resolution (32..48 px). `--config.sampling=uniform` trains
the baseline supernet. Resumes from the workdir.
"""

from scalenet_jax.nas.train_supernet import supernet_config


def get_config():
  c = supernet_config("fmnist", steps=3000, batch_size=32, log_every=50, ckpt_every=250)
  c.optim.lr = 0.1
  c.optim.warmup_steps = 100
  return c
