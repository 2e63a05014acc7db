"""Text data for the decoder LM: corpora installable here, a byte-level BPE tokenizer, token sources.

* Corpora: `fortunes` (Debian package `fortunes`: ~15k English quotations and jokes, 2.5 MB) or, where
  it is missing, `python_stdlib` (the standard library's own source). `split_documents` puts each
  document in train or held-out by a hash of its text, so the split does not depend on file order.
* Tokenizer: byte-level BPE (`tokenizers`) trained on the train split, saved as `tokenizer.json`
  next to the model; `load_tokenizer` checks it against the model's vocabulary size (`DataError` if they differ).
* Sources, with the image sources' random-access interface (`len`, `get_batch(indices)`):
  `TokenWindows` (fixed-length windows of one token stream; labels are the next tokens) and
  `InstructionSource` (Alpaca-format examples: prompt template, loss mask on the response).
  Each batch is `{'tokens', 'labels': int32 (n, L), 'mask': bool (n, L)}` (`mask`: positions whose
  label counts in the loss).
* Batches are pure functions of (seed, step) (`lm_batch`, the same permutation rule as the image
  pipeline), and host `p` of `P` gets rows `[p*B/P, (p+1)*B/P)` of every global batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import sysconfig
from typing import Iterator, Optional, Sequence

import numpy as np

from scalenet_jax import paths
from scalenet_jax.data import pipeline
from scalenet_jax.errors import ConfigError, DataError, MissingInputError

FORTUNES_DIR = "/usr/share/games/fortunes"  # Debian package `fortunes`
TOKENIZER_FILE = "tokenizer.json"
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


# ----------------------------------------------------------------------------------------------------
# Corpora
# ----------------------------------------------------------------------------------------------------
def fortunes(root: Optional[str] = None) -> list[str]:
  """Every fortune of the `strfile` databases in `root` (a text file with a `.dat` index beside it),
  files in sorted order. Records are separated by lines holding only `%`; terminal overstrike
  (underlining with `_` and backspace, bold by printing twice) is removed."""
  root = root or os.environ.get("SCALENET_FORTUNES_DIR", FORTUNES_DIR)
  if not os.path.isdir(root):
    raise MissingInputError(f"fortunes directory not found: {root} (apt-get install fortunes, or pass root=...)")
  docs = []
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name)
    # *.u8 are symlinks to the same databases; only files with a strfile index are fortune databases
    if os.path.islink(path) or not os.path.isfile(path) or not os.path.isfile(path + ".dat"):
      continue
    with open(path, "rb") as f:
      text = _strip_overstrike(f.read().decode("utf-8", errors="replace"))
    docs += [d.strip("\n") for d in re.split(r"^%\n", text, flags=re.M) if d.strip()]
  if not docs:
    raise MissingInputError(f"no fortune databases (files with a .dat index) in {root}")
  return docs


def _strip_overstrike(text: str) -> str:
  # `_\b` underlines the next character (also as `___\b` before a word), `X\bX` prints X in bold.
  return re.sub(r"\x08", "", re.sub(r".\x08", "", re.sub(r"_+\x08+", "", text)))


def python_stdlib(root: Optional[str] = None) -> list[str]:
  """Every `.py` file of the standard library (not site-packages), one document each: folders walked in
  sorted order, a folder's files before its subfolders."""
  root = root or sysconfig.get_paths()["stdlib"]
  docs = []
  for d, dirs, files in os.walk(root):
    dirs[:] = sorted(x for x in dirs if x not in ("site-packages", "dist-packages", "__pycache__"))
    for name in sorted(files):
      if name.endswith(".py"):
        with open(os.path.join(d, name), "rb") as f:
          docs.append(f.read().decode("utf-8", errors="replace"))
  if not docs:
    raise MissingInputError(f"no .py files under {root}")
  return docs


CORPORA = {"fortunes": fortunes, "python_stdlib": python_stdlib}


def load_corpus(name: str, root: Optional[str] = None) -> list[str]:
  if name not in CORPORA:
    raise ConfigError(f"unknown text corpus {name!r}; choose one of {sorted(CORPORA)}")
  return CORPORA[name](root)


def split_documents(docs: Sequence, held_out_fraction: float = 0.05, seed: int = 0, key=None):
  """(train, held_out): a document is held out when a hash of (seed, its text) falls below the fraction.

  Deterministic across machines and Python runs, independent of order, and duplicates of one text
  land in the same split (no train/held-out leakage). Both keep the corpus order. `key(doc)` gives the
  text to hash for documents that are not strings (e.g. an `Instruction`)."""
  if not 0.0 < held_out_fraction < 1.0:
    raise ConfigError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
  train, held = [], []
  for d in docs:
    t = d if key is None else key(d)
    h = int.from_bytes(hashlib.sha256(f"{seed}\0{t}".encode()).digest()[:8], "little") / 2.0**64
    (held if h < held_out_fraction else train).append(d)
  return train, held


# ----------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------
def train_tokenizer(texts: Sequence[str], vocab_size: int, special_tokens: Sequence[str] = (BOS, EOS, PAD)):
  """Byte-level BPE with exactly `vocab_size` tokens (special tokens first, then the 256 byte symbols):
  every string encodes, and decoding gives it back."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=list(special_tokens),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  tok.train_from_iterator(texts, trainer)
  if tok.get_vocab_size() != vocab_size:
    raise DataError(
        f"the corpus yields only {tok.get_vocab_size()} BPE tokens, fewer than vocab_size={vocab_size}: "
        "use a smaller vocabulary or more text"
    )
  return tok


def save_tokenizer(tok, directory: str) -> str:
  """Write `tokenizer.json` into `directory` (next to the model's weights); returns its path."""
  path = str(paths.path(directory) / TOKENIZER_FILE)
  paths.write_text(path, tok.to_str())
  return path


def load_tokenizer(path: str, vocab_size: Optional[int] = None):
  """A `tokenizer.json` (or the directory holding it); with `vocab_size`, it must have that many tokens."""
  from tokenizers import Tokenizer

  file = paths.path(path) / TOKENIZER_FILE if paths.path(path).is_dir() else paths.path(path)
  if not file.is_file():
    raise MissingInputError(f"tokenizer not found: {file}")
  tok = Tokenizer.from_str(file.read_text())
  if vocab_size is not None:
    n = tok.get_vocab_size(with_added_tokens=True)
    if n != vocab_size:
      raise DataError(
          f"tokenizer {file} has {n} tokens but the model's vocab_size is {vocab_size}: train the tokenizer "
          f"with vocab_size={vocab_size} or build the model with vocab_size={n}"
      )
  return tok


def token_id(tok, token: str) -> int:
  i = tok.token_to_id(token)
  if i is None:
    raise DataError(f"tokenizer has no token {token!r}")
  return i


def encode_documents(tok, docs: Sequence[str], eos_id: int) -> np.ndarray:
  """One int32 stream: each document's tokens followed by `eos_id` (no special tokens added otherwise)."""
  ids = [e.ids + [eos_id] for e in tok.encode_batch(list(docs), add_special_tokens=False)]
  return np.fromiter((i for doc in ids for i in doc), np.int32, sum(map(len, ids)))


# ----------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------
class TokenWindows:
  """Non-overlapping windows of `seq_len + 1` tokens of one stream: window i starts at `i * seq_len`;
  inputs are its first `seq_len` tokens, labels its last `seq_len` (the next tokens). The tail that
  does not fill a window is dropped."""

  def __init__(self, tokens: np.ndarray, seq_len: int):
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"tokens must be a 1-D integer array, got {tokens.dtype} {tokens.shape}")
    if seq_len < 1 or len(tokens) < seq_len + 1:
      raise DataError(f"{len(tokens)} tokens do not fill one window of seq_len={seq_len} (+1 label)")
    self.tokens, self.seq_len = tokens.astype(np.int32), seq_len

  def __len__(self):
    return (len(self.tokens) - 1) // self.seq_len

  def get_batch(self, indices) -> dict[str, np.ndarray]:
    idx = np.asarray(indices, np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
      raise IndexError(f"window index out of range [0, {len(self)})")
    w = self.tokens[idx[:, None] * self.seq_len + np.arange(self.seq_len + 1)]
    return {"tokens": w[:, :-1], "labels": w[:, 1:], "mask": np.ones(w[:, 1:].shape, bool)}

  def __getitem__(self, i):
    return {k: v[0] for k, v in self.get_batch([i]).items()}


# Stanford Alpaca's prompt templates (the format of the instruction-tuning data the paper uses).
ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclasses.dataclass(frozen=True)
class Instruction:
  instruction: str
  output: str
  input: str = ""

  @property
  def prompt(self) -> str:
    template = ALPACA_PROMPT if self.input.strip() else ALPACA_PROMPT_NO_INPUT
    return template.format(instruction=self.instruction, input=self.input)


def read_instructions(path: str) -> list[Instruction]:
  """Alpaca-format examples from JSON lines (one object a line) or one JSON array: `instruction` and
  `output` strings, `input` optional. A malformed record raises `DataError` naming its line / index."""
  if not paths.path(path).is_file():
    raise MissingInputError(f"instruction data not found: {path}")
  text = paths.path(path).read_text(encoding="utf-8")
  if text.lstrip().startswith("["):
    try:
      array = json.loads(text)
    except json.JSONDecodeError as e:
      raise DataError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    records = [(f"record {i}", r) for i, r in enumerate(array)]
  else:
    records = []
    for n, line in enumerate(text.splitlines(), 1):
      if line.strip():
        try:
          records.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
          raise DataError(f"{path}: line {n} is not JSON: {e.msg}") from None
  return [_instruction(r, f"{path}: {where}") for where, r in records]


def _instruction(r, where) -> Instruction:
  if not isinstance(r, dict):
    raise DataError(f"{where}: expected an object with instruction / input / output, got {type(r).__name__}")
  for k in ("instruction", "output"):
    if not isinstance(r.get(k), str):
      raise DataError(f"{where}: missing string field {k!r}")
  if not isinstance(r.get("input", ""), str):
    raise DataError(f"{where}: field 'input' must be a string")
  return Instruction(r["instruction"], r["output"], r.get("input", ""))


class InstructionSource:
  """Tokenised examples `[bos] prompt response eos`, cut to `seq_len + 1` tokens and right-padded with
  `pad_id`. The loss mask is true where the label is a response token or the final eos; prompt and
  padding do not count. Right padding needs no attention mask: causal attention never looks ahead."""

  def __init__(self, examples: Sequence[Instruction], tok, seq_len: int, eos_id: int, pad_id: int, bos_id=None):
    if not examples:
      raise DataError("no instruction examples")
    prompts = tok.encode_batch([e.prompt for e in examples], add_special_tokens=False)
    responses = tok.encode_batch([e.output for e in examples], add_special_tokens=False)
    n = seq_len + 1
    self.tokens = np.full((len(examples), n), pad_id, np.int32)
    self.target = np.zeros((len(examples), n), bool)  # position j is a token the model must predict
    head = [] if bos_id is None else [bos_id]
    for i, (p, r) in enumerate(zip(prompts, responses)):
      ids = (head + p.ids + r.ids + [eos_id])[:n]
      self.tokens[i, : len(ids)] = ids
      self.target[i, len(head) + len(p.ids) : len(ids)] = True
    self.seq_len = seq_len

  def __len__(self):
    return len(self.tokens)

  def get_batch(self, indices) -> dict[str, np.ndarray]:
    w, t = self.tokens[np.asarray(indices)], self.target[np.asarray(indices)]
    return {"tokens": w[:, :-1], "labels": w[:, 1:], "mask": t[:, 1:]}

  def __getitem__(self, i):
    return {k: v[0] for k, v in self.get_batch([i]).items()}


# ----------------------------------------------------------------------------------------------------
# Batches: pure functions of (seed, step), per-host rows
# ----------------------------------------------------------------------------------------------------
def lm_batch(source, global_batch: int, seed: int, step: int, process_index: int = 0, process_count: int = 1):
  """This host's rows of the global training batch at `step` (epoch permutations seeded by (seed, epoch))."""
  idx, _ = pipeline.global_batch_indices(len(source), global_batch, seed, step)
  return source.get_batch(idx[pipeline.host_slice(global_batch, process_index, process_count)])


def lm_train_batches(
    source,
    global_batch: int,
    seed: int,
    start_step: int = 0,
    *,
    process_index: int = 0,
    process_count: int = 1,
    num_steps: Optional[int] = None,
    num_threads: int = 2,
    prefetch: int = 4,
) -> Iterator[dict]:
  """`lm_batch` for steps `start_step, start_step + 1, ...` (infinite, or `num_steps`), prefetched."""
  import grain

  pipeline.steps_per_epoch(len(source), global_batch)  # fail now, not in a worker thread
  pipeline.host_slice(global_batch, process_index, process_count)
  load = lambda step: lm_batch(source, global_batch, seed, step, process_index, process_count)  # noqa: E731
  stop = sys.maxsize if num_steps is None else start_step + num_steps
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(grain.MapDataset.range(start_step, stop).map(load).to_iter_dataset(read))


def lm_eval_batches(source, batch_size: int, process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """Every example once, in order, in global batches of `batch_size` (this host's rows). The last
  batch is padded by repeating example 0 with an all-false `mask`, so every batch has one shape."""
  rows = pipeline.host_slice(batch_size, process_index, process_count)
  for k in range(pipeline.num_eval_batches(len(source), batch_size)):
    idx = np.arange(k * batch_size, (k + 1) * batch_size)[rows]
    real = idx < len(source)
    batch = source.get_batch(np.where(real, idx, 0))
    batch["mask"] = batch["mask"] & real[:, None]
    yield batch
