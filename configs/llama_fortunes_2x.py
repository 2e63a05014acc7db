r"""ScaleNet 2x of a small decoder pretrained here on Debian's `fortunes` (real English text), vs baselines.

Pretrain the base (llama_tiny: width 128, 4 layers, 1024-token byte-level BPE trained on the train
split and saved next to the model), then grow it 2x (all layers reused, interpolate, adapters r=16 on
the MLP linears, adapters + norms trainable) or run a baseline at the same budget:

python -m scalenet_jax.main --config configs/llama_fortunes_2x.py:run=pretrain --workdir /tmp/fortunes/base
python -m scalenet_jax.main --config configs/llama_fortunes_2x.py --workdir /tmp/fortunes/scalenet
python -m scalenet_jax.main --config configs/llama_fortunes_2x.py:run=stack --workdir /tmp/fortunes/stack
python -m scalenet_jax.main --config configs/llama_fortunes_2x.py:run=further --workdir /tmp/fortunes/further

Arguments (`:k=v,k2=v2`): run (pretrain | scalenet | stack | further), base (the pretrained export,
default /tmp/fortunes/base/export), seed, steps, mapping (interpolate | stack), adjust (adapter | lora |
none), trainable (adjust_ln | adjust_ln_head | all). `python -m scalenet_jax.lm_study` runs the whole
comparison (3 seeds) and writes the table of docs/reproduction.md.
"""

import ml_collections

from scalenet_jax import config_lib

PRETRAIN_STEPS = 600
GROW_STEPS = 100


def get_config(arg=None):
  a = config_lib.parse_arg(
      arg,
      run="scalenet",
      base="/tmp/fortunes/base/export",
      seed=0,
      steps=0,  # 0 = the recipe's (PRETRAIN_STEPS / GROW_STEPS)
      mapping="interpolate",
      adjust="adapter",
      trainable="adjust_ln",
  )
  c = config_lib.lm_config("llama_tiny")
  c.data = config_lib.text_data_config(name="fortunes", seq_len=128, held_out_fraction=0.05)
  c.batch_size = 16
  c.eval_batch_size = 64
  pretrain = a["run"] == "pretrain"
  c.steps = a["steps"] or (PRETRAIN_STEPS if pretrain else GROW_STEPS)
  c.seed = a["seed"]
  # From scratch a small decoder takes a high learning rate; continuing (every arm of the comparison
  # alike) a lower one, so that the base trained further is not pushed away from its optimum.
  c.optim.lr = 2e-3 if pretrain else 1e-3
  c.optim.min_lr = c.optim.lr / 100
  c.optim.warmup_steps = c.steps // 20
  c.optim.weight_decay = 0.1
  c.optim.b2 = 0.95
  c.optim.clip_grad_norm = 1.0
  c.log_every = 50
  c.eval_every = 0
  c.ckpt_every = 400
  c.xla_opt_level = 1  # short CPU runs: compile time matters
  config_lib.lm_run(c, a["run"], a["base"], mapping=a["mapping"], adjust=a["adjust"], rank=16, trainable=a["trainable"])
  c.expansion.seed = a["seed"]
  # --config.quick=True: a smoke run of a minute on a CPU (a few steps, a shorter context).
  c.quick_overrides = ml_collections.ConfigDict(
      {
          "steps": 20,
          "batch_size": 8,
          "eval_batch_size": 16,
          "data": {"seq_len": 32},
          "log_every": 10,
          "optim": {"warmup_steps": 2},
      }
  )
  return c
