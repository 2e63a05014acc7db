"""PNG figures of the analyses (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from scalenet_jax import paths

plt = paths.pyplot()


def _save(fig, path):
  fig.tight_layout()
  paths.save_figure(fig, path)
  plt.close(fig)
  return path


def grad_norms_figure(path, norms: Mapping[str, dict], title: str = "") -> str:
  """Two panels over all stacks concatenated: core weights per distinct layer, own params per block.

  `norms`: model label -> `probes.gradient_norms` result. Shared (ScaleNet) core layers appear once.
  """
  fig, (ax_core, ax_own) = plt.subplots(1, 2, figsize=(12, 4.2))
  for label, g in norms.items():
    core = np.concatenate([g["core"][s] for s in g["core"]])
    own = np.concatenate([g["block"][s] for s in g["block"]])
    ax_core.plot(np.arange(len(core)), core, marker="o", label=f"{label} ({len(core)} distinct)")
    ax_own.plot(np.arange(len(own)), own, marker=".", label=f"{label} ({len(own)} blocks)")
  ax_core.set(
      title="core weights (qkv/proj/fc1/fc2): ‖∇‖ per distinct layer",
      xlabel="distinct core layer",
      ylabel="gradient L2 norm",
      yscale="log",
  )
  ax_own.set(title="own params (LayerNorms, adapters): ‖∇‖ per block", xlabel="block", yscale="log")
  for ax in (ax_core, ax_own):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def histogram_figure(path, hists: Sequence[dict]) -> str:
  """One panel per selected layer; `hists[i] = {'title', 'edges', 'series': {label: density}}`."""
  n = len(hists)
  fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
  for ax, h in zip(axes[0], hists):
    edges = np.asarray(h["edges"])
    for label, density in h["series"].items():
      ax.stairs(density, edges, label=label, linewidth=1.4)
    ax.set_title(h["title"], fontsize=9)
    ax.set(xlabel="activation", ylabel="density", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return _save(fig, path)


def cka_figure(path, panels: Sequence[dict], unbiased: bool) -> str:
  """Layer x layer heatmaps; `panels[i] = {'title', 'matrix', 'ylabel', 'xlabel'}` (rows = y layers)."""
  n = len(panels)
  fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.2), squeeze=False)
  for ax, p in zip(axes[0], panels):
    m = np.asarray(p["matrix"], np.float64)
    im = ax.imshow(m, origin="lower", cmap="magma", vmin=min(0.0, np.nanmin(m)), vmax=1.0, aspect="auto")
    ax.set(title=p["title"], xlabel=p["xlabel"], ylabel=p["ylabel"])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  fig.suptitle(f"linear CKA between block outputs ({'unbiased' if unbiased else 'biased'} HSIC)")
  return _save(fig, path)


def accuracy_figure(path, acc: Mapping[str, float], examples: int, chance: Optional[float] = None) -> str:
  """Bar chart of top-1 per model label (`pretrained` grey, `... fine-tuned` green, step-0 models blue)."""
  fig, ax = plt.subplots(figsize=(max(7.0, 1.4 * len(acc) + 2), 3.8))
  labels = list(acc)
  vals = [100 * acc[k] for k in labels]
  colors = ["tab:green" if "fine-tuned" in k else "tab:gray" if k == "pretrained" else "tab:blue" for k in labels]
  bars = ax.bar(range(len(labels)), vals, color=colors)
  ax.bar_label(bars, fmt="%.1f", fontsize=8)
  if chance is not None:
    ax.axhline(100 * chance, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.legend(fontsize=8)
  ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
  ax.set(
      ylabel="top-1 (%)",
      ylim=(0, 100),
      title=f"top-1 of expanded models at step 0 (blue) vs fine-tuned (green), {examples} examples",
  )
  return _save(fig, path)
