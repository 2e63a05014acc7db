r"""The fair ScaleNet-grow study on Fashion-MNIST: the paper's budget ratios, a depth-headroom check first.

  python -m scalenet_jax.study --config configs/grow_study.py:vit --workdir /tmp/study --max_minutes 55
  python -m scalenet_jax.study --config configs/grow_study.py:swin --workdir /tmp/study_swin --max_minutes 55
  python -m scalenet_jax.main --config configs/grow_study.py:vit,run=scalenet,seed=1 --workdir /tmp/one

`get_config("family,run=R,seed=S")` is one run of the study (any run can be trained on its own);
`study("family")` is its plan for `scalenet_jax.study`: the runs in order, the arms and the claims.
What the study keeps from the paper (../shared/docs/scalenet_grow.md §8, paper Tables I, II, VII):
- the base trains to the end of its own schedule (`base_epochs`, the released base's recipe,
  configs/pretrain_fmnist.py, over fewer epochs: the 30-epoch schedule of pretrained/ costs 5 h per
  2x-deep seed here, and the headroom check must come first);
- headroom: the 2x-deep model from scratch gets the base's full budget, 3 seeds of each;
- every grown arm fine-tunes one third of the base's training images (paper: 100 of 300 epochs), at 0.4x
  the base's learning rate (paper: 2e-4 after 5e-4) from the seed-0 base, released under
  pretrained/study/ when it finishes;
- adapters r = 5 at width 64: +13.1 % unique parameters, as DeiT-T 2x adds (+13.06 %, r/d 0.083; here
  r/d 0.078), and one new layer for the independent-layer baselines (+16.4 %; the paper's +16 %);
- Table II: adapters without sharing (R = 1) and sharing without adapters; Table VII: the 2x-deep model
  from scratch at the fine-tune budget and at the base's full budget (the headroom runs);
- controls: the base trained further with every parameter (the ViT recipe trains every parameter of the
  grown model too, so for the ViT this is also the trainable-matched control; the Swin recipe trains
  adapters, norms and head, so the Swin study adds the base trained further with its norms and head).
The Swin-style family follows the same design with the paper's Swin recipe and proportions (`FAMILIES`).
"""

from scalenet_jax import config_lib, paths
from scalenet_jax.demo import RECIPES, TRAIN_IMAGES  # the family's expansion recipe (paper §2)
from scalenet_jax.errors import ConfigError

HERE = paths.REPO_ROOT / "configs"
FAMILIES = {
    # base recipe (configs/pretrain_fmnist.py:<family>) trained for `base_epochs`; adapter rank; what the
    # independent-layer baselines add; whether the grown model's trainable set differs from "every parameter"
    # (then the base trained further with that set is a control of its own).
    "vit": dict(
        base_epochs=6, rank=5, baseline={"num_new_layers": 1}, new="1 new layer", base="6 layers", matched=False
    ),
    # Swin: the paper's recipe grows the last stage (stack mapping; adapters on every block; adapters, norms
    # and head train). r = 3: 10 r C per block over 2+2+4 blocks of widths 32/64/128 plus the new blocks'
    # norms, +3.9 % (Swin-T 2x: +3.8 %). Baselines: one block in the stage before the last (+8.8 %), as
    # the paper's Swin-T baselines add one block of its third stage (1.77 M, +6.3 %).
    "swin": dict(
        base_epochs=6,
        rank=3,
        baseline={"num_new_layers": 1, "subset": "1"},
        new="1 new block in stage 1",
        base="2+2+2 blocks",
        matched=True,
    ),
}
FINETUNE_LR_RATIO = 0.4  # paper: DeiT fine-tunes at 2e-4 after pretraining at 5e-4
SEEDS = 3
BASELINES = ("random", "stack", "interpolate", "swa")
# arm -> (label, expansion kind, expansion overrides, budget: 'base' | 'finetune', starts from the base);
# labels name the family's `new` and `base`.
ARMS = {
    "base": ("base ({base}, from scratch)", "", {}, "base", False),
    "deep": ("2x deep from scratch, base's full budget (Table VII)", "scratch", {}, "base", False),
    "scalenet": ("ScaleNet 2x (shared + adapters)", "scalenet", {}, "finetune", True),
    **{k: (f"{k.capitalize() if k != 'swa' else 'SWA'} ({{new}})", k, {}, "finetune", True) for k in BASELINES},
    "scratch": ("2x deep from scratch, fine-tune budget (Table VII)", "scratch", {}, "finetune", False),
    "further": ("base trained further, every parameter (control)", "", {}, "finetune", True),
    # the base with the grown model's trainable set (norms + head; no adapters, no new layers)
    "further_matched": (
        "base trained further, the grown model's trainable set (control)",
        "scalenet",
        {"reuse": 1, "adjust": "none"},
        "finetune",
        True,
    ),
    "adapters_only": ("adapters without sharing (Table II)", "scalenet", {"reuse": 1}, "finetune", True),
    "sharing_only": ("sharing without adapters (Table II)", "scalenet", {"adjust": "none"}, "finetune", True),
}
HEADROOM = ("base", "deep")


def arms_of(family: str) -> tuple[str, ...]:
  return tuple(a for a in ARMS if a != "further_matched" or FAMILIES[family]["matched"])


def phases_of(family: str) -> dict:
  return {"headroom": HEADROOM, "grow": tuple(a for a in arms_of(family) if a not in HEADROOM)}


def release_path(family: str, arm: str = "base"):
  """Where the seed-0 weights of `arm` are released; every grown arm starts from the base's."""
  return paths.REPO_ROOT / "pretrained" / "study" / f"{family}_{arm}_s0.safetensors"


def _check(family: str) -> str:
  if family not in FAMILIES:
    raise ConfigError(f"unknown study family {family!r}; choose one of {sorted(FAMILIES)}")
  return family


def get_config(arg="vit"):
  family, _, rest = (arg or "vit").partition(",")  # "vit,run=scalenet,seed=1"
  _check(family)
  a = config_lib.parse_arg(rest, run="scalenet", seed=0)
  if a["run"] not in arms_of(family):
    raise ConfigError(f"unknown run {a['run']!r}; choose one of {sorted(arms_of(family))}")
  f = FAMILIES[family]
  _, kind, overrides, budget, from_base = ARMS[a["run"]]
  c = config_lib.load_config_file(HERE / "pretrain_fmnist.py", family)
  base_steps = f["base_epochs"] * TRAIN_IMAGES // c.batch_size
  c.seed = a["seed"]
  c.steps = base_steps if budget == "base" else base_steps // 3
  c.expansion.update(RECIPES[family])
  c.expansion.kind = kind
  c.expansion.seed = a["seed"]
  c.expansion.rank = f["rank"]
  if kind in BASELINES:
    c.expansion.update(f["baseline"])
  c.expansion.update(overrides)
  if from_base:
    c.init_from = str(release_path(family))
    c.eval_at_init = True
    c.init_eval_split = "minival"  # an indicator only: 1,000 held-out images
    c.optim.lr *= FINETUNE_LR_RATIO
    c.optim.min_lr *= FINETUNE_LR_RATIO
  c.optim.warmup_steps = max(1, c.steps // 20)
  c.log_every = max(1, c.steps // 20)
  c.ckpt_every = max(1, c.steps // 4)
  c.eval_every = TRAIN_IMAGES // c.batch_size if budget == "base" else 0  # the headroom runs' curves
  return c


def study(arg="vit"):
  family = _check(arg or "vit")

  phases = phases_of(family)

  def run_of(arm: str, seed: int) -> dict:
    phase = next(p for p, arms in phases.items() if arm in arms)
    run = dict(name=f"{arm}_s{seed}", arg=f"{family},run={arm},seed={seed}", arm=arm, seed=seed, phase=phase)
    if ARMS[arm][4]:
      run["needs"] = "base_s0"
    if seed == 0:  # every arm's seed-0 weights are released (the base's: what the grown arms start from)
      run["release"] = str(release_path(family, arm).relative_to(paths.REPO_ROOT))
    return run

  # seed by seed within a phase: every chunk adds paired runs
  runs = [run_of(arm, seed) for arms in phases.values() for seed in range(SEEDS) for arm in arms]
  labels = {a: ARMS[a][0].format(**FAMILIES[family]) for a in arms_of(family)}
  vs = lambda arm: dict(a="scalenet", b=arm, family="grow", text=f"ScaleNet 2x beats {labels[arm]}")
  return dict(
      title=f"ScaleNet-grow on Fashion-MNIST, {family}: the paper's budget ratios",
      record=f"docs/grow_study_{family}.json",
      report=f"docs/grow_study_{family}.md",
      metric="top1",
      metric_text="top-1 on the Fashion-MNIST test set (10,000 images; at init: the 1,000-image minival split)",
      arms=labels,
      phases=list(phases),
      gate="headroom",  # the grow phase starts only once the headroom claim holds after correction
      runs=runs,
      make_run=run_of,
      max_seeds=5,  # where an interval misses 0 by less than its half-width (the rule)
      claims=[
          dict(a="deep", b="base", family="headroom", text="the 2x-deep model beats the base at the base's budget"),
          *[
              vs(a)
              for a in arms_of(family)
              if a in BASELINES + ("further", "further_matched", "adapters_only", "sharing_only")
          ],
          vs("scratch"),
          dict(
              a="scalenet",
              b="deep",
              family="grow",
              text="ScaleNet 2x (one third of the budget) beats the 2x-deep model from scratch at the full budget",
          ),
      ],
      # first guess of the runner's time estimate until this machine has finished a run: seconds per
      # training image per forward GFLOP (2-core Xeon, the 6-layer base at batch 128: ~530 images/s at
      # 0.0167 GFLOPs, pretrained/README.md)
      sec_per_image_gflop=0.13,
  )
