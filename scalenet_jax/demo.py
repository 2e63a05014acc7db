r"""The embedded demo: ScaleNet-grow vs the baselines on real Fashion-MNIST, on a CPU.

  python -m scalenet_jax.demo [--workdir DIR] [--quick] [--base FILE | --pretrain] [--seed S]

1. start from the released base, a 6-layer micro ViT (patch 4, 28x28 grey images, 30 epochs) in
   pretrained/ (timm-format safetensors with its provenance, as a paper user starts from timm's weights;
   `--base` another release file, a Swin one grows by the Swin recipe); `--pretrain` trains a short base
   here instead (an undertrained one, for a smoke test);
2. expand it to 12 layers with ScaleNet (shared weights + adapters + own norms) and with the baselines:
   Random / Stack / Interpolate / SWA (independent new layers, parameter-matched) and the 12-layer model
   from scratch; as a control, the base also trains further;
3. fine-tune every model with the same budget and write a Table-I-style report (`report.md`, its numbers
   in `record.json`).

The demo is the plan `configs/grow_study.py:demo` of the study runner (`scalenet_jax.study`): the fair
study's recipe, one seed and a 20-minute budget. Every run lives in its own sub-directory and resumes
from its checkpoints; a finished run is read back from the record.
"""

from __future__ import annotations

import sys
import time

from absl import app, flags, logging

from scalenet_jax import jax_utils, paths, study
from scalenet_jax.errors import UserError

FLAGS = flags.FLAGS
CONFIG = paths.REPO_ROOT / "configs" / "grow_study.py"


def plan_arg(quick: bool = False, seed: int = 0, base: str | None = None, pretrain: bool = False) -> str:
  """The argument of the demo plan in CONFIG for these CLI choices."""
  arg = f"demo,quick={int(quick)},seed={seed},pretrain={int(pretrain)}"
  return arg + (f",base={base}" if base else "")


def run_demo(workdir: str, quick: bool = False, seed: int = 0, base: str | None = None, pretrain: bool = False) -> str:
  """Runs (or resumes) the demo in `workdir`; returns its report."""
  t0 = time.time()
  s = study.run_study(f"{CONFIG}:{plan_arg(quick, seed, base, pretrain)}", workdir)
  print(f"demo: {time.time() - t0:.0f} s in this invocation", flush=True)
  return paths.path(s.plan["report"]).read_text()


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    report = run_demo(FLAGS.workdir, FLAGS.quick, FLAGS.seed, FLAGS.base, FLAGS.pretrain)
  except UserError as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)
  print(report)


def define_flags():
  """Flags of this CLI (defined on demand: other modules import this one)."""
  flags.DEFINE_string("workdir", "demo_workdir", "Where the runs, record.json and report.md go.")
  flags.DEFINE_bool("quick", False, "Tiny budget (a few minutes): a smoke run of the whole pipeline.")
  flags.DEFINE_string("base", None, "Release file of the base to grow (default: the ViT one in pretrained/).")
  flags.DEFINE_bool("pretrain", False, "Pretrain a short base here instead of using a released one.")
  flags.DEFINE_integer("seed", 0, "Seed of every run.")


if __name__ == "__main__":
  jax_utils.configure_cpu()  # before jax starts: XLA:CPU flags, allocator (docs/performance.md)
  define_flags()
  app.run(main)
