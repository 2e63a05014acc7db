"""The semantic-segmentation trainer behind `python -m scalenet_jax.main` (pipeline 'segment', §IV-E).

config (`config_lib.segment_config()`) -> UPerNet (+ FCN auxiliary head) on the config's feature backbone
(`models/upernet.py`), grown by `config.expansion` (empty `subset`: every stage, the paper's dense setting)
-> `train.loop.Task` with the `Segmentation` objective (per-pixel cross-entropy, ignore index 255,
auxiliary loss x `head.aux_weight`; mIoU over the eval set) and `dense.trainable_mask` (heads trainable)
-> `trainer.drive`: the one `Loop` (restore-or-init, train, checkpoints), eval and export.

Initial variables: a fresh segmentor (heads, BatchNorm statistics), its backbone from `init_from` (an
mmseg / mmdet state dict with `backbone.*` keys, the parts named by `init_skip` left out; a timm or
original-release Swin classifier, or an exported classifier params dir, through
`dense.backbone_from_classifier`), then grown by `dense.expand_segmentor`.

Modes: 'train' (resumes), 'eval', 'export' (variables as an Orbax dir + mmseg-named `model.safetensors`
under `<workdir>/export`), and `summarize` for `--mode summary`.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import safetensors.numpy

from scalenet_jax import builder, config_lib, convert, counting, dense, paths, trainer
from scalenet_jax.data import from_config
from scalenet_jax.data import segmentation as seg_data
from scalenet_jax.errors import ConfigError
from scalenet_jax.models import upernet
from scalenet_jax.train import checkpoint as ckpt_lib
from scalenet_jax.train import loop as loop_lib
from scalenet_jax.train import objectives
from scalenet_jax.train import step as step_lib

MODES = ("train", "eval", "export")


def resolve(config):
  """`config_lib.resolve`, with the backbone's input size set to the crop size (one value, two names)."""
  c = config_lib.resolve(config)
  if c.label_smoothing:
    raise ConfigError("label_smoothing is not part of the segmentation loss (mmseg's): leave it 0")
  if c.model.img_size not in (None, c.data.crop_size):
    raise ConfigError(
        f"model.img_size={c.model.img_size} differs from data.crop_size={c.data.crop_size}: leave model.img_size "
        "unset, the backbone takes the crops"
    )
  return config_lib.override(c, {"model.img_size": c.data.crop_size})


def build(config):
  """(plain segmentor, the segmentor a run trains, expansion spec or None) of a resolved config."""
  num_stages = len(builder.base_model(config).stack_names())
  backbone = builder.base_model(config, out_indices=tuple(range(num_stages)))
  h = config.head
  if h.aux_channels and not 0 <= h.aux_in_index < num_stages:
    raise ConfigError(f"head.aux_in_index={h.aux_in_index} is not a backbone output (0..{num_stages - 1})")
  plain = upernet.Segmentor(
      backbone,
      config.model.num_classes,
      channels=h.channels,
      aux_channels=h.aux_channels,
      aux_in_index=h.aux_in_index,
      dropout=h.dropout,
      dtype=builder.compute_dtype(config),
  )
  spec = builder.expansion_spec(config)
  if spec is None:
    return plain, plain, None
  if spec.subset is None:  # the dense setting grows every stage ("all layers are reused")
    spec = dataclasses.replace(spec, subset=tuple(range(num_stages)))
  return plain, dense.expanded_segmentor(plain, spec), spec


def load_backbone(config, backbone) -> dict:
  """The plain feature `backbone`'s params from `config.init_from` (module doc)."""
  builder.check_pretrained(config, backbone)
  classifier = backbone.clone(out_indices=None)
  # new_head: a classifier's head (1000 ImageNet classes) is dropped, whatever its size.
  if ckpt_lib.is_params_export(config.init_from):
    pre = builder.read_pretrained(config.init_from, classifier, new_head=True)
    return dense.backbone_from_classifier(pre, backbone)
  state_dict = dense.unwrap(convert.load_state_dict(config.init_from))
  if any(k.startswith(dense.BACKBONE) for k in state_dict):
    skip = tuple(filter(None, (p.strip() for p in config.init_skip.split(","))))
    return dense.load_backbone(state_dict, backbone, skip=skip)
  return dense.backbone_from_classifier(convert.timm_to_flax(state_dict, classifier, new_head=True), backbone)


def initial_variables(config, plain, spec) -> dict:
  """Fresh heads and statistics, the backbone from `init_from`, grown by `spec` (host arrays)."""
  if spec is not None and spec.kind != "scratch" and not config.init_from:
    raise ConfigError("growing the backbone needs its pretrained weights: set --config.init_from")
  variables = plain.init_variables(config.seed)
  if config.init_from:
    params = {**variables["params"], "backbone": load_backbone(config, plain.backbone)}
    variables = {**variables, "params": params}
  if spec is not None:
    variables = dense.expand_segmentor(variables, plain, spec)[1]
  return variables


def export(workdir, segmentor, state) -> dict:
  """The variables (params and BatchNorm statistics) as an Orbax directory and as an mmseg-named state
  dict (`dense.segmentor_to_mmseg`; a grown backbone unrolled, adapters under `.adjust.`)."""
  out = paths.path(workdir) / "export"
  variables = jax.device_get({"params": state.params, **(state.model_state or {})})
  ckpt_lib.export_params(out / "params", variables, overwrite=True)
  if jax.process_index() == 0:
    tensors = {k: np.ascontiguousarray(v) for k, v in dense.segmentor_to_mmseg(variables, segmentor).items()}
    paths.write_bytes(out / "model.safetensors", safetensors.numpy.save(tensors))
  return {"export": str(out)}


def objective(config) -> objectives.Segmentation:
  return objectives.Segmentation(config.model.num_classes, config.head.aux_weight)


def make_task(config, workdir, mode: str):
  """(task, info) of a resolved config; data opened first so a missing dataset fails fast (none for
  modes 'export' and 'compile')."""
  plain, model, spec = build(config)
  d = config.data
  recipe = seg_data.SegmentationRecipe.from_config(d)
  eval_source = seg_data.open_source(d, d.eval_split) if mode in ("train", "eval") else None
  train_source = seg_data.open_source(d, d.train_split) if mode == "train" else None
  abstract = model.abstract_variables()
  mask = dense.trainable_mask(abstract["params"], plain.backbone, spec, "segmentation")
  x = model.input_spec()
  task = loop_lib.Task(
      apply_fn=step_lib.flax_apply_fn(model),
      abstract_variables=abstract,
      batches=lambda start: from_config.train_stream(
          d,
          train_source,
          None,
          config.batch_size,
          config.seed,
          start,
          config.steps - start,
          loader=seg_data.SegmentationLoader(train_source, recipe, train=True),
      ),
      init_fn=lambda rng: model.init(rng, jax.numpy.zeros(x.shape, x.dtype)),
      initial_variables=(lambda: initial_variables(config, plain, spec)) if config.init_from or spec else None,
      tag=f"segment/{config.model.name}",
      trainable_mask=mask,
      compute_dtype=builder.compute_dtype(config),
      eval_batches=(
          lambda: from_config.eval_stream(
              d,
              eval_source,
              None,
              config.eval_batch_size,
              loader=seg_data.SegmentationLoader(eval_source, recipe, False),
          )
      )
      if eval_source is not None or mode == "compile"
      else None,
      export=lambda state: export(workdir, model, state),
      label="segment",
      objective=objective(config),
      meta={"model": f"upernet/{config.model.name}"},
      input_specs=lambda n: {"": (model.input_spec(n), None)},
  )
  info = {
      "params": counting.count_params(abstract["params"]),
      "trainable_params": builder.count_trainable(abstract["params"], mask),
  }
  return task, info


def summarize(config) -> dict:
  """`--mode summary` of a segmentation config: the keys of `summary.summarize` for the segmentor
  (parameters as stored and per block instance, trainable, MACs of one `crop_size` image)."""
  config = resolve(config)
  plain, model, spec = build(config)
  abstract = model.abstract_variables()
  params = abstract["params"]
  backbone = model.backbone
  shared = sum(
      counting.count_params(params["backbone"][n]["core"]) // l.num_core * (l.depth - l.num_core)
      for n, l in zip(backbone.stack_names(), backbone.stack_layouts)
  )
  mask = dense.trainable_mask(params, plain.backbone, spec, "segmentation")
  macs = counting.macs(lambda v, x: model.apply(v, x), abstract, model.input_spec())
  return {
      "model": f"upernet/{config.model.name}",
      "expansion": config.expansion.kind or "none",
      "depths": [l.depth for l in backbone.stack_layouts],
      "params": counting.count_params(params) + shared,
      "unique_params": counting.count_params(params),
      "trainable_params": builder.count_trainable(params, mask),
      "macs": macs,
      "gflops": macs / 1e9,
      "crop_size": config.data.crop_size,
  }


def run(config, workdir, mode: str = "train") -> dict:
  """Trains / evaluates / exports a segmentation config (`trainer.drive`)."""
  if mode not in MODES:
    raise ConfigError(f"unknown mode {mode!r} for the segmentation trainer; choose one of {MODES}")
  config = resolve(config)
  task, info = make_task(config, workdir, mode)
  return trainer.drive(config, workdir, mode, task, info)
