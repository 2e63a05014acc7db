r"""Puts a finished NAS pipeline run into docs/reproduction.md §5 (its `nas_run` section).

  python -m scalenet_jax.reproduce --nas_workdir DIR [--out docs/reproduction.md]

DIR is the workdir of a finished `configs/nas_fmnist_search.py` run: its `report.md` replaces the marked
section (headings moved under §5, its images copied next to the report as `<stem>_nas_*.png`, its
`results.json` as `<stem>_nas.json`); the rest of the file is kept. The ScaleNet-grow comparisons of §1-4
there are a record of an earlier design (the fair study, `python -m scalenet_jax.study`, replaces them).
"""

from __future__ import annotations

import os
import re
import shutil
import sys

from absl import app, flags, logging

from scalenet_jax import doc_sections
from scalenet_jax.errors import ConfigError, MissingInputError, UserError

FLAGS = flags.FLAGS


def nas_run_section(nas_workdir, stem) -> str:
  """The marked `nas_run` section: a finished NAS pipeline run's report (`report.md` of `nas_workdir`,
  headings under this report's §5, its images copied next to the report as `<stem>_nas_*.png`) with its
  `results.json` as `<stem>_nas.json`."""
  report = os.path.join(nas_workdir, "report.md")
  if not os.path.exists(report):
    raise MissingInputError(f"--nas_workdir {nas_workdir} holds no report.md (is the NAS run finished?)")
  with open(report) as f:
    text = f.read()
  name = os.path.basename(stem)
  for png in ("flops_hist.png", "fits.png"):
    if os.path.exists(os.path.join(nas_workdir, png)):
      shutil.copyfile(os.path.join(nas_workdir, png), f"{stem}_nas_{png}")
      text = text.replace(f"]({png})", f"]({name}_nas_{png})")
  shutil.copyfile(os.path.join(nas_workdir, "results.json"), stem + "_nas.json")
  text = re.sub(r"^(#+) ", lambda m: "#" * min(len(m.group(1)) + 2, 6) + " ", text, flags=re.M)
  intro = (
      "NAS pipeline report, from a real run of `python -m scalenet_jax.main --config "
      f"configs/nas_fmnist_search.py --workdir DIR` (every number in `{name}_nas.json`):"
  )
  return doc_sections.wrap("nas_run", f"{intro}\n\n{text}")


def publish() -> str:
  """Rewrites `--out`'s `nas_run` section from `--nas_workdir`, nothing else; returns the section."""
  if not FLAGS.nas_workdir:
    raise ConfigError("--nas_workdir is required (a finished configs/nas_fmnist_search.py run)")
  if not doc_sections.section_of(FLAGS.out, "nas_run"):
    raise MissingInputError(f"{FLAGS.out} has no nas_run section to replace")
  section = nas_run_section(FLAGS.nas_workdir, os.path.splitext(FLAGS.out)[0])
  doc_sections.replace(FLAGS.out, "nas_run", section, append=False)
  return section


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    section = publish()
  except UserError as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)
  print(section)


def define_flags():
  flags.DEFINE_string("out", "docs/reproduction.md", "The report whose nas_run section is rewritten.")
  flags.DEFINE_string("nas_workdir", "", "A finished NAS pipeline workdir (report.md and results.json there).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
