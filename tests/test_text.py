"""Text data: corpora (fortunes / stdlib), deterministic splits, BPE tokenizer, token windows, per-step batches
with per-host rows, and the Alpaca instruction reader with its loss mask."""

from __future__ import annotations

import functools
import json
import os

import numpy as np
import pytest

from helpers import fortunes_dir, write_fortune_db
from scalenet_jax.data import text
from scalenet_jax.errors import ConfigError, DataError, MissingInputError


# ---------------------------------------------------------------------------------------------------------
# Corpora and splits
# ---------------------------------------------------------------------------------------------------------
def test_fortunes_parser(tmp_path):
  write_fortune_db(tmp_path, "b", ["Second file.", "Two\nlines."])
  write_fortune_db(tmp_path, "a", ["_\x08b_\x08o_\x08l_\x08d and B\x08Bold, ___\x08ONLY", "Café ünïcode"])
  os.symlink(tmp_path / "a", tmp_path / "a.u8")  # the .u8 twins are links: read once
  (tmp_path / "notes").write_text("no .dat index: not a fortune database\n%\n")
  assert text.fortunes(str(tmp_path)) == ["bold and Bold, ONLY", "Café ünïcode", "Second file.", "Two\nlines."]
  with pytest.raises(MissingInputError, match=r"apt-get install fortunes"):
    text.fortunes(str(tmp_path / "missing"))
  with pytest.raises(ConfigError, match=r"unknown text corpus 'wiki'"):
    text.load_corpus("wiki")


def test_fortunes_corpus_installed():
  fortunes_dir()
  docs = text.load_corpus("fortunes")
  assert len(docs) > 10_000 and all(d.strip() and "\x08" not in d for d in docs)
  assert not any(line == "%" for d in docs[:2000] for line in d.splitlines())
  train, held = text.split_documents(docs)
  assert 0.04 < len(held) / len(docs) < 0.06 and len(train) + len(held) == len(docs)


def test_stdlib_corpus(tmp_path):
  (tmp_path / "pkg").mkdir()
  (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
  (tmp_path / "top.py").write_text("import os\n")
  (tmp_path / "site-packages").mkdir()
  (tmp_path / "site-packages" / "other.py").write_text("not stdlib\n")
  assert text.python_stdlib(str(tmp_path)) == ["import os\n", "x = 1\n"]  # a folder's files, then its folders


def test_split_is_deterministic_disjoint_and_order_free():
  docs = [f"document {i}" for i in range(2000)]
  train, held = text.split_documents(docs, 0.1, seed=3)
  assert set(train).isdisjoint(held) and len(train) + len(held) == 2000 and 150 < len(held) < 250
  assert text.split_documents(docs[::-1], 0.1, seed=3)[1] == held[::-1]  # per-document decision
  assert text.split_documents(docs, 0.1, seed=4)[1] != held
  dup_train, dup_held = text.split_documents(docs + docs, 0.1, seed=3)  # duplicates stay together
  assert set(dup_held) == set(held) and set(dup_train) == set(train)
  with pytest.raises(ConfigError, match=r"held_out_fraction must be in \(0, 1\)"):
    text.split_documents(docs, 0.0)


# ---------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------
CORPUS = [f"Fortune {i}: a penny saved is {i % 7} pennies earned. Naïve café, 東京 {i}." for i in range(300)]


@functools.lru_cache(maxsize=None)
def tokenizer(vocab=320):
  return text.train_tokenizer(CORPUS, vocab)


def test_tokenizer_round_trip_save_load(tmp_path):
  tok = tokenizer()
  assert tok.get_vocab_size() == 320
  assert [text.token_id(tok, t) for t in (text.BOS, text.EOS, text.PAD)] == [0, 1, 2]
  for s in ["a penny saved", "unseen: Ωμέγα \t\n 🙂 zebra", ""]:  # byte-level: any text round-trips
    assert tok.decode(tok.encode(s, add_special_tokens=False).ids) == s
  assert len(tok.encode("a penny saved is").ids) < len("a penny saved is")  # merges were learned
  path = text.save_tokenizer(tok, str(tmp_path / "model"))
  assert path.endswith("model/tokenizer.json")
  back = text.load_tokenizer(str(tmp_path / "model"), vocab_size=320)
  assert back.encode(CORPUS[5]).ids == tok.encode(CORPUS[5]).ids
  assert text.train_tokenizer(CORPUS, 320).get_vocab() == tok.get_vocab()  # training is deterministic


def test_tokenizer_errors(tmp_path):
  text.save_tokenizer(tokenizer(), str(tmp_path))
  with pytest.raises(DataError, match=r"has 320 tokens but the model's vocab_size is 256: train the tokenizer"):
    text.load_tokenizer(str(tmp_path), vocab_size=256)
  with pytest.raises(MissingInputError, match=r"tokenizer not found: .*nowhere$"):
    text.load_tokenizer(str(tmp_path / "nowhere"))
  with pytest.raises(DataError, match=r"yields only \d+ BPE tokens, fewer than vocab_size=100000"):
    text.train_tokenizer(CORPUS[:5], 100_000)
  with pytest.raises(DataError, match=r"no token '<\|sep\|>'"):
    text.token_id(tokenizer(), "<|sep|>")


# ---------------------------------------------------------------------------------------------------------
# Token windows and batches
# ---------------------------------------------------------------------------------------------------------
def windows(seq_len=8):
  tok = tokenizer()
  stream = text.encode_documents(tok, CORPUS, text.token_id(tok, text.EOS))
  return text.TokenWindows(stream, seq_len), stream


def test_encode_documents_and_windows():
  tok = tokenizer()
  stream = text.encode_documents(tok, CORPUS[:2], eos_id=1)
  first = tok.encode(CORPUS[0], add_special_tokens=False).ids
  assert stream.dtype == np.int32 and list(stream[: len(first) + 1]) == first + [1] and stream[-1] == 1
  src, stream = windows()
  assert len(src) == (len(stream) - 1) // 8
  b = src.get_batch([0, 3, len(src) - 1])
  np.testing.assert_array_equal(b["tokens"][1], stream[24:32])
  np.testing.assert_array_equal(b["labels"][1], stream[25:33])  # labels = next tokens
  assert b["mask"].all() and b["tokens"].dtype == np.int32
  with pytest.raises(DataError, match=r"do not fill one window of seq_len=8"):
    text.TokenWindows(stream[:8], 8)
  with pytest.raises(IndexError, match=r"window index out of range"):
    src.get_batch([len(src)])


def test_batches_are_pure_functions_of_seed_and_step_with_host_rows():
  src, _ = windows()
  a = text.lm_batch(src, 16, seed=1, step=5)
  np.testing.assert_array_equal(a["tokens"], text.lm_batch(src, 16, seed=1, step=5)["tokens"])
  assert not np.array_equal(a["tokens"], text.lm_batch(src, 16, seed=1, step=6)["tokens"])
  assert not np.array_equal(a["tokens"], text.lm_batch(src, 16, seed=2, step=5)["tokens"])
  hosts = [text.lm_batch(src, 16, 1, 5, process_index=p, process_count=2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["labels"] for h in hosts]), a["labels"])
  # one epoch reads distinct windows
  idx = np.concatenate([text.pipeline.global_batch_indices(len(src), 16, 1, s)[0] for s in range(len(src) // 16)])
  assert len(set(idx.tolist())) == len(idx) == len(src) // 16 * 16
  stream = text.lm_train_batches(src, 16, 1, start_step=5, num_steps=2, process_index=1, process_count=2)
  got = list(stream)
  assert len(got) == 2
  np.testing.assert_array_equal(got[0]["tokens"], hosts[1]["tokens"])
  with pytest.raises(ValueError, match=r"not divisible by process count 3"):
    text.lm_train_batches(src, 16, 1, process_count=3, process_index=0)


def test_eval_batches_cover_every_window_once():
  src, _ = windows()
  batches = list(text.lm_eval_batches(src, 16))
  assert len(batches) == -(-len(src) // 16) and all(b["tokens"].shape == (16, 8) for b in batches)
  rows = np.concatenate([b["tokens"][b["mask"].any(1)] for b in batches])
  np.testing.assert_array_equal(rows, src.get_batch(np.arange(len(src)))["tokens"])
  assert sum(int(b["mask"].sum()) for b in batches) == len(src) * 8


# ---------------------------------------------------------------------------------------------------------
# Instruction data (Alpaca format)
# ---------------------------------------------------------------------------------------------------------
ALPACA = [
    {"instruction": "Give a penny.", "input": "", "output": "A penny saved."},
    {"instruction": "Translate to French.", "input": "fortune", "output": "la fortune"},
    {"instruction": "Write a very long answer.", "output": "earned " * 100},
]


def test_instruction_reader_and_loss_mask(tmp_path):
  path = tmp_path / "alpaca.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in ALPACA) + "\n\n")
  examples = text.read_instructions(str(path))
  assert [e.input for e in examples] == ["", "fortune", ""]
  assert examples[1].prompt.endswith("### Input:\nfortune\n\n### Response:\n")
  assert "### Input" not in examples[0].prompt and examples[0].prompt.endswith("### Response:\n")
  (tmp_path / "alpaca.json").write_text(json.dumps(ALPACA))  # the original release is one JSON array
  assert text.read_instructions(str(tmp_path / "alpaca.json")) == examples

  tok = tokenizer()
  eos, pad, bos = (text.token_id(tok, t) for t in (text.EOS, text.PAD, text.BOS))
  n_tokens = lambda s: len(tok.encode(s, add_special_tokens=False).ids)  # noqa: E731
  # room for examples 0 and 1 (bos, prompt, response, eos) and some padding; example 2 does not fit
  seq_len = max(2 + n_tokens(e.prompt) + n_tokens(e.output) for e in examples[:2]) + 4
  assert 2 + n_tokens(examples[2].prompt) + n_tokens(examples[2].output) > seq_len + 1
  src = text.InstructionSource(examples, tok, seq_len=seq_len, eos_id=eos, pad_id=pad, bos_id=bos)
  b = src.get_batch([0, 1, 2])
  assert b["tokens"].shape == b["labels"].shape == b["mask"].shape == (3, seq_len)
  for i in (0, 1):  # the masked labels are exactly the response and its eos
    masked = b["labels"][i][b["mask"][i]]
    assert masked[-1] == eos and tok.decode(list(masked[:-1])) == examples[i].output
    n_prompt = len(tok.encode(examples[i].prompt, add_special_tokens=False).ids)
    assert b["tokens"][i][0] == bos and tok.decode(list(b["tokens"][i][1 : 1 + n_prompt])) == examples[i].prompt
    assert (b["labels"][i][~b["mask"][i]][n_prompt:] == pad).all()  # after the eos: padding, not counted
  np.testing.assert_array_equal(b["labels"][:, :-1], b["tokens"][:, 1:])
  assert b["mask"][2, -1] and not (b["labels"][2] == eos).any()  # truncated: no room for its eos
  assert text.lm_batch(src, 2, seed=0, step=0)["tokens"].shape == (2, seq_len)


@pytest.mark.parametrize(
    "content,msg",
    [
        ('{"instruction": "x", "output": "y"}\n{not json}\n', r"alpaca\.jsonl: line 2 is not JSON"),
        ('{"instruction": "x"}\n', r"line 1: missing string field 'output'"),
        ('{"instruction": "x", "output": "y", "input": 3}\n', r"line 1: field 'input' must be a string"),
        ('["a list"]', r"record 0: expected an object"),
        ('[{"instruction": "x", "output": "y"},', r"alpaca\.jsonl is not valid JSON"),
    ],
)
def test_instruction_reader_errors(tmp_path, content, msg):
  path = tmp_path / "alpaca.jsonl"
  path.write_text(content)
  with pytest.raises(DataError, match=msg):
    text.read_instructions(str(path))
