r"""The fair ScaleNet-grow study on Fashion-MNIST: the paper's budget ratios, a depth-headroom check first.

  python -m scalenet_jax.study --config configs/grow_study.py:vit2_p7_crops --workdir /tmp/study --max_minutes 55
  python -m scalenet_jax.study --config configs/grow_study.py:swin --workdir /tmp/study_swin --max_minutes 55
  python -m scalenet_jax.main --config configs/grow_study.py:vit2_p7_crops,run=scalenet,seed=1 --workdir /tmp/one

`get_config("family,run=R,seed=S")` is one run of the study (any run can be trained on its own);
`study("family")` is its plan for `scalenet_jax.study`: the runs in order, the arms and the claims.
What the study keeps from the paper (../shared/docs/scalenet_grow.md §8, paper Tables I, II, VII):
- the base trains to the end of its own schedule (`base_epochs`, the released base's recipe,
  configs/pretrain_fmnist.py: 6 epochs for `vit` / `vit3`, whose 2x-deep seed at the 30 epochs of
  pretrained/ would cost 5 h here; the full 30 epochs for the patch-7 families, whose steps are ~3x
  cheaper; 12 for `swin` and `swin1`, half their released base's 25; the full 25 for `swin1_25`), and
  the headroom check comes first; the grown setting is the one with headroom, `vit2_p7_crops` (2 -> 4
  layers, FAMILIES says why the others were left);
- headroom: the 2x-deep model from scratch gets the base's full budget, 3 seeds of each;
- every grown arm fine-tunes one third of the base's training images (paper: 100 of 300 epochs), at 0.4x
  the base's learning rate (paper: 2e-4 after 5e-4) from the seed-0 base, released under
  pretrained/study/ when it finishes;
- adapters r = 5 at width 64: +13.1 % unique parameters on the 6-layer base (+12.7 % on the 2-layer
  one), as DeiT-T 2x adds (+13.06 %, r/d 0.083; here r/d 0.078), and one new layer for the
  independent-layer baselines (+16.4 % of the 6-layer base, the paper's +16 %; +47.6 % of the 2-layer one);
- Table II: adapters without sharing (R = 1) and sharing without adapters; Table VII: the 2x-deep model
  from scratch at the fine-tune budget and at the base's full budget (the headroom runs);
- controls: the base trained further with every parameter (the ViT recipe trains every parameter of the
  grown model too, so for the ViT this is also the trainable-matched control; the Swin recipe trains
  adapters, norms and head, so the Swin study adds the base trained further with its norms and head).
- ablations (doc §5; phase `ablations`, after the grow phase): one change each from ScaleNet 2x's
  recipe (LoRA, the other mapping, R = 3, half and triple rank, drop path, shared subsets), same budget,
  their claims corrected as one family; their weights are not released;
The Swin-style family follows the same design with the paper's Swin recipe and proportions (`FAMILIES`).
`study("demo,...")` is the embedded demo's plan (`python -m scalenet_jax.demo`): this recipe, one seed,
a short budget, from the 30-epoch released base.
"""

from scalenet_jax import config_lib, paths, release
from scalenet_jax.config_lib import FASHION_MNIST_TRAIN_IMAGES as TRAIN_IMAGES
from scalenet_jax.errors import ConfigError, MissingInputError
from scalenet_jax.study import WORKDIR  # where a plan keeps what lives in the study's workdir

HERE = paths.REPO_ROOT / "configs"
# The paper's expansion recipe per model family (doc §2): a ViT/DeiT grows every layer with the
# interpolate mapping and, small, trains every parameter; a Swin grows its last stage with the stack
# mapping and trains adapters, norms and head. (The parameter-matched baselines follow the same sets.)
RECIPES = {
    "vit": dict(mapping="interpolate", trainable="all"),
    "swin": dict(mapping="stack", trainable="adjust_ln_head"),
}
VIT = dict(
    model="vit",
    base_epochs=6,
    rank=5,
    baseline={"num_new_layers": 1},
    new="1 new layer",
    base="6 layers",
    matched=False,
)
SWIN = dict(
    model="swin",
    base_epochs=12,
    rank=3,
    baseline={"num_new_layers": 1, "subset": "1"},
    new="1 new block in stage 1",
    base="2+2+2 blocks",
    matched=True,
    # Only the base's seed-0 weights (2.3 MB, what every grown arm starts from) are released: the other
    # Table I rows would add ~3-4 MB each (the ViT's are ~0.5 MB).
    released=("base",),
)
FAMILIES = {
    # base recipe (configs/pretrain_fmnist.py:<model>, `depth` blocks if given) trained for `base_epochs`;
    # adapter rank; what the independent-layer baselines add; whether the grown model's trainable set
    # differs from "every parameter" (then the base trained further with that set is a control of its
    # own); `deep`: the run of another family that is this family's 2x-deep model (same config);
    # `released`: the arms whose seed-0 weights go to pretrained/study/ (default: every Table I row).
    "vit": VIT,
    # The ViT with 3 blocks: the 6-layer base gained only 0.4 points from 12 layers (seeds 0, 1, within
    # their noise), so the headroom check moves to the shallower pair, 3 -> 6 blocks, whose 2x-deep model
    # is the `vit` family's base (its runs are this family's `deep` runs). r = 5: +12.9 % (DeiT-T 2x:
    # +13.06 %); the baselines' one new layer adds +32 % (half a layer, the paper's +16 %, does not exist:
    # the baselines get more parameters than ScaleNet, a handicap for ScaleNet).
    "vit3": dict(VIT, depth=3, base="3 layers", deep="vit,run=base"),
    # Neither pair had headroom at 6 epochs: both were budget-limited (the 6-layer base gains 4 points from
    # 6 to 30 epochs). Patch 7 (16 patches, 17 tokens instead of 50) makes a step 2.7-3.2x cheaper (55 / 98
    # ms for 3 / 6 layers at batch 128 on a 2-core Xeon, against 175 / 262), which buys the released base's
    # full 30 epochs: 3 -> 6 layers again, the 6-layer model its 2x-deep run.
    "vit_p7": dict(VIT, patch_size=7, base_epochs=30),
    "vit3_p7": dict(VIT, patch_size=7, base_epochs=30, depth=3, base="3 layers", deep="vit_p7,run=base"),
    # ... where the 6-layer model overfits: seed 0 leads the 3-layer one until epoch ~18, then stalls and
    # ends 0.37 points below it (88.92 vs 89.29 %). With 2-pixel random crops, the augmentation the
    # released base's recipe drops because the ViT then underfits (train = test accuracy), capacity, and
    # so depth, is what limits the models.
    "vit_p7_crops": dict(VIT, patch_size=7, base_epochs=30, crop_padding=2),
    "vit3_p7_crops": dict(
        VIT, patch_size=7, base_epochs=30, crop_padding=2, depth=3, base="3 layers", deep="vit_p7_crops,run=base"
    ),
    # ... where the 6-layer model gained +0.57 / +0.16 / +0.61 points over the 3-layer one (seeds 0-2,
    # +0.45 +- 0.62, p 0.090: not shown), the 3-layer bases' own spread (87.92-88.38 %) being the noise.
    # So the base gets shallower again: 2 -> 4 layers, same recipe. r = 5 keeps ScaleNet's added
    # parameters at +12.7 % (DeiT-T 2x: +13.06 %); the baselines' one new layer is +50 % of a 2-layer base
    # (the paper's +16 % would be a third of a layer): they get four times ScaleNet's added parameters.
    "vit2_p7_crops": dict(VIT, patch_size=7, base_epochs=30, crop_padding=2, depth=2, base="2 layers"),
    # Swin: the paper's recipe grows the last stage (stack mapping; adapters on every block; adapters, norms
    # and head train). r = 3: 10 r C per block over 2+2+4 blocks of widths 32/64/128 plus the new blocks'
    # norms, +3.9 % (Swin-T 2x: +3.8 %). Baselines: one block in the stage before the last (+8.8 %), as
    # the paper's Swin-T baselines add one block of its third stage (1.77 M, +6.3 %).
    # 12 epochs, half the released base's 25 (same recipe, 2-pixel crops): 6 epochs is the budget that
    # left the ViT pairs budget-limited, and 25 would cost ~65 min per headroom seed on 2 cores (2+2+2 at
    # 6.5 steps/s, 2+2+4 at 5.5, batch 128, AMD EPYC); 12 costs ~31 min, so the headroom check fits a
    # session and the whole family ~7 h. Result (docs/grow_study_swin.md, 3 seeds): no headroom at 12
    # epochs, base 88.18 %, 2+2+4 88.28 %, paired +0.10 +- 0.91 (p 0.67; seeds +0.20 / -0.30 / +0.41),
    # both well below the released base's 90.61 % at 25: budget-limited, as the ViT pairs were at 6.
    "swin": SWIN,
    # So the base gets shallower, as the ViT's did: 2+2+1 -> 2+2+2 blocks, same recipe and budget; the 2x-deep
    # model is the `swin` family's base (its runs are this family's `deep` runs). r = 3: +3.8 % (Swin-T 2x:
    # +3.8 %); the baselines' block in stage 1 adds +13.6 % (paper +6.3 %): a handicap for ScaleNet.
    "swin1": dict(SWIN, depths=(2, 2, 1), base="2+2+1 blocks", deep="swin,run=base"),
    # Result (docs/grow_study_swin1.md, 3 seeds): no headroom either, base 88.12 %, 2+2+2 88.18 %, paired
    # +0.06 +- 0.48 (p 0.66; seeds +0.27 / +0.01 / -0.11). 5, 6 and 8 blocks score alike at 12 epochs:
    # the budget, not the depth, limits them.
    # So the pair gets the released base's full 25 epochs: 2+2+1 -> 2+2+2, whose 2x-deep model is the released
    # base's recipe (pretrained/swin_micro_patch2_window4_32_fmnist.safetensors, 90.61 %). 31-59 min per run
    # on 2 cores (by machine), 1-2 h per headroom seed. Seeds 0 and 1 (docs/grow_study_swin1_25.md): base
    # 90.03 / 90.26 %, 2x deep 90.90 / 90.68 % (+0.87 / +0.42); seed 2 decides the gate.
    "swin1_25": dict(SWIN, depths=(2, 2, 1), base_epochs=25, base="2+2+1 blocks"),
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


def ablations_of(family: str) -> dict:
  """The paper's ablations of ScaleNet 2x (doc §5), one change each from the family's recipe, as arms:
  name -> (label, overrides; `drop_path_rate` is the model's, the others the expansion's)."""
  f = FAMILIES[family]
  rank, mapping = f["rank"], RECIPES[f["model"]]["mapping"]
  other = "stack" if mapping == "interpolate" else "interpolate"
  if f["model"] == "vit":  # each third of the layers alone (each layer of a shallower base)
    depth = f.get("depth", 6)
    n = min(3, depth)
    size = depth // n
    groups = [",".join(str(i) for i in range(k * size, (k + 1) * size)) for k in range(n)]
    subsets = {g: f"layer{'s' * (size > 1)} {g}" for g in groups}
  else:  # each earlier stage alone
    subsets = {"0": "stage 0", "1": "stage 1"}
  return {
      "lora": (f"LoRA (r={rank}) instead of adapters", {"adjust": "lora"}),
      f"mapping_{other}": (f"{other} mapping instead of {mapping}", {"mapping": other}),
      "reuse3": ("R = 3 (3x deep) instead of 2", {"reuse": 3}),
      **{f"rank{r}": (f"adapters r={r} instead of {rank}", {"rank": r}) for r in (max(1, rank // 2), 3 * rank)},
      **{f"drop_path{d}": (f"drop path {d} instead of 0", {"drop_path_rate": d}) for d in (0.1, 0.2)},
      **{f"subset{k.replace(',', '')}": (f"sharing {v} only", {"subset": k}) for k, v in subsets.items()},
  }


def arm_of(family: str, arm: str) -> tuple:
  """(label, expansion kind, overrides, budget, starts from the base) of an arm of `family`'s study."""
  if arm in ARMS:
    return ARMS[arm]
  label, overrides = ablations_of(family)[arm]
  return label, "scalenet", overrides, "finetune", True


def arms_of(family: str) -> tuple[str, ...]:
  return tuple(a for a in ARMS if a != "further_matched" or FAMILIES[family]["matched"]) + tuple(ablations_of(family))


def phases_of(family: str) -> dict:
  ablations = tuple(ablations_of(family))
  grow = tuple(a for a in arms_of(family) if a not in HEADROOM + ablations)
  return {"headroom": HEADROOM, "grow": grow, "ablations": ablations}


def release_path(family: str, arm: str = "base"):
  """Where the seed-0 weights of `arm` are released; every grown arm starts from the base's."""
  return paths.REPO_ROOT / "pretrained" / "study" / f"{family}_{arm}_s0.safetensors"


def _check(family: str) -> str:
  if family not in FAMILIES:
    raise ConfigError(f"unknown study family {family!r}; choose one of {sorted(FAMILIES)}")
  return family


def get_config(arg="vit"):
  """One run: "family,run=ARM,seed=S" (the study's), plus `base=FILE` (grow that release file instead of
  the study's seed-0 base, e.g. the demo's), `steps=N` (another budget), `eval_split=minival`,
  `xla_opt_level=1` (faster compiles; the demo's short runs)."""
  family, _, rest = (arg or "vit").partition(",")  # "vit,run=scalenet,seed=1"
  _check(family)
  a = config_lib.parse_arg(rest, run="scalenet", seed=0, base="", steps=0, eval_split="test", xla_opt_level=-1)
  if a["run"] not in arms_of(family):
    raise ConfigError(f"unknown run {a['run']!r}; choose one of {sorted(arms_of(family))}")
  f = FAMILIES[family]
  if a["run"] == "deep" and f.get("deep"):  # another family's run is this family's 2x-deep model
    return get_config(f"{f['deep']},seed={a['seed']},steps={a['steps']},eval_split={a['eval_split']}")
  _, kind, overrides, budget, from_base = arm_of(family, a["run"])
  c = config_lib.load_config_file(HERE / "pretrain_fmnist.py", f["model"])
  c.model.depth = f.get("depth")
  c.model.depths = f.get("depths")
  c.model.patch_size = f.get("patch_size")
  c.data.crop_padding = f.get("crop_padding", c.data.crop_padding)
  base_steps = f["base_epochs"] * TRAIN_IMAGES // c.batch_size
  c.seed = a["seed"]
  c.steps = a["steps"] or (base_steps if budget == "base" else base_steps // 3)
  c.data.eval_split = a["eval_split"]
  c.xla_opt_level = a["xla_opt_level"]
  c.expansion.update(RECIPES[f["model"]])
  c.expansion.kind = kind
  c.expansion.seed = a["seed"]
  c.expansion.rank = f["rank"]
  if kind in BASELINES:
    c.expansion.update(f["baseline"])
  for k, v in overrides.items():
    (c.model if k == "drop_path_rate" else c.expansion)[k] = v
  if from_base:
    c.init_from = a["base"] or str(release_path(family))
    if a["base"]:
      _check_base(a["base"], c.model.name)
    c.eval_at_init = True
    c.init_eval_split = "minival"  # an indicator only: 1,000 held-out images
    c.optim.lr *= FINETUNE_LR_RATIO
    c.optim.min_lr *= FINETUNE_LR_RATIO
  c.optim.warmup_steps = max(1, c.steps // 20)
  c.log_every = max(1, c.steps // 20)
  c.ckpt_every = max(1, c.steps // 4)
  c.eval_every = TRAIN_IMAGES // c.batch_size if budget == "base" else 0  # the headroom runs' curves
  return c


def _check_base(path: str, model: str = "", hint: str = "") -> dict:
  """The release metadata of the base file `path`, which must hold a `model` (any when ''); `hint`: what
  to do when the file is missing."""
  if not paths.path(path).exists():
    raise MissingInputError(f"released base not found: {path}{hint}")
  meta = release.metadata_of(path)
  if model and meta.get("model") != model:
    raise ConfigError(f"{path} holds a {meta.get('model')!r} base; this family grows {model}")
  return meta


def study(arg="vit"):
  if arg.startswith("demo"):
    return demo(arg.partition(",")[2])
  family = _check(arg or "vit")

  phases = phases_of(family)

  def run_of(arm: str, seed: int) -> dict:
    phase = next(p for p, arms in phases.items() if arm in arms)
    run = dict(name=f"{arm}_s{seed}", arg=f"{family},run={arm},seed={seed}", arm=arm, seed=seed, phase=phase)
    if arm_of(family, arm)[4]:
      run["needs"] = "base_s0"
    if arm == "deep" and FAMILIES[family].get("deep"):  # another family's run, recorded there
      other, _, other_arm = FAMILIES[family]["deep"].partition(",run=")
      run["same_as"] = f"docs/grow_study_{other}.json:{other_arm}_s{seed}"
    elif seed == 0 and phase != "ablations" and arm in FAMILIES[family].get("released", (arm,)):
      # every Table I row's seed-0 weights are released, unless the family names fewer (the base's: what
      # the grown arms start from)
      run["release"] = str(release_path(family, arm).relative_to(paths.REPO_ROOT))
    return run

  # seed by seed within a phase: every chunk adds paired runs
  runs = [run_of(arm, seed) for arms in phases.values() for seed in range(SEEDS) for arm in arms]
  labels = {a: arm_of(family, a)[0].format(**FAMILIES[family]) for a in arms_of(family)}
  vs = lambda arm: dict(a="scalenet", b=arm, family="grow", text=f"ScaleNet 2x beats {labels[arm]}")
  return dict(
      title=f"ScaleNet-grow on Fashion-MNIST, {family}: the paper's budget ratios",
      record=f"docs/grow_study_{family}.json",
      report=f"docs/grow_study_{family}.md",
      metric="top1",
      metric_text="top-1 on the Fashion-MNIST test set (10,000 images; at init: the 1,000-image minival split)",
      arms=labels,
      phases=list(phases),
      # the unique column shows it; half a layer, the paper's proportion, does not exist at this size
      notes=["The baselines' new layer adds more parameters than ScaleNet's adapters: a handicap for ScaleNet."],
      gate="headroom",  # the later phases start only once the headroom claim holds after correction
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
          *[
              dict(a="scalenet", b=a, family="ablations", text=f"ScaleNet 2x's recipe beats {labels[a]}")
              for a in phases["ablations"]
          ],
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


# ------------------------------------------------------------------------------------------------------
# The embedded demo (`python -m scalenet_jax.demo`): the study's grow recipe, one seed, a 20-minute budget
# ------------------------------------------------------------------------------------------------------
RELEASED = paths.REPO_ROOT / "pretrained" / "vit_micro_patch4_28_fmnist.safetensors"  # 30 epochs, pretrained/README.md
DEMO_ARMS = ("scalenet", *BASELINES, "scratch", "further")
# Fine-tuning steps at batch 128 (default / --quick) and the split they are scored on. 200 steps = 25,600
# images, 1.4 % of the released base's 1.77 M (the study fine-tunes a third of its base's): the 7 runs'
# ~0.16 forward GFLOPs per image x 25,600 images at ~0.18 s per image-GFLOP (the study's runs on a 2-core
# Xeon) is ~12.5 min of training, plus compiles and evaluations, within the demo's 20 minutes.
DEMO_BUDGET = {0: (200, "test"), 1: (10, "minival")}
DEMO_PRETRAIN_STEPS = {0: 400, 1: 20}  # --pretrain: a short (undertrained) base for a smoke test


def demo(arg=""):
  """The demo's plan: "base=FILE" (a ViT or Swin release; default RELEASED), "pretrain=1" (train a short
  base in the workdir instead), "quick=1", "seed=S". Its record and report live in the workdir."""
  a = config_lib.parse_arg(arg, base=str(RELEASED), pretrain=0, quick=0, seed=0)
  steps, split = DEMO_BUDGET[a["quick"]]
  fast = f"eval_split={split},xla_opt_level=1"  # short runs: compile time matters (docs/performance.md)
  if a["pretrain"]:  # the recorded base run gives the budget ratios
    family, base_file = "vit", f"{WORKDIR}/base_s{a['seed']}.safetensors"
    source = f"a base trained here for {DEMO_PRETRAIN_STEPS[a['quick']]} steps (an undertrained smoke-test base)"
  else:
    meta = _check_base(a["base"], hint=" (pass --base FILE, or --pretrain to train one here)")
    bases = {k: get_config(f"{k},run=base") for k in FAMILIES}  # each family's base: model and architecture
    held = (meta.get("model"), meta.get("timm_kwargs"))
    fits = [k for k, c in bases.items() if (c.model.name, release.timm_kwargs(c)) == held]
    # A study base names its family (families may share an architecture: vit3_p7 and vit3_p7_crops); any
    # other release grows by the first family of its architecture.
    own = meta.get("config", "").removeprefix("configs/grow_study.py:").partition(",")[0]
    family = own if own in fits else next(iter(fits), "")
    if not family:
      models = " or ".join(sorted({c.model.name for c in bases.values()}))
      raise ConfigError(f"{a['base']} holds a {meta.get('model')!r} base of no study family; the demo grows {models}")
    base_config = bases[family]  # the release's recipe
    base_file, base_images = a["base"], meta["steps"] * base_config.batch_size
    source = (
        f"the released `{paths.path(base_file).name}` (top-1 {meta['top1'] * 100:.2f}% on {meta['eval_split']} after "
        f"{base_images:,} training images)"
    )

  def run_of(arm: str, seed: int) -> dict:
    if arm == "base":
      arg_ = f"{family},run=base,seed={seed},steps={DEMO_PRETRAIN_STEPS[a['quick']]},{fast}"
      return dict(name=f"base_s{seed}", arg=arg_, arm=arm, seed=seed, phase="base", release=base_file)
    run = dict(name=f"{arm}_s{seed}", arm=arm, seed=seed, phase="grow")
    run["arg"] = f"{family},run={arm},seed={seed},steps={steps},{fast}"
    if ARMS[arm][4]:
      run["arg"] += f",base={base_file}"
      if a["pretrain"]:
        run["needs"] = f"base_s{seed}"
    return run

  f = FAMILIES[family]
  runs = [run_of("base", a["seed"])] * a["pretrain"] + [run_of(arm, a["seed"]) for arm in DEMO_ARMS]
  split_text = "the 10,000-image Fashion-MNIST test set" if split == "test" else "the 1,000-image minival split"
  return dict(
      title=f"ScaleNet-grow demo on Fashion-MNIST, {family}{' (--quick smoke run)' if a['quick'] else ''}",
      record=f"{WORKDIR}/record.json",
      report=f"{WORKDIR}/report.md",
      metric="top1",
      metric_text=f"top-1 on {split_text} (at init: the 1,000-image minival split held out of train)",
      notes=[
          f"Every grown row starts from {source}, as the fair study's recipe grows it (configs/grow_study.py: "
          f"adapters r={f['rank']}, baselines with {f['new']}, 0.4x the base's learning rate), and fine-tunes "
          f"{steps} steps at batch 128 ({steps * 128:,} images): a budget for a 20-minute demo, not the study's "
          "third of the base's. One seed: the differences are not tested here; the study "
          "(`python -m scalenet_jax.study --config configs/grow_study.py:vit2_p7_crops`, "
          "docs/grow_study_vit2_p7_crops.md) tests them.",
      ],
      arms={k: ARMS[k][0].format(**f) for k in ("base", *DEMO_ARMS)},
      phases=["base", "grow"] if a["pretrain"] else ["grow"],
      base_images=None if a["pretrain"] else base_images,
      runs=runs,
      make_run=run_of,
      max_seeds=1,
      claims=[],
      sec_per_image_gflop=0.13,  # as the study's
  )
