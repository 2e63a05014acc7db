"""The analyses of the paper as one function: `run(config, options) -> results` (+ PNGs and results.json).

`config` is the fine-tuning run's own config (`config_lib.train_config()`, e.g. the config file it was
trained with): its model, expansion, pretrained weights (`init_from`) and data (`data`, images of
`data.eval_split`) are read through `builder` and `data.from_config`, as the trainer reads them, so the
expanded model analysed is the one that run trained (the family's `adjust_scope` default included).
`AnalysisOptions` holds only what the analyses add: output dir, fine-tuned params, sample sizes.

Models compared (all built with `grow.expand` from the same pretrained params):
* `pretrained`: the plain model;
* `<expansion> @init` ("scaled before"): the expanded model at step 0, e.g. ScaleNet with shared cores;
* `<expansion> fine-tuned` ("scaled after", only with `scaled`): exported params of a fine-tuned run of
  that same expansion (checked shape by shape against the expanded tree);
* the `compare` expansions (default ScaleNet / Stack / Interpolate / Random) for gradient norms and
  step-0 accuracy: the run's expansion settings with another `kind`.

Selected layers (`layers`) are block indices of the scaled model, in forward order over all stacks. Its
pretrained counterpart is the layer whose weights the block runs (shared layouts) or, for layouts of
independent layers, the block at the same relative depth of the same stack.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import ml_collections
import numpy as np

from scalenet_jax import builder, config_lib, counting, paths
from scalenet_jax import data as data_lib
from scalenet_jax.analysis import cka as cka_lib
from scalenet_jax.analysis import plots, probes
from scalenet_jax.data import from_config
from scalenet_jax.errors import ConfigError
from scalenet_jax.grow import expand as grow_lib
from scalenet_jax.grow.spec import KINDS, ExpansionSpec

FIGURES = ("grad_norms.png", "activation_hist.png", "cka.png", "accuracy.png")
MAX_HIST_VALUES = 400_000  # per model and layer: a random subsample keeps big models cheap


@dataclasses.dataclass(frozen=True)
class AnalysisOptions:
  """What the analyses add to the run's config (model, expansion, weights and data come from the config)."""

  out: str
  scaled: str = ""  # exported params dir of a fine-tuned run of the config's expansion
  compare: tuple[str, ...] = ("scalenet", "stack", "interpolate", "random")
  batch: int = 64
  num_batches: int = 4  # batches for CKA and activation histograms (gradients use the first)
  eval_examples: int = 1000
  layers: Optional[tuple[int, ...]] = None  # scaled-model blocks; default first / middle / last
  unbiased_cka: bool = True
  bins: int = 80

  def __post_init__(self):
    for kind in self.compare:
      if kind not in KINDS:
        raise ValueError(f"unknown expansion kind {kind!r}; choose one of {KINDS}")
    if self.batch < 4:
      raise ValueError(f"batch must be >= 4 (unbiased CKA needs 4 examples), got {self.batch}")
    if self.num_batches < 1 or self.eval_examples < 1:
      raise ValueError("num_batches and eval_examples must be >= 1")


# ----------------------------------------------------------------------------------------------
# Models and inputs, from the run's config
# ----------------------------------------------------------------------------------------------
def with_kind(config, kind: Optional[str] = None) -> ml_collections.ConfigDict:
  """`config` (resolved: `quick` merged as the trainer does) with `expansion.kind = kind` (None: its own)."""
  c = config_lib.resolve(config)
  if kind is not None:
    c.expansion.kind = kind
  return c


def expansion_spec(config, kind: Optional[str] = None) -> ExpansionSpec:
  """The ExpansionSpec the trainer builds for `config` (`builder.expansion_spec`), with another `kind`
  for the compared expansions; a config without an expansion has nothing to analyse."""
  spec = builder.expansion_spec(with_kind(config, kind))
  if spec is None:
    raise ConfigError(
        "the analyses compare an expansion with its base: the config has none (set --config.expansion.kind)"
    )
  return spec


def pretrained_params(config, model):
  """The base's params: `init_from` as the trainer loads it, or a random init (seed `config.seed`) when
  `init_from` is empty (smoke runs)."""
  if not config.init_from:
    return model.init_params(config.seed)
  return builder.load_pretrained(config, model)


def _batches(config, options: AnalysisOptions, model, count: int):
  """The first `count` examples of `data.eval_split`, preprocessed as the trainer evaluates them."""
  d, mc = config.data, model.config
  image_shape = (mc.img_size, mc.img_size, mc.in_chans)
  source = from_config.open_source(
      d, d.eval_split, cache_dir=options.out, image_shape=image_shape, num_classes=mc.num_classes
  )
  n = min(count, len(source))
  subset = data_lib.SubsetSource(source, np.arange(n), name=f"{d.name}/{d.eval_split}[:{n}]")
  prep = from_config.preprocess(d, mc.img_size, mc.in_chans)
  for b in data_lib.eval_batches(subset, options.batch, preprocess=prep, num_threads=d.num_threads):
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


def select_layers(options: AnalysisOptions, num_blocks: int) -> list[int]:
  layers = options.layers if options.layers is not None else sorted({0, num_blocks // 2, num_blocks - 1})
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


def _representations(options, seed, variants, fns, batches, pairs, layers):
  """Activation histograms of the selected blocks and CKA matrices, streamed over the analysis batches."""
  labels = list(variants)  # pretrained, scaled @init[, scaled fine-tuned]
  cka_pairs = [("pretrained", "pretrained")] + [(s, "pretrained") for s in labels[1:]]
  if len(labels) == 3:
    cka_pairs.append((labels[2], labels[1]))
  accs = {pair: cka_lib.CKAAccumulator(options.unbiased_cka) for pair in cka_pairs}
  rng = np.random.RandomState(seed)
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
      "unbiased": options.unbiased_cka,
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
  return _histograms(samples, layers, pairs, options.bins, titles), cka, panels


def run(config, options: AnalysisOptions) -> dict:
  """Runs every analysis of the expansion `config` trains, writes `FIGURES` and `results.json` into
  `options.out`, returns the results."""
  config = with_kind(config)
  out = options.out
  paths.path(out).mkdir(parents=True, exist_ok=True)
  model = builder.base_model(config)
  spec = expansion_spec(config)
  tag = spec.kind
  # Validate the layer selection on the (cheap, param-free) structure before any real work.
  pairs = counterparts(grow_lib.expanded_model(model, spec), model)
  layers = select_layers(options, len(pairs))
  pre = pretrained_params(config, model)
  scaled_model, before = grow_lib.expand(pre, model, spec)
  after = None
  if options.scaled:
    from scalenet_jax.train import checkpoint  # pylint: disable=g-import-not-at-top  (orbax only when needed)

    after = checkpoint.load_params_like(options.scaled, before)

  # ---- Models: label -> (model, params)
  variants = {"pretrained": (model, pre), f"{tag} @init": (scaled_model, before)}
  if after is not None:
    variants[f"{tag} fine-tuned"] = (scaled_model, after)
  compare = {}
  for kind in options.compare:
    compare[kind] = (scaled_model, before) if kind == tag else grow_lib.expand(pre, model, expansion_spec(config, kind))
  results = {"config": config.to_dict(), "options": dataclasses.asdict(options), "models": {}}
  for label, (m, p) in {**variants, **{k: v for k, v in compare.items() if k != tag}}.items():
    results["models"][label] = {
        "blocks": len(probes.block_table(m)),
        "params": counting.count_params(p),
        "layouts": [dataclasses.asdict(l) for l in m.stack_layouts],
    }

  # ---- Data (analysis batches are the first `num_batches * batch` examples of the split)
  # Unbiased HSIC needs 4 examples: a short last batch (tiny dataset) is dropped.
  split = f"{config.data.name}/{config.data.eval_split}"
  batches = [b for b in _batches(config, options, model, options.num_batches * options.batch) if len(b["label"]) >= 4]
  if not batches:
    raise ValueError(f"{split} has fewer than 4 examples: nothing to analyse")
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
  hists, results["cka"], panels = _representations(options, config.seed, variants, fns, batches, pairs, layers)
  results["activations"] = hists

  # ---- Accuracy before fine-tuning (and after, when given)
  eval_batches = list(_batches(config, options, model, options.eval_examples))
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
      "split": split,
  }

  # ---- Figures + numbers
  title = f"{config.model.name}: gradient norms on one batch of {len(first['label'])}"
  figs = [
      plots.grad_norms_figure(str(paths.path(out) / FIGURES[0]), grads, title),
      plots.histogram_figure(str(paths.path(out) / FIGURES[1]), hists),
      plots.cka_figure(str(paths.path(out) / FIGURES[2]), panels, options.unbiased_cka),
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
