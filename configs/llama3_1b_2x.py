r"""The paper's §IV-E3 setting: Llama-3.2-1B scaled 2x by ScaleNet (all 16 layers reused), fine-tuned for 3
epochs on Stanford Alpaca; baselines at the same budget by argument.

Needs the Hugging Face checkpoint directory (config.json, model.safetensors, tokenizer.json of
meta-llama/Llama-3.2-1B) and Alpaca's `alpaca_data.json` (a JSON array; JSON lines work too):

python -m scalenet_jax.main --config configs/llama3_1b_2x.py --workdir /tmp/llama3_1b_2x \
    --config.init_from=/data/Llama-3.2-1B --config.data.root=/data/alpaca_data.json
python -m scalenet_jax.main --config configs/llama3_1b_2x.py:run=stack --workdir /tmp/llama3_1b_stack ...
python -m scalenet_jax.main --config configs/llama3_1b_2x.py:run=further --workdir /tmp/llama3_1b_further ...
python -m scalenet_jax.main --config configs/llama3_1b_2x.py --mode=summary   # 1,251,608,576 params

Arguments (`:k=v,...`): run (scalenet | stack | further), mapping (interpolate | stack), adjust (adapter |
lora | none), trainable (adjust_ln | adjust_ln_head | all). Held-out perplexity is on 2% of Alpaca (a hash
split); the paper's zero-shot benchmarks (BoolQ, PIQA, HellaSwag, ...) need an evaluation harness on the
exported Hugging Face directory (`<workdir>/export`).
"""

from scalenet_jax import config_lib

ALPACA_EXAMPLES = 52_002
EPOCHS = 3


def get_config(arg=None):
  a = config_lib.parse_arg(arg, run="scalenet", mapping="interpolate", adjust="adapter", trainable="adjust_ln")
  c = config_lib.lm_config("llama3_2_1b")
  c.model.dtype = "bfloat16"  # params stay float32
  c.model.remat = True
  c.data = config_lib.text_data_config(
      name="instructions",
      root="data/alpaca_data.json",
      held_out_fraction=0.02,
      seq_len=512,
      # Llama 3's own special tokens; padding is the eos token (it carries no loss).
      bos_token="<|begin_of_text|>",
      eos_token="<|end_of_text|>",
  )
  c.batch_size = 128
  c.eval_batch_size = 64
  c.steps = EPOCHS * int(ALPACA_EXAMPLES * (1 - c.data.held_out_fraction)) // c.batch_size
  # The ScaleNet-grow recipe (scalenet_grow.md §4): AdamW, lr 2e-4 cosine to 2e-6, warmup, weight decay 0.05.
  c.optim.lr = 2e-4
  c.optim.min_lr = 2e-6
  c.optim.warmup_steps = c.steps // 30
  c.optim.weight_decay = 0.05
  c.optim.clip_grad_norm = 1.0
  c.log_every = 20
  c.eval_every = c.steps // EPOCHS
  c.ckpt_every = 200
  config_lib.lm_run(
      c,
      a["run"],
      "pretrained/Llama-3.2-1B",
      mapping=a["mapping"],
      adjust=a["adjust"],
      rank=16,
      trainable=a["trainable"],
  )
  return c
