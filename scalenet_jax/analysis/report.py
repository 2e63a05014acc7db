"""The analyses of the paper as one function: `run(AnalysisConfig) -> results` (+ PNGs and results.json).

Models compared (all built with `grow.expand` from the same pretrained params):
* `pretrained`: the plain model;
* `<expansion> @init` ("scaled before"): the expanded model at step 0, e.g. ScaleNet with shared cores;
* `<expansion> fine-tuned` ("scaled after", only with `scaled`): exported params of a fine-tuned run of
  that same expansion (checked shape by shape against the expanded tree);
* the `compare` expansions (default ScaleNet / Stack / Interpolate / Random) for gradient norms and
  step-0 accuracy.

Selected layers (`layers`) are block indices of the scaled model, in forward order over all stacks. Its
pretrained counterpart is the layer whose weights the block runs (shared layouts) or, for layouts of
independent layers, the block at the same relative depth of the same stack.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from scalenet_jax import counting, paths
from scalenet_jax import data as data_lib
from scalenet_jax.analysis import cka as cka_lib
from scalenet_jax.analysis import plots, probes
from scalenet_jax.grow import expand as grow_lib
from scalenet_jax.grow.spec import KINDS, ExpansionSpec
from scalenet_jax.models import create_model

FIGURES = ("grad_norms.png", "activation_hist.png", "cka.png", "accuracy.png")
MAX_HIST_VALUES = 400_000  # per model and layer: a random subsample keeps big models cheap


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
  model: str
  # exported params dir (<workdir>/export/params), a timm-format checkpoint (a release file of pretrained/)
  # or 'init' (random, seed `seed`)
  pretrained: str
  out: str
  scaled: str = ""  # exported params dir of a fine-tuned run of the `expansion` model
  expansion: str = "scalenet"
  reuse: int = 2
  mapping: str = "interpolate"  # interpolate | stack | comma-separated core indices
  adjust: str = "adapter"
  rank: int = 16
  seed: int = 0
  compare: tuple[str, ...] = ("scalenet", "stack", "interpolate", "random")
  batch: int = 64
  num_batches: int = 4  # batches for CKA and activation histograms (gradients use the first)
  eval_examples: int = 1000
  layers: Optional[tuple[int, ...]] = None  # scaled-model blocks; default first / middle / last
  data: str = "fashion_mnist"
  data_root: str = ""
  split: str = "test"
  mean: tuple[float, ...] = (0.5,)
  std: tuple[float, ...] = (0.5,)
  pad: int = 0  # zero padding per side before normalisation (a release file's `pad`)
  unbiased_cka: bool = True
  bins: int = 80

  def __post_init__(self):
    for kind in (self.expansion, *self.compare):
      if kind not in KINDS:
        raise ValueError(f"unknown expansion kind {kind!r}; choose one of {KINDS}")
    if self.batch < 4:
      raise ValueError(f"batch must be >= 4 (unbiased CKA needs 4 examples), got {self.batch}")
    if self.num_batches < 1 or self.eval_examples < 1:
      raise ValueError("num_batches and eval_examples must be >= 1")

  def spec(self, kind: str) -> ExpansionSpec:
    mapping = self.mapping
    if mapping not in ("interpolate", "stack"):
      try:
        mapping = tuple(int(v) for v in mapping.split(","))
      except ValueError:
        raise ValueError(f"mapping must be interpolate, stack or comma-separated ints, got {self.mapping!r}")
    return ExpansionSpec(
        kind=kind, reuse=self.reuse, mapping=mapping, adjust=self.adjust, rank=self.rank, seed=self.seed
    )


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def pretrained_params(cfg: AnalysisConfig, model):
  if cfg.pretrained == "init":
    return model.init_params(cfg.seed)
  from scalenet_jax import builder  # pylint: disable=g-import-not-at-top

  return builder.read_pretrained(cfg.pretrained, model)


def _batches(cfg: AnalysisConfig, model, count: int):
  source = data_lib.get_source(cfg.data, cfg.split, **({"root": cfg.data_root} if cfg.data_root else {}))
  n = min(count, len(source))
  mc = model.config
  channels = mc.in_chans
  mean = cfg.mean * channels if len(cfg.mean) == 1 else cfg.mean
  std = cfg.std * channels if len(cfg.std) == 1 else cfg.std
  pp = data_lib.Preprocess(
      img_size=mc.img_size,
      recipe="simple",
      to_rgb=channels == 3 and len(source.image_shape) == 3 and source.image_shape[-1] == 1,
      mean=tuple(mean),
      std=tuple(std),
      pad=cfg.pad,
  )
  subset = data_lib.SubsetSource(source, np.arange(n), name=f"{cfg.data}/{cfg.split}[:{n}]")
  for b in data_lib.eval_batches(subset, cfg.batch, preprocess=pp):
    keep = np.asarray(b["mask"], bool)
    yield {"image": b["image"][keep], "label": b["label"][keep], "mask": keep[keep]}


# ----------------------------------------------------------------------------------------------
# Layer selection
# ----------------------------------------------------------------------------------------------
def counterparts(scaled_model, pre_model) -> list[int]:
  """For each scaled block (forward order), the index of its counterpart among the pretrained blocks."""
  pre = probes.block_table(pre_model)
  offset = {}
  for i, b in enumerate(pre):
    offset.setdefault(b.stack, i)
  depth = {s: sum(b.stack == s for b in pre) for s in offset}
  scaled = probes.block_table(scaled_model)
  sdepth = {s: sum(b.stack == s for b in scaled) for s in offset}
  mapped = any(l != type(l).identity(l.depth) for l in scaled_model.stack_layouts)
  out = []
  for b in scaled:
    j = b.core if mapped else min(depth[b.stack] - 1, int(b.index * depth[b.stack] / sdepth[b.stack]))
    out.append(offset[b.stack] + j)
  return out


def select_layers(cfg: AnalysisConfig, num_blocks: int) -> list[int]:
  layers = cfg.layers if cfg.layers is not None else sorted({0, num_blocks // 2, num_blocks - 1})
  bad = [l for l in layers if not 0 <= l < num_blocks]
  if bad:
    raise ValueError(f"--layers index {bad[0]} out of range: the scaled model has {num_blocks} blocks")
  return list(layers)


# ----------------------------------------------------------------------------------------------
# Analyses
# ----------------------------------------------------------------------------------------------
def _subsample(x, k, rng):
  x = np.asarray(x, np.float32).ravel()
  return x if x.size <= k else x[rng.choice(x.size, k, replace=False)]


def _histograms(samples: dict, layers, pairs, bins: int, titles) -> list[dict]:
  """Shared-bin densities per selected layer; `samples[label][layer] = [value arrays]`."""
  out = []
  for j, title in zip(layers, titles):
    series = {lab: np.concatenate(samples[lab][j]) for lab in samples}
    allv = np.concatenate(list(series.values()))
    lo, hi = np.percentile(allv, [0.05, 99.95])
    edges = np.linspace(lo, hi, bins + 1)
    out.append(
        {
            "scaled_block": j,
            "pretrained_block": pairs[j],
            "title": title,
            "edges": edges.tolist(),
            "series": {lab: np.histogram(v, edges, density=True)[0].tolist() for lab, v in series.items()},
            "stats": {
                lab: {
                    "mean": float(v.mean()),
                    "std": float(v.std()),
                    "abs_max": float(np.abs(v).max()),
                    "values": int(v.size),
                }
                for lab, v in series.items()
            },
        }
    )
  return out


def _finite_or_none(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _finite_or_none(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_finite_or_none(v) for v in x]
  return x


def _representations(cfg, variants, fns, batches, pairs, layers):
  """Activation histograms of the selected blocks and CKA matrices, streamed over the analysis batches."""
  labels = list(variants)  # pretrained, scaled @init[, scaled fine-tuned]
  cka_pairs = [("pretrained", "pretrained")] + [(s, "pretrained") for s in labels[1:]]
  if len(labels) == 3:
    cka_pairs.append((labels[2], labels[1]))
  accs = {pair: cka_lib.CKAAccumulator(cfg.unbiased_cka) for pair in cka_pairs}
  rng = np.random.RandomState(cfg.seed)
  per_batch = max(1, MAX_HIST_VALUES // len(batches))
  samples = {label: {j: [] for j in layers} for label in labels}
  for b in batches:
    outs = {label: [np.asarray(o) for o in fns[label](p, b["image"])[1]] for label, (_, p) in variants.items()}
    for label in labels:
      for j in layers:
        samples[label][j].append(_subsample(outs[label][pairs[j] if label == "pretrained" else j], per_batch, rng))
    for (a, c), acc in accs.items():
      acc.update(outs[a], None if a == c else outs[c])

  tables = {label: probes.block_table(m) for label, (m, _) in variants.items()}
  titles = [
      f"{labels[1]} {tables[labels[1]][j].label} | pretrained {tables['pretrained'][pairs[j]].label}" for j in layers
  ]
  cka = {
      "unbiased": cfg.unbiased_cka,
      "examples": sum(len(b["label"]) for b in batches),
      "features": "block outputs, tokens x channels flattened",
      "pairs": [],
  }
  panels = []
  for (a, c), acc in accs.items():
    m = acc.result()
    cka["pairs"].append(
        {
            "rows": a,
            "cols": c,
            "matrix": m.tolist(),
            "row_blocks": [t.label for t in tables[a]],
            "col_blocks": [t.label for t in tables[c]],
        }
    )
    panels.append({"title": f"{a} vs {c}", "matrix": m, "ylabel": f"{a} block", "xlabel": f"{c} block"})
  return _histograms(samples, layers, pairs, cfg.bins, titles), cka, panels


def run(cfg: AnalysisConfig) -> dict:
  """Runs every analysis, writes `FIGURES` and `results.json` into `cfg.out`, returns the results."""
  paths.path(cfg.out).mkdir(parents=True, exist_ok=True)
  model = create_model(cfg.model)
  tag = cfg.expansion
  # Validate the layer selection on the (cheap, param-free) structure before any real work.
  pairs = counterparts(grow_lib.expanded_model(model, cfg.spec(tag)), model)
  layers = select_layers(cfg, len(pairs))
  pre = pretrained_params(cfg, model)
  scaled_model, before = grow_lib.expand(pre, model, cfg.spec(tag))
  after = None
  if cfg.scaled:
    from scalenet_jax.train import checkpoint  # pylint: disable=g-import-not-at-top  (orbax only when needed)

    after = checkpoint.load_params_like(cfg.scaled, before)

  # ---- Models: label -> (model, params)
  variants = {"pretrained": (model, pre), f"{tag} @init": (scaled_model, before)}
  if after is not None:
    variants[f"{tag} fine-tuned"] = (scaled_model, after)
  compare = {}
  for kind in cfg.compare:
    compare[kind] = (scaled_model, before) if kind == tag else grow_lib.expand(pre, model, cfg.spec(kind))
  results = {"config": dataclasses.asdict(cfg), "models": {}}
  for label, (m, p) in {**variants, **{k: v for k, v in compare.items() if k != tag}}.items():
    results["models"][label] = {
        "blocks": len(probes.block_table(m)),
        "params": counting.count_params(p),
        "layouts": [dataclasses.asdict(l) for l in m.stack_layouts],
    }

  # ---- Data (analysis batches are the first `num_batches * batch` examples of the split)
  # Unbiased HSIC needs 4 examples: a short last batch (tiny dataset) is dropped.
  batches = [b for b in _batches(cfg, model, cfg.num_batches * cfg.batch) if len(b["label"]) >= 4]
  if not batches:
    raise ValueError(f"{cfg.data}/{cfg.split} has fewer than 4 examples: nothing to analyse")
  first = batches[0]

  # ---- Gradient norms on one batch
  grads = {"pretrained": probes.gradient_norms(model, pre, first["image"], first["label"])}
  for kind, (m, p) in compare.items():
    grads[kind] = probes.gradient_norms(m, p, first["image"], first["label"], per_instance=probes.is_shared(m))
  if after is not None:
    grads[f"{tag} fine-tuned"] = probes.gradient_norms(
        scaled_model, after, first["image"], first["label"], per_instance=probes.is_shared(scaled_model)
    )
  results["grad_norms"] = grads

  # ---- Block outputs: activation histograms + CKA
  fns = {label: probes.make_block_outputs_fn(m) for label, (m, _) in variants.items()}
  hists, results["cka"], panels = _representations(cfg, variants, fns, batches, pairs, layers)
  results["activations"] = hists

  # ---- Accuracy before fine-tuning (and after, when given)
  eval_batches = list(_batches(cfg, model, cfg.eval_examples))
  acc_models = {"pretrained": (model, pre), **{f"{k} @init": v for k, v in compare.items()}}
  acc_models.setdefault(f"{tag} @init", (scaled_model, before))
  if after is not None:
    acc_models[f"{tag} fine-tuned"] = (scaled_model, after)
  # The variants' block-output functions are compiled already: reuse them for their logits.
  applies = {label: (lambda fn: lambda p, x: fn(p, x)[0])(fns[label]) for label in fns}
  accuracy = {
      label: probes.accuracy(m, p, eval_batches, applies.get(label))["top1"] for label, (m, p) in acc_models.items()
  }
  results["accuracy"] = {
      "top1": accuracy,
      "examples": sum(len(b["label"]) for b in eval_batches),
      "split": f"{cfg.data}/{cfg.split}",
  }

  # ---- Figures + numbers
  out = cfg.out
  figs = [
      plots.grad_norms_figure(
          str(paths.path(out) / FIGURES[0]), grads, f"{cfg.model}: gradient norms on one batch of {len(first['label'])}"
      ),
      plots.histogram_figure(str(paths.path(out) / FIGURES[1]), hists),
      plots.cka_figure(str(paths.path(out) / FIGURES[2]), panels, cfg.unbiased_cka),
      plots.accuracy_figure(
          str(paths.path(out) / FIGURES[3]),
          accuracy,
          results["accuracy"]["examples"],
          chance=1.0 / model.config.num_classes,
      ),
  ]
  results["figures"] = figs
  paths.write_json(paths.path(out) / "results.json", _finite_or_none(results))
  return results
