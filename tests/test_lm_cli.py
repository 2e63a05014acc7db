"""The decoder-LM flow through `python -m scalenet_jax.main` (pipeline 'lm'), tiny, as a user runs it.

A random `transformers.LlamaForCausalLM` of llama_micro's shape (vocab 320) written by `save_pretrained`,
with a byte-level BPE of the same size next to it, is the pretrained base; on a small fortunes corpus
the test grows it 2x with ScaleNet, trains, resumes, evaluates (perplexity), exports, and runs the
stacked baseline and the base trained further. The exports load in `transformers` with the same logits
as the trained params. Bad inputs (a checkpoint of another architecture or kind, a missing shard, a
tokenizer of another size, an unknown corpus, malformed JSON lines) end with exit code 2 and one line.
All invocations run in two processes (tests/cli_session.py), concurrently.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import cli_session
from helpers import LM_CONFIG as CONFIG, LM_MICRO as MICRO, LM_RUN as RUN, LM_VOCAB as VOCAB
from helpers import config_file, env_for, load_hf, small_fortunes, snapshot

from scalenet_jax import builder, config_lib
from scalenet_jax.data import text
from scalenet_jax.models import llama, registry
from scalenet_jax.train import checkpoint as ckpt_lib

pytestmark = pytest.mark.e2e  # training runs through the entry points (tests/conftest.py)


def config_of(arg: str, workdir_overrides: dict):
  """The resolved config an invocation of CONFIG with `arg` and the MICRO / RUN overrides uses."""
  c = config_file("llama_fortunes_2x.py", arg)
  config_lib.override(c, {"model.name": "llama_micro", "model.vocab_size": VOCAB, **workdir_overrides})
  return c


def hf_base(transformers, torch, directory: Path, docs) -> Path:
  """A random LlamaForCausalLM (norm gains perturbed) saved by transformers, with its tokenizer."""
  torch.manual_seed(0)
  cfg = registry.model_config("llama_micro", vocab_size=VOCAB)
  hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg.to_hf())).eval()
  with torch.no_grad():
    for p in hf.parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  hf.save_pretrained(str(directory))
  text.save_tokenizer(text.train_tokenizer(docs, VOCAB), str(directory))
  return directory


def hf_logits(transformers, torch, directory, x):
  hf = transformers.LlamaForCausalLM.from_pretrained(str(directory)).eval()
  with torch.no_grad():
    return hf(torch.from_numpy(x.astype(np.int64))).logits.float().numpy(), hf.config.num_hidden_layers


def run_session(invocations, session: Path, keep_going=False):
  codes, outs, errs = cli_session.run(invocations, session, env_for(), keep_going=keep_going, timeout=600)
  return codes, list(zip(outs, errs))


# ----------------------------------------------------------------------------------------------
# Inputs and the two sessions
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flow(transformers, torch, tmp_path_factory):
  root = tmp_path_factory.mktemp("lm")
  corpus = small_fortunes(root / "corpus", 600)
  train_docs, _ = text.split_documents(text.fortunes(str(corpus)), 0.05, 0)
  hf = hf_base(transformers, torch, root / "hf", train_docs)
  inputs = bad_inputs(root, hf)

  common = [*MICRO, *RUN, f"--config.data.root={corpus}"]
  wd = {k: root / k for k in ("scalenet", "stack", "further")}
  grow = ["--config", f"{CONFIG}:base={hf}", "--workdir", str(wd["scalenet"]), *common]
  good = [
      [*grow, "--config.steps=2"],
      [*grow, "--config.steps=4"],  # resumes at step 2
      [*grow, "--config.steps=4", "--mode=eval"],
      [*grow, "--config.steps=4", "--mode=export"],
      ["--config", f"{CONFIG}:run=stack,base={hf}", "--workdir", str(wd["stack"]), *common, "--config.steps=2"],
      ["--config", f"{CONFIG}:run=further,base={hf}", "--workdir", str(wd["further"]), *common, "--config.steps=2"],
      ["--config", f"{CONFIG}:base={hf}", *MICRO, "--mode=summary", "--noxla_check"],
      # Alpaca-format JSON lines (the paper's data path): loss on the responses only
      ["--config", f"{CONFIG}:run=further,base={hf}", "--workdir", str(root / "alpaca"), *common, "--config.steps=2"]
      + ["--config.data.name=instructions", f"--config.data.root={inputs['alpaca']}", "--config.data.bos_token=<|bos|>"]
      + ["--config.data.seq_len=128"]
      + ["--config.data.pad_token=<|pad|>", "--config.data.held_out_fraction=0.1"],
  ]
  bad, before = {}, {}
  for case, (arg, extra) in BAD.items():
    w = root / f"wd_{case}"
    w.mkdir()
    (w / "notes.txt").write_text("results of an earlier run\n")
    before[case] = snapshot(w)
    fmt = {k: str(v) for k, v in inputs.items()}
    bad[case] = ["--config", f"{CONFIG}:{arg.format(hf=hf, **fmt)}", "--workdir", str(w), *common]
    bad[case] += [e.format(**fmt) for e in extra]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    f_good = pool.submit(run_session, good, root / "good.json")
    f_bad = pool.submit(run_session, list(bad.values()), root / "bad.json", True)
    good_result, bad_result = f_good.result(), f_bad.result()
  after = {case: snapshot(root / f"wd_{case}") for case in BAD}
  return {
      "root": root,
      "hf": hf,
      "wd": wd,
      "good": good_result,
      "bad": dict(zip(BAD, zip(*bad_result))),
      "before": before,
      "after": after,
  }


def bad_inputs(root: Path, hf: Path) -> dict:
  out = {}
  wide = root / "hf_wide"  # same files, a config.json of another width
  shutil.copytree(hf, wide)
  cfg = json.loads((hf / "config.json").read_text())
  (wide / "config.json").write_text(json.dumps({**cfg, "hidden_size": 128}))
  out["wide"] = wide
  gpt2 = root / "hf_gpt2"
  shutil.copytree(hf, gpt2)
  (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "vocab_size": VOCAB}))
  out["gpt2"] = gpt2
  sharded = root / "hf_sharded"
  model, params = load_hf(hf)
  llama.save_hf(str(sharded), params, model, max_shard_bytes=60_000)
  shutil.copy(hf / text.TOKENIZER_FILE, sharded)
  index = json.loads((sharded / "model.safetensors.index.json").read_text())
  out["shard"] = sorted(set(index["weight_map"].values()))[1]
  os.remove(sharded / out["shard"])
  out["sharded"] = sharded
  out["tok300"] = root / "tok300"
  text.save_tokenizer(text.train_tokenizer(text.fortunes(str(root / "corpus")), 300), str(out["tok300"]))
  out["alpaca"] = root / "alpaca_ok.jsonl"
  fortunes = text.fortunes(str(root / "corpus"))[:120]
  records = [
      {"instruction": "Tell me a fortune.", "input": f"Number {i}." if i % 2 else "", "output": d}
      for i, d in enumerate(fortunes)
  ]
  out["alpaca"].write_text("".join(json.dumps(r) + "\n" for r in records))
  out["jsonl"] = root / "alpaca.jsonl"
  out["jsonl"].write_text('{"instruction": "x", "output": "y"}\n{not json}\n')
  return out


# id -> (config argument, extra overrides, what the one error line must mention)
BAD_CASES = {
    "other_width": ("base={wide}", [], "checkpoint has hidden_size=128 but the model has hidden_size=64"),
    "other_model_type": ("base={gpt2}", [], "'gpt2' model, not a Llama-style decoder"),
    "missing_shard": ("base={sharded}", [], "shard {shard} listed in"),
    "tokenizer_size": (
        "base={hf}",
        ["--config.data.tokenizer={tok300}"],
        "has 300 tokens but the model's vocab_size is 320",
    ),
    "unknown_corpus": ("base={hf}", ["--config.data.name=wiki"], "unknown text data 'wiki'"),
    "malformed_jsonl": (
        "base={hf}",
        ["--config.data.name=instructions", "--config.data.root={jsonl}"],
        "line 2 is not JSON",
    ),
}
BAD = {k: (a, e) for k, (a, e, _) in BAD_CASES.items()}
MENTIONS = {k: m for k, (_, _, m) in BAD_CASES.items()}


# ----------------------------------------------------------------------------------------------
# The flow
# ----------------------------------------------------------------------------------------------
def test_grow_train_resume_eval(flow):
  codes, outs = flow["good"]
  for i, code in enumerate(codes):
    assert code == 0, outs[i][1][-4000:]
  assert len(codes) == 8
  w = flow["wd"]["scalenet"]
  assert f"resumed from {w} at step 2" in outs[1][0]
  ev = json.loads(outs[2][0].strip().splitlines()[-1])
  assert ev["perplexity"] == pytest.approx(math.exp(ev["eval_loss"]), rel=1e-9)
  assert ev["eval_tokens"] > 0 and 1.0 < ev["perplexity"] < 2 * VOCAB
  # eval of the final checkpoint = the final evaluation of training (same params, same held-out tokens)
  final = [json.loads(l) for l in (w / "metrics.jsonl").read_text().splitlines()][-1]
  assert final["step"] == 4 and final["perplexity"] == pytest.approx(ev["perplexity"], rel=1e-5)
  assert "perplexity" in outs[1][0] and "done:" in outs[1][0]


def test_instruction_data_counts_only_response_tokens(flow):
  codes, outs = flow["good"]
  assert codes[7] == 0, outs[7][1][-3000:]
  line = [l for l in outs[7][0].splitlines() if l.startswith("done:")][-1]
  tokens = int(line.split(" over ")[1].split()[0])
  # the held-out ~10% of 120 examples, 128 positions each: only response tokens (and eos) count
  assert 0 < tokens < 0.5 * 120 * 128, line


def test_grow_trains_only_adapters_and_norms(flow):
  """ScaleNet 2x under adjust_ln: the shared pretrained layers are the HF weights, bit for bit; the
  adapters (zero-init B) have moved."""
  _, pre = load_hf(flow["hf"])
  params = ckpt_lib.load_params(flow["wd"]["scalenet"] / "export" / "params")
  for k, v in pre["layers"]["core"].items():
    np.testing.assert_array_equal(np.asarray(params["layers"]["core"][k]["kernel"]), v["kernel"])
  np.testing.assert_array_equal(np.asarray(params["embed"]["embedding"]), pre["embed"]["embedding"])
  b = [
      np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params) if "adapter_down" in jax.tree_util.keystr(p)
  ]
  assert b and any(np.abs(x).max() > 0 for x in b)


# llama_micro: ScaleNet 2x adds 8 x 9,216 adapter + 4 x 128 norm params = 74,240; a layer holds 36,992,
# so the parameter-matched stacked baseline gets 2 new layers.
@pytest.mark.parametrize("run,depth", [("stack", 6), ("further", 4)])
def test_export_loads_in_transformers_with_the_same_logits(flow, transformers, torch, run, depth):
  """The stacked baseline (new layers, no adjustment modules) and the base trained further are plain
  decoders: their Hugging Face export gives transformers the logits of the trained params."""
  export = flow["wd"][run] / "export"
  c = config_of(f"run={run},base={flow['hf']}", {})
  model = builder.build_model(c)
  params = ckpt_lib.load_params(export / "params")
  x = np.random.default_rng(0).integers(0, VOCAB, (2, 12)).astype(np.int32)
  ours = np.asarray(model.apply({"params": params}, x))
  theirs, layers = hf_logits(transformers, torch, export, x)
  assert layers == depth
  np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)
  assert (export / text.TOKENIZER_FILE).read_bytes() == (flow["hf"] / text.TOKENIZER_FILE).read_bytes()


def test_summary_counts_the_2x_model(flow):
  _codes, outs = flow["good"]
  s = json.loads(outs[6][0].strip().splitlines()[-1])
  base = registry.create_model("llama_micro", {"vocab_size": VOCAB})
  n_base = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(base.abstract_params()))
  d, h, r = 64, 128, 16
  assert s["depths"] == [8]
  assert s["unique_params"] == n_base + 8 * 3 * r * (d + h) + 4 * 2 * d


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2(flow, case):
  code, (out, err) = flow["bad"][case]
  lines = [l for l in err.splitlines() if l.strip()]
  assert code == 2, (out[-2000:], err[-3000:])
  assert "Traceback" not in err + out
  assert len(lines) == 1 and lines[0].startswith("error:"), err[-3000:]
  want = MENTIONS[case].format(shard=flow_shard(flow))
  assert want in lines[0], lines[0]
  # The workdir: every pre-existing entry unchanged, no new files (an empty directory is harmless).
  before, after = flow["before"][case], flow["after"][case]
  assert {k: after.get(k) for k in before} == before
  assert not [k for k in set(after) - set(before) if after[k] != "dir"]


def flow_shard(flow):
  index = json.loads((flow["root"] / "hf_sharded" / "model.safetensors.index.json").read_text())
  present = {p.name for p in (flow["root"] / "hf_sharded").iterdir()}
  return next(s for s in sorted(set(index["weight_map"].values())) if s not in present)
