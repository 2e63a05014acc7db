r"""Release a trained base as a timm-format `.safetensors` file with its provenance (pretrained/).

  python -m scalenet_jax.release --config configs/pretrain_fmnist.py:vit --workdir /tmp/pretrain_vit \
      --out pretrained/vit_micro_patch4_28_fmnist.safetensors

The file holds the timm-named weights of the workdir's final params and, as safetensors metadata (str ->
str), everything a user of the weights needs: `timm_kwargs` (JSON kwargs that build the timm twin,
`VisionTransformer(**kwargs)` / `SwinTransformer(**kwargs)`, loadable with `strict=True`), `timm_class`,
`model` (our registry name), `mean` / `std` (JSON lists: normalisation of [0, 1] pixels), `pad` (zero
padding in pixels before normalisation), `top1` (test-set accuracy of the final params), `steps`, `seed`,
`dataset`, `eval_split` and `command` (the command that reproduces the training run). `read(path)` gives
back (state dict, metadata) with the JSON fields decoded.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from scalenet_jax import builder, config_lib, convert, paths
from scalenet_jax.errors import UserError
from scalenet_jax.models import registry
from scalenet_jax.train import checkpoint as ckpt_lib
from scalenet_jax.train import metrics as metrics_lib

TIMM_CLASS = {"vit": "VisionTransformer", "swin": "SwinTransformer"}
JSON_FIELDS = ("timm_kwargs", "mean", "std", "pad", "top1", "steps", "seed", "depths")
# Expansions whose every layer is independent: the grown model is a plain timm model of the grown depth.
# Any other (ScaleNet: shared weights, adapters) is released as its Flax params (format "flax") with the
# command that rebuilds it.
INDEPENDENT = ("", "random", "stack", "interpolate", "swa", "scratch")


def timm_kwargs(config, depths=None) -> dict:
  """The timm constructor arguments of `config`'s model, as its release metadata states them (JSON types);
  `depths`: the blocks per stack of the grown model (an expanded run)."""
  name = config.model.name
  arch = {k: config.model[k] for k in config_lib.IMAGE_ARCH_FIELDS if config.model.get(k) is not None}
  if depths is not None:  # the grown depth as timm's kwargs spell it
    arch.update({"depth": sum(depths)} if registry.family_of(name) == "vit" else {"depths": tuple(depths)})
  return json.loads(json.dumps(registry.arch_kwargs(name, **arch)))


def metadata(config, workdir, command: str, depths=None) -> dict:
  """The release metadata of the run in `workdir` (its final evaluation from metrics.jsonl); `depths`: the
  blocks per stack of the grown model (an expanded run)."""
  final = metrics_lib.final(workdir, config.steps)
  if final is None:
    raise UserError(f"{workdir} has no final evaluation at step {config.steps}: is the training run finished?")
  name = config.model.name
  return {
      "model": name,
      "timm_class": TIMM_CLASS[registry.family_of(name)],
      "timm_kwargs": timm_kwargs(config, depths),
      "mean": list(config.data.mean),
      "std": list(config.data.std),
      "pad": config.data.pad,
      "top1": final["top1"],
      "steps": config.steps,
      "seed": config.seed,
      "dataset": config.data.name,
      "eval_split": config.data.eval_split,
      "command": command,
  }


def plot_curve(workdir, out_png, title: str) -> None:
  """The run's training curve (train loss per log step, test top-1 per evaluation) as a PNG."""
  plt = paths.pyplot()

  lines = metrics_lib.read(workdir)
  train = [(l["step"], l["loss"]) for l in lines if "loss" in l]
  evals = [(l["step"], l["top1"] * 100) for l in lines if "top1" in l]
  fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=80)
  a.plot(*zip(*train), lw=1)
  a.set(xlabel="step", ylabel="train loss (label smoothing 0.1)")
  b.plot(*zip(*evals), marker=".", lw=1)
  b.set(xlabel="step", ylabel="test top-1 (%)", ylim=(max(0, min(t for _, t in evals) - 2), 100))
  b.grid(alpha=0.3)
  fig.suptitle(title)
  fig.tight_layout()
  paths.save_figure(fig, out_png, dpi=80)
  plt.close(fig)


def write(config, workdir, out, command: str, extra: dict | None = None) -> dict:
  """Writes the release file `out` and its training curve (`out` with suffix .png); returns the metadata.

  A plain or independently grown model is a timm state dict; a ScaleNet-grown one holds its Flax params
  (keys joined by "/", `params_of` reads them back) with `format` "flax", `expansion` and `depths`, and its
  `command` rebuilds the model (no timm class builds it). `extra`: more metadata (str -> str).
  """
  model = builder.build_model(config)
  params = ckpt_lib.load_params(paths.path(workdir) / "export" / "params", model.abstract_params())
  kind = config.expansion.kind
  depths = [l.depth for l in model.stack_layouts]
  meta = metadata(config, workdir, command, depths if kind else None)
  if kind in INDEPENDENT:
    tensors = convert.flax_to_timm(params, model)
  else:
    from flax import traverse_util  # pylint: disable=g-import-not-at-top

    tensors = traverse_util.flatten_dict(params, sep="/")
    meta = {k: v for k, v in meta.items() if not k.startswith("timm_")}
    meta.update(format="flax", expansion=kind, depths=depths)
  meta.update(extra or {})
  tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top

  paths.write_bytes(out, save(tensors, metadata=encode_metadata(meta)))
  title = f"{meta['model']} on {meta['dataset']}: final test top-1 {meta['top1'] * 100:.2f}%"
  plot_curve(workdir, str(out).rsplit(".", 1)[0] + ".png", title)
  return meta


def encode_metadata(meta: dict) -> dict:
  """The safetensors metadata (str -> str) of release metadata: JSON_FIELDS as JSON, the rest as text."""
  return {k: json.dumps(v) if k in JSON_FIELDS else str(v) for k, v in meta.items()}


def read(path) -> tuple[dict, dict]:
  """(timm-named state dict, decoded metadata) of a release file."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  with safe_open(str(path), framework="numpy") as f:
    meta = dict(f.metadata() or {})
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  return tensors, {k: json.loads(v) if k in JSON_FIELDS else v for k, v in meta.items()}


def params_of(path) -> dict:
  """The Flax params of a release file in format "flax" (a ScaleNet-grown model)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top

  tensors, meta = read(path)
  if meta.get("format") != "flax":
    raise UserError(f"{path} is a timm state dict: load it with init_from, not params_of")
  return traverse_util.unflatten_dict(tensors, sep="/")


def metadata_of(path) -> dict:
  """The decoded metadata of a release file; {} for any other path (an export dir, a timm checkpoint)."""
  path = str(path)
  if not path.endswith(".safetensors") or not os.path.isfile(path):
    return {}
  meta = read(path)[1]
  return meta if "model" in meta else {}


FLAGS = flags.FLAGS


def define_flags():
  config_flags.DEFINE_config_file("config", None, "The training run's config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "The finished training run.")
  flags.DEFINE_string("out", None, "The release file (.safetensors).")


def main(argv):
  del argv
  config = config_lib.resolve(FLAGS.config)
  # The training command: this command's --config and overrides (the run must have used the same ones).
  argv, config_args = sys.argv[1:], []
  for i, a in enumerate(argv):
    if a == "--config" and i + 1 < len(argv):
      config_args += ["--config", argv[i + 1]]
    elif a.startswith(("--config=", "--config.")):
      config_args.append(a)
  command = " ".join(["python -m scalenet_jax.main", *config_args, "--workdir WORKDIR"])
  try:
    meta = write(config, FLAGS.workdir, FLAGS.out, command)
  except UserError as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps(meta))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config", "workdir", "out"])
  app.run(main)
