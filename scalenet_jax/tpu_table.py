r"""docs/tpu.md: every paper config compiled for four TPU slices on this host (`--mode compile`), in chunks.

    python -m scalenet_jax.tpu_table                      # every row not yet in docs/tpu.json, then the doc
    python -m scalenet_jax.tpu_table --max_minutes 50     # one chunk: starts no row that cannot finish
    python -m scalenet_jax.tpu_table --render_only        # the doc from the record as it is

Each row is `python -m scalenet_jax.main --config C --mode compile --topology T [--config.model.dtype=D]`
in its own process (one libtpu, one failure at a time); its JSON line goes into the record
(docs/tpu.json) as soon as it finishes, so a chunk cut short loses at most the row it was running, and
the next run (on any machine: the numbers come from the compiler, not from this host's speed) continues
with the rows still missing (and those that failed). Rows are ordered so that the ScaleNet rows land first; pending rows are
marked in the doc. A row records the compile's wall time on the host that ran it, which `--max_minutes`
uses to plan the next chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from scalenet_jax import jax_utils, paths, tpu_check

TOPOLOGIES = ("v4-8", "v5e-8", "v5e-16", "v5p-8")
VISION = ("deit_tiny", "deit_small", "deit_base", "swin_tiny", "swin_small", "swin_base")
GROW_KINDS = ("scalenet", "random", "stack", "interpolate", "swa", "scratch")
LLAMA_RUNS = ("scalenet", "stack", "further")
DTYPES = ("float32", "bfloat16")
DEFAULT_ESTIMATE_S = 240.0  # a row not yet measured: about a DeiT-B 2x compile on 2 cores
TIMEOUT_S = 45 * 60


# The compute dtype a config is shipped with, and the other one its `alt` rows override to.
OWN_DTYPE = {"configs/llama3_1b_2x.py": "bfloat16"}
NO_DTYPE = ("configs/nas_imagenet_supernet.py",)  # the supernet has no compute-dtype setting: float32 only


def rows() -> list[dict]:
  """Every row of the table, in the order they are run: each paper config's main run in its own compute
  dtype, the baselines, the NAS supernet, then all of them in the other dtype."""
  configs = [(f"configs/{m}_2x.py", "scalenet") for m in VISION] + [("configs/llama3_1b_2x.py", "run=scalenet")]
  baselines = [(f"configs/{m}_2x.py", k) for m in VISION for k in GROW_KINDS[1:]]
  baselines += [("configs/llama3_1b_2x.py", f"run={r}") for r in LLAMA_RUNS[1:]]
  nas = [("configs/nas_imagenet_supernet.py", "")]  # last: one program per resolution, the longest compiles
  out = []
  for dtype in ("own", "alt"):
    for config, arg in configs + baselines + nas:
      if dtype == "alt" and config in NO_DTYPE:
        continue
      out += [dict(config=config, arg=arg, dtype=dtype, topology=t) for t in TOPOLOGIES]
  return out


def dtype_of(row: dict) -> str:
  own = OWN_DTYPE.get(row["config"], "float32")
  return own if row["dtype"] == "own" else next(d for d in DTYPES if d != own)


def key(row: dict) -> str:
  return f"{row['config']}:{row['arg']}|{row['dtype']}|{row['topology']}"


def command(row: dict) -> list[str]:
  spec = row["config"] + (f":{row['arg']}" if row["arg"] else "")
  cmd = [
      sys.executable,
      "-m",
      "scalenet_jax.main",
      "--config",
      spec,
      "--mode",
      "compile",
      "--topology",
      row["topology"],
  ]
  if row["dtype"] == "alt":
    cmd.append(f"--config.model.dtype={dtype_of(row)}")
  return cmd


def run_row(row: dict) -> dict:
  """One compile check in its own process: its JSON line, exit code and wall time."""
  t = time.perf_counter()
  try:
    r = subprocess.run(command(row), cwd=paths.REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    code, out, err = r.returncode, r.stdout, r.stderr
  except subprocess.TimeoutExpired:
    code, out, err = -1, "", f"timed out after {TIMEOUT_S} s"
  res = dict(row, exit=code, wall_s=round(time.perf_counter() - t, 1))
  last = out.strip().splitlines()[-1] if out.strip() else ""
  if code in (0, 2) and last.startswith("{"):
    res["report"] = json.loads(last)
  if code != 0:
    errors = [l for l in err.strip().splitlines() if l.strip()]
    res["error"] = errors[-1][:400] if errors else f"exit {code}"
  return res


def _estimate(record: dict, row: dict) -> float:
  same = [r["wall_s"] for r in record.values() if r["config"] == row["config"] and "wall_s" in r]
  done = [r["wall_s"] for r in record.values() if "wall_s" in r]
  return max(same) if same else (max(done) if done else DEFAULT_ESTIMATE_S)


def read_record(path: str) -> dict:
  return json.load(open(path))["rows"] if os.path.exists(path) else {}


def write_record(path: str, record: dict) -> None:
  jax_utils.cpu_unless_accelerator()  # the machine facts need jax's CPU backend, not libtpu probing for a TPU
  data = {"machine": jax_utils.machine(), "rows": dict(sorted(record.items()))}
  paths.write_json(path, data)


def _fmt_row(row: dict, done: dict | None) -> str:
  run = row["arg"].removeprefix("run=") or "supernet"
  name = os.path.basename(row["config"]).removesuffix(".py")
  head = f"| {name} | {run} | {dtype_of(row)} | {row['topology']} |"
  if done is None:
    return head + " pending |  |  |  |  |  |"
  rep = done.get("report")
  if rep is None:
    return head + f" error: {done.get('error', '?')} |  |  |  |  |  |"
  gib = rep["bytes_per_device"] / 2**30
  hbm = rep["hbm_bytes_per_device"] / 2**30
  fits = "yes" if rep["fits"] else "**no**"
  if not rep.get("compiled", True) or rep["step_seconds_bound"] is None:
    why = "the state alone" if not rep.get("compiled", True) else "refused by the compiler"
    return head + f" {fits} | >= {gib:.1f} / {hbm:.0f} ({why}) |  |  |  | {rep['devices']} |"
  ms = rep["step_seconds_bound"] * 1e3
  rate = f"{rep['items_per_second_bound']:,.0f} {rep['item']}/s"
  return head + f" {fits} | {gib:.2f} / {hbm:.0f} | {ms:.1f} | {rate} | {rep['mfu_at_bound']:.0%} | {rep['devices']} |"


def render(record: dict) -> str:
  all_rows = rows()
  done = [record[key(r)] for r in all_rows if key(r) in record]
  libtpu = sorted({d["report"]["libtpu"] for d in done if "report" in d}) or ["?"]
  jax_v = sorted({d["report"]["jax"] for d in done if "report" in d}) or ["?"]
  L = [
      "# Paper configs on TPU slices: memory fit and a roofline step-time bound",
      "",
      "Generated by `python -m scalenet_jax.tpu_table` from the record `docs/tpu.json` (each row:",
      "`python -m scalenet_jax.main --config C --mode compile --topology T --config.model.dtype=D`, see",
      "`scalenet_jax/tpu_check.py`). Compiled on a CPU host for the named slice with libtpu "
      + ", ".join(libtpu)
      + f" and jax {', '.join(jax_v)}; nothing ran on a TPU.",
      "",
      f"{len(done)} of {len(all_rows)} rows are done; `pending` rows are not compiled yet (continue with the",
      "command above; `--max_minutes N` runs a chunk).",
      "",
      "How to read it:",
      "- **memory**: per device, what XLA's memory analysis of the compiled train step (or eval step,",
      "  whichever is larger) needs: arguments (train state and batch shards, in TPU layouts, which pad",
      "  small minor dimensions), outputs not aliased to the donated state, temporaries and code, against",
      "  the chip's HBM (GiB). A train state larger than the chip is reported without compiling.",
      "- **step bound**: a lower bound on the step time, max(FLOPs / peak, bytes accessed / HBM bandwidth)",
      "  per device, with Google Cloud's published chip figures (`tpu_check.CHIPS`). FLOPs are the matmul",
      "  and conv FLOPs of the traced step (every scanned block counted); bytes accessed are XLA's, which",
      "  count a scanned stack's body once, so the memory term is low for scanned (deep) models. A float32",
      "  matmul at JAX's default precision runs at the bf16 rate on TPU, so both dtypes use the bf16 peak.",
      "- **rate** and **MFU at the bound**: the global batch (x sequence length for the LM) per bound step,",
      "  and the step's FLOPs over (bound x peak); real steps are slower (communication, non-matmul work).",
      "- Slices: v4-8 and v5p-8 are 4 chips (JAX sees one device per chip, megacore), v5e-8 8 chips,",
      "  v5e-16 16 chips over 4 hosts. The configs' own batch sizes and sharding (`replicate`) are used;",
      "  `--config.sharding=fsdp` or `--config.model.remat=True` change the picture where a row does not fit.",
      "",
      "Chips (per JAX device; Google Cloud's system-architecture pages cloud.google.com/tpu/docs/v4, /v5e,",
      "/v5p, /v6e, as published there):",
      "",
      "| generation | HBM per chip | peak bf16 TFLOP/s | HBM bandwidth GB/s | TensorCores per chip |",
      "|---|---|---|---|---|",
      *[
          f"| {c.generation} | {c.hbm_bytes / 2**30:.1f} GiB | {c.peak_flops / 1e12:.0f} | {c.hbm_bandwidth / 1e9:.0f} "
          f"| {c.cores_per_chip} |"
          for c in tpu_check.CHIPS.values()
      ],
      "",
      "| config | run | compute | slice | fits | memory GiB / HBM GiB per device | step bound ms | rate at the bound | MFU at the bound | devices |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  L += [_fmt_row(r, record.get(key(r))) for r in all_rows]
  return "\n".join(L) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--record", default=str(paths.REPO_ROOT / "docs" / "tpu.json"))
  p.add_argument("--out", default=str(paths.REPO_ROOT / "docs" / "tpu.md"))
  p.add_argument("--max_minutes", type=float, default=0.0, help="start no row that cannot finish in time (0 = all)")
  p.add_argument("--render_only", action="store_true")
  p.add_argument("--only", default="", help="run only rows whose key contains this text")
  args = p.parse_args(argv)
  record = read_record(args.record)
  t0 = time.perf_counter()
  if not args.render_only:
    # A row that failed (no report: a crash, a timeout, a bug since fixed) is tried again.
    todo = [r for r in rows() if "report" not in record.get(key(r), {}) and args.only in key(r)]
    for i, row in enumerate(todo):
      elapsed = time.perf_counter() - t0
      if args.max_minutes and elapsed + _estimate(record, row) > args.max_minutes * 60:
        print(f"[tpu_table] stop: {key(row)} (~{_estimate(record, row):.0f} s) would not finish in time", flush=True)
        break
      res = run_row(row)
      record[key(row)] = res
      write_record(args.record, record)
      state = "fits" if res.get("report", {}).get("fits") else res.get("error", "does not fit")
      print(f"[tpu_table] {i + 1}/{len(todo)} {key(row)}: {state} ({res['wall_s']:.0f} s)", flush=True)
  paths.write_text(args.out, render(record))
  print(f"[tpu_table] wrote {args.out} ({len(record)} of {len(rows())} rows)", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
