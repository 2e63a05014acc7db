"""The decoder-LM trainer behind `python -m scalenet_jax.main` (pipeline 'lm').

config (`config_lib.lm_config()`) -> `builder` (registry decoder, `init_from` + expansion, trainable set)
-> text (`data/text.py`: a corpus in windows or Alpaca-format instructions; the tokenizer) -> a
`train.loop.Task` with the next-token objective -> the shared `trainer.drive` (restore-or-init, train,
checkpoints, eval, export). Evaluation is the token-weighted mean next-token loss over the held-out split
and its perplexity, exp(loss).

Tokenizer: `data.tokenizer`, else `init_from`'s `tokenizer.json` (the directory, or its parent for an
exported params dir), else this workdir's, else a byte-level BPE of the model's vocabulary size trained
on the train split and saved in the workdir. Its size must be the model's `vocab_size`.

Export (`<workdir>/export`): a Hugging Face directory (`config.json`, `model.safetensors`, the
`tokenizer.json`) that `LlamaForCausalLM.from_pretrained` loads, plus the Orbax params (`export/params`).
An expanded model is written unrolled; its adapters / LoRA modules go under `...adjust.*` keys that
`transformers` does not know (it drops them), so only plain and adjustment-free (stacked) models
round-trip through `transformers` exactly.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from scalenet_jax import builder, config_lib, counting, paths, trainer
from scalenet_jax.data import text
from scalenet_jax.errors import ConfigError
from scalenet_jax.jax_utils import print0
from scalenet_jax.models import llama
from scalenet_jax.train import checkpoint as ckpt_lib
from scalenet_jax.train import loop as loop_lib
from scalenet_jax.train import objectives
from scalenet_jax.train import step as step_lib

MODES = trainer.MODES
INSTRUCTIONS = "instructions"
DATA_NAMES = (*sorted(text.CORPORA), INSTRUCTIONS)


# ----------------------------------------------------------------------------------------------------
# Text: documents, tokenizer, sources
# ----------------------------------------------------------------------------------------------------
def documents(d) -> tuple[list, list]:
  """(train, held-out) documents of `config.data`: corpus strings or `text.Instruction`s."""
  if d.name not in DATA_NAMES:
    raise ConfigError(f"unknown text data {d.name!r}; choose one of {DATA_NAMES}")
  if d.name != INSTRUCTIONS:
    docs = text.load_corpus(d.name, d.root or None)
    return text.split_documents(docs, d.held_out_fraction, d.split_seed)
  if not d.root:
    raise ConfigError("data.name=instructions needs data.root: an Alpaca-format JSON / JSON-lines file")
  examples = text.read_instructions(d.root)
  if d.eval_path:
    return examples, text.read_instructions(d.eval_path)
  return text.split_documents(examples, d.held_out_fraction, d.split_seed, key=lambda e: f"{e.prompt}\0{e.output}")


def _tokenizer_file(config, workdir) -> str:
  """Where the run's tokenizer is ('' = none yet: train one)."""
  if config.data.tokenizer:
    return config.data.tokenizer
  if config.init_from:
    init = paths.path(config.init_from)
    for d in (init, init.parent):
      if (d / text.TOKENIZER_FILE).is_file():
        return str(d / text.TOKENIZER_FILE)
  own = paths.path(workdir) / text.TOKENIZER_FILE
  return str(own) if own.is_file() else ""


def tokenizer(config, workdir, train_docs, vocab_size: int):
  """(tokenizer, its file, save): `save()` writes a newly trained one into the workdir (called once the
  run has accepted the workdir, so a refused run leaves it untouched); a no-op for an existing file."""
  file = _tokenizer_file(config, workdir)
  if file:
    return text.load_tokenizer(file, vocab_size=vocab_size), file, lambda: None
  texts = [e.prompt + e.output if isinstance(e, text.Instruction) else e for e in train_docs]
  tok = text.train_tokenizer(texts, vocab_size)
  print0(f"trained a {vocab_size}-token byte-level BPE on {len(texts)} train documents")

  def save():
    if jax.process_index() == 0:
      text.save_tokenizer(tok, workdir)

  return tok, str(paths.path(workdir) / text.TOKENIZER_FILE), save


def source(d, tok, docs):
  """The random-access source of `docs`: token windows of a corpus, or instruction examples."""
  eos = text.token_id(tok, d.eos_token)
  if d.name != INSTRUCTIONS:
    return text.TokenWindows(text.encode_documents(tok, docs, eos), d.seq_len)
  pad = text.token_id(tok, d.pad_token) if d.pad_token else eos
  bos = text.token_id(tok, d.bos_token) if d.bos_token else None
  return text.InstructionSource(docs, tok, d.seq_len, eos, pad, bos)


# ----------------------------------------------------------------------------------------------------
# Task
# ----------------------------------------------------------------------------------------------------
def export(workdir, model, params, tokenizer_file: str) -> dict:
  """The final params as a Hugging Face directory (+ tokenizer) and as an Orbax params dir."""
  out = paths.path(workdir) / "export"
  host = jax.device_get(params)
  ckpt_lib.export_params(out / "params", host, overwrite=True)
  if jax.process_index() == 0:
    llama.save_hf(str(out), host, model)
    if paths.path(tokenizer_file) != out / text.TOKENIZER_FILE:
      paths.write_text(out / text.TOKENIZER_FILE, paths.path(tokenizer_file).read_text())
  return {"export": str(out)}


def make_task(config, workdir, mode: str):
  """(task, eval batches function, info, save-tokenizer function) of a run; text and tokenizer are read first, so a missing corpus
  or a mismatched tokenizer fails before anything is compiled."""
  model = builder.build_model(config)
  if model.family != "llama":
    raise ConfigError(f"pipeline 'lm' trains decoders (llama_*), not {config.model.name!r}")
  d = config.data
  if config.init_from and mode != "compile":  # a checkpoint of another architecture fails before any text is read
    builder.check_pretrained(config, builder.base_model(config))
  pi, pc = jax.process_index(), jax.process_count()
  if mode == "compile":  # shapes only: no text, no tokenizer (the model's vocab and seq_len say it all)
    tok_file, save_tokenizer, eval_src, train_src = None, lambda: None, None, None
  else:
    train_docs, held_docs = documents(d)
    tok, tok_file, save_tokenizer = tokenizer(config, workdir, train_docs, model.config.vocab_size)
    eval_src = source(d, tok, held_docs) if mode in ("train", "eval") else None
    train_src = source(d, tok, train_docs) if mode == "train" else None

  def eval_batches():
    return text.lm_eval_batches(eval_src, config.eval_batch_size, pi, pc)

  abstract = model.abstract_params()
  mask = builder.trainable_mask(config, abstract)
  x = model.input_spec()
  task = loop_lib.Task(
      apply_fn=step_lib.flax_apply_fn(model),
      abstract_variables={"params": abstract},
      batches=lambda start: text.lm_train_batches(
          train_src,
          config.batch_size,
          config.seed,
          start,
          process_index=pi,
          process_count=pc,
          num_steps=config.steps - start,
          num_threads=d.num_threads,
      ),
      init_fn=lambda rng: model.init(rng, jnp.zeros(x.shape, x.dtype)),
      initial_variables=(lambda: {"params": builder.initial_params(config)[1]})
      if builder.needs_initial_params(config)
      else None,
      tag=f"lm/{config.model.name}",
      trainable_mask=mask,
      compute_dtype=builder.compute_dtype(config),
      use_ema=config.ema_decay > 0,
      # Compile mode has no eval source but compiles the eval step that training runs.
      eval_batches=eval_batches if eval_src is not None or mode == "compile" else None,
      export=lambda state: export(workdir, model, state.params, tok_file),
      objective=objectives.NextToken(config.label_smoothing),
      meta={"model": config.model.name, "tokenizer": tok_file},
      input_specs=lambda n: {"": (model.input_spec(n), None)},
  )
  info = {
      "params": counting.count_params(abstract),
      "trainable_params": builder.count_trainable(abstract, mask),
      "tokenizer": tok_file,
  }
  if train_src is not None:
    info["train_examples"] = len(train_src)
  if eval_src is not None:
    info["eval_examples_total"] = len(eval_src)
  return task, eval_batches, info, save_tokenizer


def run(config, workdir, mode: str = "train") -> dict:
  if mode not in MODES:
    raise ConfigError(f"unknown mode {mode!r} for the LM trainer; choose one of {MODES}")
  config = config_lib.resolve(config)
  workdir = str(workdir)
  task, eval_batches, info, save_tokenizer = make_task(config, workdir, mode)
  held = "held-out split" if not config.data.eval_path else config.data.eval_path
  init_eval = (eval_batches, held) if config.eval_at_init else None
  return trainer.drive(config, workdir, mode, task, info, init_eval, on_ready=save_tokenizer)
