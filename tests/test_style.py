"""House style, checked in CI: the tree is pyink-formatted (pyproject.toml) and docstrings use one markup."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tracked_python_files():
  out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
  return [ROOT / f for f in out.stdout.split()]


def test_tree_is_formatted():
  files = [str(f) for f in _tracked_python_files()]
  r = subprocess.run(
      [sys.executable, "-m", "pyink", "--check", "--quiet", *files], cwd=ROOT, capture_output=True, text=True
  )
  assert r.returncode == 0, f"not pyink-formatted (run `.venv/bin/pyink .`):\n{r.stderr}"


def test_docstrings_use_markdown_backticks():
  # One markup: Markdown code spans (single backticks), not RST literals (double backticks) or RST roles.
  tick2 = "`" * 2  # spelled out so that this file does not match its own pattern
  rst = re.compile(rf"(?<!`){tick2}[^`\n]+{tick2}(?!`)|:(class|func|meth|mod):`")
  bad = [
      f"{f.relative_to(ROOT)}:{i}"
      for f in _tracked_python_files()
      for i, line in enumerate(f.read_text().splitlines(), 1)
      if rst.search(line)
  ]
  assert not bad, f"RST markup in: {bad[:10]}"
