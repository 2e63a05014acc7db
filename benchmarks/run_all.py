"""Run every benchmark script (quick mode by default) and write benchmarks/RESULTS.md.

    /work/main/.venv/bin/python benchmarks/run_all.py            # --quick runs, a few minutes each
    /work/main/.venv/bin/python benchmarks/run_all.py --full     # the scripts' default (longer) sizes
    /work/main/.venv/bin/python benchmarks/run_all.py --only train_step,vs_timm --out /tmp/RESULTS.md

Scripts that write `--json` (train_step, vs_timm, scalenet_step) feed the summary table; every other
`benchmarks/*.py` script (nas_vmap, compile_depth, ...) runs too, with `--quick` if its `--help` lists
it, else with the short settings in QUICK_FALLBACK, and appears with its printed output. A failing script
is reported, not fatal.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import common

HERE = os.path.dirname(os.path.abspath(__file__))
STRUCTURED = ("train_step", "vs_timm", "scalenet_step")  # write --json; summarised in the table
SKIP = {"run_all", "common"}
# Short settings for scripts that have no --quick flag of their own (used only while they lack one).
QUICK_FALLBACK = {
    "compile_depth": ["--depths", "12,24", "--unroll-depths", "12,24", "--repeats", "1"],
    "nas_vmap": ["--paths", "8", "--repeats", "2"],
}


def discover() -> list[str]:
  """Benchmark script names: ours first (in a fixed order), then any other scripts alphabetically."""
  others = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(HERE, "*.py")))
  return list(STRUCTURED) + [n for n in others if n not in SKIP and n not in STRUCTURED and not n.startswith("_")]


def accepts(script: str, flag: str) -> bool:
  """Whether `script --help` mentions `flag` (foreign scripts may not have --quick)."""
  r = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
  return r.returncode == 0 and flag in r.stdout


def run_one(name: str, quick: bool, timeout: float) -> dict:
  """Run one script; returns its status, runtime, output and (for ours) the parsed --json results."""
  script = os.path.join(HERE, f"{name}.py")
  with tempfile.TemporaryDirectory() as tmp:
    out_json = os.path.join(tmp, "out.json")
    cmd = [sys.executable, script]
    if quick and (name in STRUCTURED or accepts(script, "--quick")):
      cmd.append("--quick")
    elif quick:
      cmd += QUICK_FALLBACK.get(name, [])
    shown = " ".join([f"benchmarks/{name}.py", *cmd[2:]])
    if name in STRUCTURED:
      cmd += ["--json", out_json]
    print(f"$ python {shown}", flush=True)
    t = time.perf_counter()
    try:
      r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=os.path.dirname(HERE))
      status, output = ("ok" if r.returncode == 0 else f"failed (exit {r.returncode})"), r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
      status, output = f"timed out after {timeout:.0f}s", (e.stdout or b"").decode(errors="replace")
    runtime = time.perf_counter() - t
    data = None
    if status == "ok" and os.path.exists(out_json):
      with open(out_json) as f:
        data = json.load(f)
  print(f"  {status} in {runtime:.0f}s", flush=True)
  return dict(name=name, cmd=f"python {shown}", status=status, runtime_s=runtime, output=output, data=data)


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------
def _rows(run: dict) -> list[tuple[str, str, str]]:
  """(metric, value, goal) rows of one structured result."""
  d, name = run["data"], run["name"]
  if name == "train_step":
    rows = [
        (f"{d['model']} @ {d['img_size']}px, batch {d['batch']}: step", f"{d['step_s'] * 1e3:.0f} ms", ""),
        ("images/s (fwd + bwd + AdamW)", f"{d['images_per_s']:.2f}", ""),
        ("model FLOP/s (3 x fwd MACs x 2)", f"{d['model_flops_per_s'] / 1e9:.1f} G", ""),
        (
            "fp32 matmul peak: jax / numpy",
            f"{d['peak_jax_flops'] / 1e9:.1f} G / " f"{d['peak_numpy_flops'] / 1e9:.1f} G",
            "",
        ),
        ("MFU (vs jax matmul peak)", f"{100 * d['mfu']:.1f}%", ""),
    ]
    if "loader_slowdown_pct" in d:
      rows.append(
          (
              f"train_batches ({d['loader_recipe']}, {d['loader_source']}) vs resident batch",
              f"{d['loader_slowdown_pct']:+.1f}%",
              "<= +5%",
          )
      )
    return rows
  if name == "vs_timm":
    return [
        (
            f"{r['model']}, batch {r['batch']}: images/s jax / torch",
            f"{r['jax_images_per_s']:.2f} / {r['torch_images_per_s']:.2f} = **{r['ratio']:.2f}x**",
            ">= 1.3x",
        )
        for r in d["results"]
    ]
  if name == "scalenet_step":
    s, f = d["scalenet"], d["full"]
    rows = [
        (
            f"{d['model']} {d['reuse']}x, batch {d['batch']}: step scalenet / full (depth {f['depth']})",
            f"{s['step_s'] * 1e3:.0f} / {f['step_s'] * 1e3:.0f} ms = **{d['time_ratio']:.2f}**",
            "<= 0.60",
        ),
        ("step MACs scalenet / full (program, load-independent)", f"{d['macs_ratio']:.2f}", ""),
        (
            "trainable params scalenet / full",
            f"{s['trainable_params'] / 1e6:.2f}M / " f"{f['trainable_params'] / 1e6:.2f}M",
            "",
        ),
        (
            "compiled peak memory scalenet / full",
            f"{common.mib(s['memory']['peak'])} / " f"{common.mib(f['memory']['peak'])} = {d['memory_ratio']:.2f}",
            "",
        ),
    ]
    if "peak_rss" in s:
      rows.append(("peak RSS scalenet / full", f"{common.mib(s['peak_rss'])} / {common.mib(f['peak_rss'])}", ""))
    return rows
  return []


def render(runs: list[dict], machine: dict, quick: bool) -> str:
  """RESULTS.md text: machine, summary table, runtimes, then each script's printed output."""
  lines = [
      "# Benchmark results",
      "",
      f"Generated by `python benchmarks/run_all.py{'' if quick else ' --full'}` on {machine['date']}. "
      "Medians of several timed calls after compilation and warm-up; see each script's docstring for "
      "its protocol and FLOP convention.",
      "",
      f"- CPU: {machine['cpu']}, {machine['cores']} cores; backend {machine['backend']}",
      f"- jax {machine['jax']}, torch {machine['torch'] or 'not installed'}, python {machine['python']}",
      f"- load average at start: {machine['loadavg']} (a shared machine makes numbers noisy)",
      "",
      "| benchmark | measurement | value | goal |",
      "|---|---|---|---|",
  ]
  for run in runs:
    if run["data"] is not None:
      for metric, value, goal in _rows(run):
        lines.append(f"| {run['name']} | {metric} | {value} | {goal} |")
    elif run["status"] != "ok":
      lines.append(f"| {run['name']} | {run['status']} | | |")
  lines += ["", "| script | command | status | runtime |", "|---|---|---|---|"]
  lines += [f"| {r['name']} | `{r['cmd']}` | {r['status']} | {r['runtime_s']:.0f} s |" for r in runs]
  for r in runs:
    lines += ["", f"## {r['name']}", "", "```", r["output"].rstrip()[-6000:], "```"]
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--full", action="store_true", help="run the scripts at their default sizes (no --quick)")
  p.add_argument("--only", default="", help="comma-separated script names (default: all)")
  p.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
  p.add_argument("--timeout", type=float, default=1800, help="seconds per script")
  args = p.parse_args(argv)
  names = discover()
  if args.only:
    wanted = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
      raise SystemExit(f"unknown benchmark {unknown[0]!r}; known: {', '.join(names)}")
    names = [n for n in names if n in wanted]
  machine = common.machine_info()
  print(f"load average {machine['loadavg']}; running {', '.join(names)}")
  runs = [run_one(n, not args.full, args.timeout) for n in names]
  with open(args.out, "w") as f:
    f.write(render(runs, machine, not args.full))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
