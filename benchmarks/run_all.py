"""Run every benchmark script and write benchmarks/RESULTS.md and the README's benchmark table from that one run.

    /work/main/.venv/bin/python benchmarks/run_all.py            # the target sizes (~20-30 min on 2 quiet cores)
    /work/main/.venv/bin/python benchmarks/run_all.py --quick    # short runs (smaller batches, fewer steps)
    /work/main/.venv/bin/python benchmarks/run_all.py --only vs_timm,train_step --out /tmp/RESULTS.md --no-readme

Scripts that write `--json` (STRUCTURED) feed the summary table; every other `benchmarks/*.py` script
(nas_vmap, ...) runs too, with `--quick` if its `--help` lists it, else with the short settings in
QUICK_FALLBACK, and appears with its printed output. A failing script is reported, not fatal. The README
table between the `<!-- benchmarks:begin -->` / `<!-- benchmarks:end -->` markers is replaced (unless
`--no-readme` or `--only` is given), so README and RESULTS.md always show the same run.
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

from scalenet_jax import doc_sections

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(os.path.dirname(HERE), "README.md")
README_BEGIN, README_END = doc_sections.markers("benchmarks")
STRUCTURED = ("train_step", "vs_timm", "scalenet_step", "compile_depth")  # write --json; summarised
SKIP = {"run_all", "common"}
# Short settings for scripts that have no --quick flag of their own (used only while they lack one).
QUICK_FALLBACK = {"nas_vmap": ["--paths", "8", "--repeats", "2"]}


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
    load = " ".join(f"{x:.2f}" for x in common.load_average())
    print(f"$ python {shown}  (load average {load})", flush=True)
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
def _met(ok: bool | None) -> str:
  return "" if ok is None else ("yes" if ok else "**no**")


def _rows(run: dict) -> list[tuple[str, str, str, str]]:
  """(metric, value, target, met) rows of one structured result."""
  d, name = run["data"], run["name"]
  if name == "train_step":
    rows = [
        (f"{d['model']} @ {d['img_size']}px, batch {d['batch']}: step", f"{d['step_s'] * 1e3:.0f} ms", "", ""),
        ("images/s (fwd + bwd + AdamW)", f"{d['images_per_s']:.2f}", "", ""),
        ("model FLOP/s (3 x fwd MACs x 2)", f"{d['model_flops_per_s'] / 1e9:.1f} G", "", ""),
        (
            "fp32 matmul 2048^3: jax / numpy / torch",
            f"{d['peak_jax_flops'] / 1e9:.1f} G / {d['peak_numpy_flops'] / 1e9:.1f} G / "
            f"{(d.get('peak_torch_flops') or 0) / 1e9:.1f} G (best {d['peak_best_flops'] / 1e9:.1f} G)",
            "",
            "",
        ),
        ("MFU (vs the best matmul rate of the run)", f"{100 * d['mfu']:.1f}%", ">= 85%", _met(d["mfu"] >= 0.85)),
    ]
    if "loader_slowdown_pct" in d:
      slow = d["loader_slowdown_pct"]
      rows.append(
          (
              f"train_batches ({d['loader_recipe']}, {d['loader_source']}) vs resident batch",
              f"{slow:+.1f}%",
              "<= +5%",
              _met(slow <= 5),
          )
      )
    return rows
  if name == "vs_timm":
    rows = []
    for r in d["results"]:
      target = r.get("target")
      rows.append(
          (
              f"{r['model']}, batch {r['batch']}: images/s jax / torch eager",
              f"{r['jax_images_per_s']:.2f} / {r['torch_images_per_s']:.2f} = **{r['ratio']:.2f}x**",
              f">= {target}x" if target else "",
              _met(r["ratio"] >= target) if target else "",
          )
      )
      if r.get("ratio_compile") is not None:
        rows.append(
            (
                f"{r['model']}, batch {r['batch']}: images/s jax / torch.compile",
                f"{r['jax_images_per_s']:.2f} / {r['torch_compile_images_per_s']:.2f} = {r['ratio_compile']:.2f}x "
                f"(inductor compile {r['torch_compile_s']:.0f} s)",
                "",
                "",
            )
        )
      rows.append(
          (f"{r['model']}: MFU jax / torch eager", f"{100 * r['jax_mfu']:.0f}% / {100 * r['torch_mfu']:.0f}%", "", "")
      )
    return rows
  if name == "scalenet_step":
    s, f = d["scalenet"], d["full"]
    rows = [
        (
            f"{d['model']} {d['reuse']}x, batch {d['batch']}: step scalenet / full (depth {f['depth']})",
            f"{s['step_s'] * 1e3:.0f} / {f['step_s'] * 1e3:.0f} ms = **{d['time_ratio']:.2f}**",
            "<= 0.76",
            _met(d["time_ratio"] <= 0.76),
        ),
        ("step MACs scalenet / full (program, load-independent)", f"{d['macs_ratio']:.2f}", "", ""),
        (
            "trainable params scalenet / full",
            f"{s['trainable_params'] / 1e6:.2f}M / " f"{f['trainable_params'] / 1e6:.2f}M",
            "",
            "",
        ),
        (
            "compiled peak memory scalenet / full",
            f"{common.mib(s['memory']['peak'])} / " f"{common.mib(f['memory']['peak'])} = **{d['memory_ratio']:.2f}**",
            "<= 0.70",
            _met(d["memory_ratio"] <= 0.70),
        ),
    ]
    if "peak_rss" in s:
      rows.append(("peak RSS scalenet / full", f"{common.mib(s['peak_rss'])} / {common.mib(f['peak_rss'])}", "", ""))
    return rows
  if name == "compile_depth":
    by = {(r["mode"], r["depth"]): r["total_s"] for r in d["rows"]}
    rows = []
    if "scan" in d["ratio_24_12"]:
      ratio = d["ratio_24_12"]["scan"]
      rows.append(
          (
              "compile fwd+bwd, scanned stack: 24 / 12 layers",
              f"{by[('scan', 24)]:.1f} / {by[('scan', 12)]:.1f} s = **{ratio:.2f}x**",
              "<= 1.15x",
              _met(ratio <= 1.15),
          )
      )
    if "unrolled" in d["ratio_24_12"]:
      rows.append(
          (
              "compile fwd+bwd, unrolled stack: 24 / 12 layers",
              f"{by[('unrolled', 24)]:.1f} / {by[('unrolled', 12)]:.1f} s = {d['ratio_24_12']['unrolled']:.2f}x",
              "",
              "",
          )
      )
    if ("scalenet2x", 24) in by:
      rows.append(("compile fwd+bwd, ScaleNet 2x of 12 (scanned)", f"{by[('scalenet2x', 24)]:.1f} s", "", ""))
    return rows
  return []


def summary_rows(runs: list[dict]) -> list[str]:
  lines = ["| benchmark | measurement | value | target | met |", "|---|---|---|---|---|"]
  for run in runs:
    if run["data"] is not None:
      for metric, value, target, met in _rows(run):
        lines.append(f"| {run['name']} | {metric} | {value} | {target} | {met} |")
    elif run["status"] != "ok":
      lines.append(f"| {run['name']} | {run['status']} | | | |")
  return lines


def render(runs: list[dict], machine: dict, quick: bool) -> str:
  """RESULTS.md text: machine, summary table, runtimes, then each script's printed output."""
  lines = [
      "# Benchmark results",
      "",
      f"Generated by `python benchmarks/run_all.py{' --quick' if quick else ''}` on {machine['date']}. "
      "Medians of several timed calls after compilation and warm-up; see each script's docstring for "
      "its protocol and FLOP convention, and docs/performance.md for where the time goes.",
      "",
      *[f"- {line}" for line in common.machine_lines(machine)],
      "- load average is printed again by every script below: a shared machine makes the numbers noisy",
      "",
      *summary_rows(runs),
  ]
  lines += ["", "| script | command | status | runtime |", "|---|---|---|---|"]
  lines += [f"| {r['name']} | `{r['cmd']}` | {r['status']} | {r['runtime_s']:.0f} s |" for r in runs]
  for r in runs:
    lines += ["", f"## {r['name']}", "", "```", r["output"].rstrip()[-6000:], "```"]
  return "\n".join(lines) + "\n"


def readme_block(runs: list[dict], machine: dict, quick: bool) -> str:
  """The README's benchmark table (same rows as RESULTS.md), with the machine line it was measured on."""
  return "\n".join(
      [
          README_BEGIN,
          f"Measured by `python benchmarks/run_all.py{' --quick' if quick else ''}` on {machine['date']}: "
          f"{machine['cpu']}, {machine['cores']} cores, load average at start {machine['loadavg']}; "
          f"jax {machine['jax']}, torch {machine['torch']}; XLA_FLAGS `{machine['xla_flags'] or '(none)'}`. "
          "Full output: `benchmarks/RESULTS.md`.",
          "",
          *summary_rows(runs),
          README_END,
      ]
  )


def update_readme(block: str, path: str = README) -> bool:
  """Replace the marked benchmark block of the README; False (unchanged) when the markers are missing."""
  return doc_sections.replace(path, "benchmarks", block, append=False)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="run the scripts with --quick (short runs)")
  p.add_argument("--only", default="", help="comma-separated script names (default: all)")
  p.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
  p.add_argument("--no-readme", action="store_true", help="do not rewrite the README's benchmark table")
  p.add_argument("--timeout", type=float, default=3600, help="seconds per script")
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
  runs = [run_one(n, args.quick, args.timeout) for n in names]
  with open(args.out, "w") as f:
    f.write(render(runs, machine, args.quick))
  print(f"wrote {args.out}")
  if not args.no_readme and not args.only:
    if update_readme(readme_block(runs, machine, args.quick)):
      print(f"updated the benchmark table in {README}")
    else:
      print(f"{README} has no {README_BEGIN} ... {README_END} block: not updated")


if __name__ == "__main__":
  main()
