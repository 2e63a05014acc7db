"""Generated parts of markdown files, each between `<!-- name:begin -->` and `<!-- name:end -->`.

A document that several commands write marks each command's part, so that one command rewrites its own
part in place and keeps the others': docs/reproduction.md (the NAS run `nas_run`, from `reproduce`; the
rest, `lm_study` (the earlier decoder comparison) included, kept as written) and the README's benchmark
table (`benchmarks`, from benchmarks/run_all.py).
"""

from __future__ import annotations

import os


def markers(name: str) -> tuple[str, str]:
  return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def wrap(name: str, body: str) -> str:
  """`body` as the marked section `name`."""
  begin, end = markers(name)
  return f"{begin}\n{body.strip(chr(10))}\n{end}"


def section_of(path: str, name: str) -> str:
  """The marked section `name` of the file at `path`, markers included ('' if the file or section is missing)."""
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    doc = f.read()
  begin, end = markers(name)
  if begin not in doc or end not in doc:
    return ""
  return doc[doc.index(begin) : doc.index(end) + len(end)]


def replace(path: str, name: str, section: str, append: bool = True) -> bool:
  """Writes `section` (markers included) in place of the file's section `name`. A file without that
  section gets it appended when `append`, else it is left unchanged and False returned."""
  with open(path) as f:
    doc = f.read()
  begin, end = markers(name)
  if begin in doc and end in doc:
    doc = doc[: doc.index(begin)] + section + doc[doc.index(end) + len(end) :]
  elif append:
    doc = doc.rstrip("\n") + "\n\n" + section + "\n"
  else:
    return False
  with open(path, "w") as f:
    f.write(doc)
  return True
