r"""ScaleNet-search end to end: supernet training → MCEA → generalisation → export → report.

Entry point of `python -m scalenet_jax.main` for configs with a top-level `pipeline` field
(`'nas_search'`, `'nas_supernet'`, `'nas_retrain'`; mode 'train' only): the stages and their outputs are
described in `docs/nas.md` §10.
"""

from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np

from scalenet_jax import config_lib, jax_utils, paths
from scalenet_jax import data as data_lib
from scalenet_jax.data import from_config
from scalenet_jax.errors import ConfigError
from scalenet_jax.nas import export, generalize, mcea, rank_corr, sampling
from scalenet_jax.nas import train_supernet as ts
from scalenet_jax.nas.evaluate import PathEvaluator
from scalenet_jax.nas.space import (Arch, all_resolutions, apply_scaling, count_macs, count_params, path_macs)
from scalenet_jax.nas.supernet import SuperNet
from scalenet_jax.train import checkpoint as ckpt_lib
from scalenet_jax.jax_utils import print0 as _log

PIPELINES = ("nas_search", "nas_supernet", "nas_retrain")


def run(config, workdir: str, mode: str = "train") -> dict:
  """Runs the pipeline named by `config.pipeline` (see `docs/nas.md` §10)."""
  if config.pipeline not in PIPELINES:
    raise ConfigError(f"unknown pipeline {config.pipeline!r}; known: {PIPELINES}")
  if mode != "train":
    raise ConfigError(f"pipeline {config.pipeline!r} supports only --mode=train, got {mode!r}")
  config = config_lib.resolve(config)
  if config.pipeline == "nas_supernet":
    ts.train_supernet(config, workdir)
    return {"workdir": workdir}
  if config.pipeline == "nas_retrain":
    return retrain(config, workdir)
  return run_search(config, workdir)


# ----------------------------------------------------------------------------------------------------
# Stand-alone retraining of an exported architecture
# ----------------------------------------------------------------------------------------------------
def resolve_arch(spec: str) -> Arch:
  """An arch JSON written by `export.save_arch`, or a released ImageNet model 's0'..'s5'."""
  if spec in export.RELEASED:
    from scalenet_jax.nas.space import get_space  # pylint: disable=g-import-not-at-top

    alpha, S = export.RELEASED[spec]
    return apply_scaling(alpha, S, get_space("imagenet"))
  return export.load_arch(spec)


def retrain(config, workdir: str) -> dict:
  arch = resolve_arch(config.arch)
  info = ts.train_standalone(config, workdir, arch)
  variables = info.pop("variables")
  if jax.process_index() == 0:
    ckpt_lib.export_params(paths.path(workdir) / "export" / "params", jax.device_get(variables), overwrite=True)
  info.update(arch=config.arch, macs=count_macs(arch), params=count_params(arch), resolution=arch.resolution)
  _write_json(paths.path(workdir) / "result.json", info)
  _log(f"done: {config.arch} top1 {info['top1']:.4f} on {info['eval_split']} ({workdir})")
  return info


# ----------------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------------
def minival_batches(sn_cfg, space, batch_size: int) -> dict:
  """{resolution: [(images, labels), ...]}: the mini-val split preprocessed (no augmentation) at every
  resolution of the space, the way training preprocesses it."""
  source = ts.open_split(sn_cfg, sn_cfg.data.eval_split)
  idx = np.arange(len(source))
  labels = source.labels.astype(np.int32)
  out = {}
  for r in all_resolutions(space):
    prep = data_lib.Preprocessor(source, from_config.preprocess(sn_cfg.data, r, space.in_channels), train=False)
    x = prep(idx)
    out[r] = [(x[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(idx), batch_size)]
  return out


def flops_histograms(space, n: int, seed: int, path: str) -> dict:
  # hss: η ∝ width candidates (the official code); hss_uniform: η uniform over stages.
  macs = {m: sampling.sample_macs(space, m, n, seed) for m in ("hss", "hss_uniform", "uniform")}
  sampling.plot_histograms(space, macs, path)
  return {m: {"modes": sampling.count_modes(v), "median_mmacs": float(np.median(v) / 1e6)} for m, v in macs.items()}


def _standalone_accs(sn_cfg, pairs, space, rc, workdir) -> list[float]:
  """Brief stand-alone training of each (α, S) pair from its own fresh init; top-1 on the mini-val split.
  `rc.masked`: through the masked supernet, one compiled program per (resolution, bucket)
  (`train_supernet.train_paths_masked`, `rc.vmap_size` paths per call); else one `PathNet` per path
  (`train_supernet.train_standalone`: a compile per path, but a cheaper step on CPU, `docs/nas.md` §4)."""
  c = config_lib.override(
      ml_collections.ConfigDict(sn_cfg.to_dict()),
      {
          "steps": rc.steps,
          "batch_size": rc.batch_size,
          "log_every": rc.steps,
          "ckpt_every": 0,
          "optim.warmup_steps": min(sn_cfg.optim.warmup_steps, rc.steps // 4),
          "optim.total_steps": None,
      },
  )
  masked = rc.get("masked", False)  # configs written before the field: per-path PathNets
  if not isinstance(masked, bool):
    raise ConfigError(f"rank_corr.masked must be True or False, got {masked!r}")
  if masked:
    return ts.train_paths_masked(c, workdir, pairs, space, vmap_size=rc.get("vmap_size", 1))
  wd = paths.path(workdir)
  return [
      ts.train_standalone(c, str(wd / f"path{i}"), apply_scaling(a, S, space))["top1"] for i, (a, S) in enumerate(pairs)
  ]


def rank_correlation(config, space, evaluators: dict, workdir: str) -> dict:
  """Samples `num_paths` paths, trains each stand-alone briefly and correlates with every supernet's
  one-shot accuracy (`evaluators`: {sampling method: PathEvaluator})."""
  rc = config.rank_corr
  pairs = [sampling.sample_path(space, "hss", rc.seed, i) for i in range(rc.num_paths)]
  alone = _standalone_accs(config.supernet, pairs, space, rc, str(paths.path(workdir) / "rank_corr"))
  out = {
      "standalone_accs": alone,
      "paths": [{"alpha": a.to_dict(), "scaling": S.to_dict(), "macs": path_macs(a, S, space)} for a, S in pairs],
  }
  for name, ev in evaluators.items():
    out[name] = rank_corr.path_rank_correlation(pairs, ev, alone)
  return out


def run_search(config, workdir: str) -> dict:
  t_start = time.time()
  wd = paths.path(workdir)
  wd.mkdir(parents=True, exist_ok=True)
  sn = config.supernet
  space = ts.space_of(sn)
  timings, results = {}, {"space": space.name, "quick": bool(config.quick), "machine": jax_utils.machine()}

  # ---- 1. Sampling histograms
  _stage(1, f"MACs histograms of {config.hist_samples} HSS and uniform samples")
  t = time.time()
  results["flops_hist"] = flops_histograms(space, config.hist_samples, sn.seed, wd / "flops_hist.png")
  timings["histograms"] = time.time() - t

  # ---- 2. Supernet
  _stage(2, f"super-supernet training, {sn.steps} steps")
  t = time.time()
  params = ts.train_supernet(sn, str(wd / "supernet"))
  timings["supernet"] = time.time() - t

  # ---- 3. MCEA on the mini-val split
  _stage(3, "MCEA on the mini-val split")
  t = time.time()
  s = config.search
  minival = minival_batches(sn, space, s.eval_batch_size)
  evaluator = PathEvaluator(SuperNet(space), params, space, minival, vmap_size=s.vmap_size)
  progress = lambda line: _log(f"{line} [{time.time() - t:.0f}s]")  # MCEA's lines end in its path count
  mcfg = mcea.MCEAConfig.from_config(s)  # every MCEAConfig field of config.search
  res = mcea.run_mcea(space, evaluator, mcfg, state_path=str(wd / "mcea.json"), progress=progress)
  alpha, scalings = res["alpha"], list(res["scalings"])
  timings["mcea"] = time.time() - t
  # The search's own count, kept in its state: a resumed run reports the evaluations of every invocation.
  results.update(
      alpha=alpha.to_dict(), objective=res["objective"], history=res["history"], paths_evaluated=res["paths_evaluated"]
  )

  # ---- 4. Generalisation to larger stages
  _stage(4, f"fits of S_0..S_M, {config.extra_stages} extrapolated stages; export")
  t = time.time()
  M = len(scalings) - 1
  extra = generalize.extrapolate(alpha, scalings, space, stages=list(range(M + 1, M + 1 + config.extra_stages)))
  generalize.plot_fits(scalings, space, wd / "fits.png", extra_stages=config.extra_stages)
  results["fits"] = {k: list(v) for k, v in generalize.fit_all(scalings, space).items()}
  timings["generalize"] = time.time() - t

  # ---- 5. Export (every file is re-loaded and built as a stand-alone model)
  rows = []
  for j, S in enumerate(scalings + extra):
    rel = f"archs/s{j}.json"
    path = str(wd / rel)
    rec = export.save_arch(path, alpha, S, space)
    arch = export.load_arch(path)
    model = export.build_model(arch)
    x = jax.ShapeDtypeStruct((1, arch.resolution, arch.resolution, arch.in_channels), np.float32)
    jax.eval_shape(lambda k: model.init(k, x), jax.random.key(0))
    rows.append(
        {
            "stage": j,
            "searched": j <= M,
            **S.to_dict(),
            "macs": rec["macs"],
            "params": rec["params"],
            "file": rel,
            "minival_acc": evaluator([(alpha, S)])[0] if j <= M else None,
        }
    )
  results["archs"] = rows

  # ---- 6. Rank correlation (optional)
  if config.rank_corr.num_paths > 0:
    _stage(5, f"rank correlation over {config.rank_corr.num_paths} stand-alone trained paths")
    t = time.time()
    evaluators = {sn.sampling: evaluator}
    if config.rank_corr.compare_uniform and sn.sampling != "uniform":
      c = config_lib.override(ml_collections.ConfigDict(sn.to_dict()), {"sampling": "uniform"})
      p_u = ts.train_supernet(c, str(wd / "supernet_uniform"))
      evaluators["uniform"] = PathEvaluator(SuperNet(space), p_u, space, minival, vmap_size=s.vmap_size)
    results["rank_corr"] = rank_correlation(config, space, evaluators, workdir)
    timings["rank_corr"] = time.time() - t

  timings["total"] = time.time() - t_start
  results["timings_sec"] = timings
  _write_json(wd / "results.json", results)
  if jax.process_index() == 0:
    paths.write_text(wd / "report.md", render_report(config, space, results))
  _log(f"done: report in {wd / 'report.md'} ({timings['total']:.0f}s)")
  return results


# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------
def _stage(k: int, what: str):
  _log(f"== {k}/5 {what}")


def _write_json(path, obj):
  if jax.process_index() == 0:
    paths.write_json(path, obj)


def render_report(config, space, r: dict) -> str:
  sn = config.supernet
  n, m = r["paths_evaluated"], r["machine"]
  n_evaluated = "an unrecorded number of" if n is None else f"{n:,}"  # None: an MCEA state from before the count
  L = [
      f"# ScaleNet-search on {sn.data.name}, space '{space.name}'{' (quick smoke run)' if r['quick'] else ''}",
      "",
      f"Supernet: {sn.steps} steps, batch {sn.batch_size}, sampling `{sn.sampling}`; MCEA: "
      f"{config.search.iterations} iterations, population {config.search.population}, "
      f"{config.search.generations} generations, {n_evaluated} paths evaluated on the mini-val split "
      f"({sn.data.minival_per_class} images per class held out of train); channel coupling "
      f"`{space.coupling}`; stem stride {space.stem_stride}.",
      "",
      f"Measured on {m['cpu']}, {m['cores']} cores ({m['backend']}); jax {m['jax']}, flax {m['flax']}.",
      "",
      "## Sampling: MACs histograms",
      "",
      "![HSS vs uniform](flops_hist.png)",
      "",
      "| sampler | modes | median MMACs |",
      "|---|---|---|",
  ]
  L += [f"| {m} | {v['modes']} | {v['median_mmacs']:.2f} |" for m, v in r["flops_hist"].items()]
  L += [
      "",
      "## Searched and extrapolated architectures",
      "",
      f"Base model α: depths {r['alpha']['depths']}, kernels {r['alpha']['kernels']}; objective "
      f"{r['objective']:.4f}.",
      "",
      "| stage | kind | d | w | r | MMACs | MACs / S0 | params (M) | mini-val acc | file |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  m0 = r["archs"][0]["macs"]
  for a in r["archs"]:
    acc = "" if a["minival_acc"] is None else f"{a['minival_acc']:.4f}"
    L.append(
        f"| S{a['stage']} | {'searched' if a['searched'] else 'extrapolated'} | {a['d']:.3f} | {a['w']:.3f} | "
        f"{a['r']} | {a['macs'] / 1e6:.2f} | {a['macs'] / m0:.2f} | {a['params'] / 1e6:.3f} | {acc} | "
        f"`{a['file']}` |"
    )
  L += [
      "",
      "## MCEA: per-iteration accuracy of the final α population",
      "",
      "| iteration | objective | population mean | population std |",
      "|---|---|---|---|",
  ]
  L += [
      f"| {h['iteration']} | {h['objective']:.4f} | {h['pop_mean']:.4f} | {h['pop_std']:.4f} |"
      for h in r["history"]
      if h["phase"] == "alpha"
  ]
  L += [
      "",
      "## Generalisation: x_j = a0 (a1^j - 1) + 1",
      "",
      "![fits](fits.png)",
      "",
      "| dim | a0 | a1 |",
      "|---|---|---|",
  ]
  L += [f"| {k} | {v[0]:.4f} | {v[1]:.4f} |" for k, v in r["fits"].items()]
  if "rank_corr" in r:
    L += [
        "",
        "## Rank correlation: supernet vs stand-alone (mini-val top-1)",
        "",
        f"{len(r['rank_corr']['standalone_accs'])} HSS-sampled paths, each trained stand-alone for "
        f"{config.rank_corr.steps} steps.",
        "",
        "| supernet | Pearson | Spearman [95% bootstrap CI] | Kendall [95% bootstrap CI] |",
        "|---|---|---|---|",
    ]
    ci = lambda v, k: f"{v[k]:.3f} [{v[k + '_ci'][0]:.3f}, {v[k + '_ci'][1]:.3f}]" if k + "_ci" in v else f"{v[k]:.3f}"
    for name, v in r["rank_corr"].items():
      if isinstance(v, dict) and "pearson" in v:
        L.append(f"| {name} | {v['pearson']:.3f} | {ci(v, 'spearman')} | {ci(v, 'kendall')} |")
  L += [
      "",
      "## Time (seconds, this invocation: stages resumed from the workdir take ~0)",
      "",
      "| phase | sec |",
      "|---|---|",
  ]
  L += [f"| {k} | {v:.0f} |" for k, v in r["timings_sec"].items()]
  L += [
      "",
      "Exported architectures build stand-alone models with `scalenet_jax.nas.export.build_model("
      "export.load_arch(path))` and retrain with `python -m scalenet_jax.main --config "
      "configs/nas_retrain.py:<workdir>/archs/s0.json --workdir DIR`.",
      "",
  ]
  return "\n".join(L)
