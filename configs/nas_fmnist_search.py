r"""ScaleNet-search end to end on Fashion-MNIST (CPU): supernet → MCEA → generalisation → export → report.

python -m scalenet_jax.main --config configs/nas_fmnist_search.py --workdir /tmp/nas_search
python -m scalenet_jax.main --config configs/nas_fmnist_search.py --workdir /tmp/nas_quick --config.quick=True

Writes <workdir>/report.md (MACs histograms HSS vs uniform, searched S0..S2 and extrapolated S3, S4 with
MACs/params, MCEA per-iteration accuracy mean/std, fitted curves, the rank correlation of 30 stand-alone
trained paths with the HSS and a uniformly sampled supernet) and <workdir>/archs/s{j}.json (retrain one
with configs/nas_retrain.py:<workdir>/archs/s0.json). Sized for 2 CPU cores: the full run takes about
90 min (docs/reproduction.md §5 has its report and times; `--config.rank_corr.num_paths=0` skips the
rank correlation and the uniform supernet, ~35 min); quick (~3-4 min) runs the same pipeline on the
'tiny' space. Every stage resumes from the workdir; `python -m scalenet_jax.reproduce
--nas_workdir <workdir>` puts a finished run's report into docs/reproduction.md.
"""

import ml_collections

from scalenet_jax.nas import mcea
from scalenet_jax.nas.train_supernet import supernet_config


def get_config():
  c = ml_collections.ConfigDict()
  c.pipeline = "nas_search"
  c.quick = False
  # 2,800 steps of 64 images: 3.0 epochs of the 59,500 training images (60,000 less the mini-val).
  c.supernet = supernet_config("fmnist", steps=2800, batch_size=64, log_every=100, ckpt_every=400, xla_opt_level=1)
  c.supernet.optim.lr = 0.1
  c.supernet.optim.warmup_steps = 140
  # Stride-2 stem (as the ImageNet space): ~4x fewer MACs than stride 1, what lets both supernets train
  # for several epochs in the run's 90 minutes on 2 cores (space._FMNIST_BUDGETS re-centres the budgets).
  c.supernet.space.kwargs.stem_stride = 2
  # Left-aligned channel slices: at this budget the official BCNet coupling (left/right slices of
  # ceil(C·m_max) + C buffers, nearly disjoint at these widths) barely learns (docs/reproduction.md §5).
  c.supernet.space.kwargs.coupling = "left"
  c.supernet.data.minival_per_class = 100  # 1,000 images: binomial error ~1 point at 88 %
  c.hist_samples = 5000
  # MCEA with the official operators, objective and penalty (mcea.MCEAConfig), sized for 2 CPU cores.
  c.search = mcea.search_config(iterations=2, n_base=4, population=12, generations=4, vmap_size=8)
  c.extra_stages = 2
  # 250 steps of 64 (16,000 images) per stand-alone path: at 150 x 32 the paths' accuracies spread no
  # more than the mini-val's own error. masked=True trains them through the masked supernet, one program
  # per (resolution, bucket) instead of one per path (vmap_size paths per call); on 2 CPU cores its step
  # costs 1.3-1.9x a PathNet's, which outweighs the compiles saved over 250 steps (docs/nas.md §4).
  c.rank_corr = ml_collections.ConfigDict(
      dict(num_paths=30, steps=250, batch_size=64, seed=1234, compare_uniform=True, masked=False, vmap_size=1)
  )
  c.quick_overrides = ml_collections.ConfigDict(
      dict(
          # The 'tiny' space (16/20 px, 2 resolutions): compiles dominate on CPU, the fmnist space has 5.
          supernet=dict(
              space=dict(name="tiny", kwargs=dict(in_channels=1)),
              steps=200,
              batch_size=32,
              log_every=50,
              ckpt_every=100,
              optim=dict(warmup_steps=20),
              data=dict(minival_per_class=10),
          ),
          hist_samples=2000,
          search=dict(iterations=2, n_base=3, population=8, generations=3),
          rank_corr=dict(num_paths=0, compare_uniform=False),
      )
  )
  return c
