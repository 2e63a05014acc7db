"""lm_study's statistics and report (synthetic runs; the real ones are in docs/reproduction.md)."""

from __future__ import annotations

import pytest
from scipy import stats as scipy_stats

from scalenet_jax import doc_sections, lm_study, stats


def runs(ppl: dict) -> dict:
  return {
      f"{arm}_s{s}": {"perplexity": p, "params": 10, "trainable_params": 5, "train_sec": 1.0}
      for arm, ps in ppl.items()
      for s, p in enumerate(ps)
  }


def test_t_interval_and_paired_differences():
  m, h = stats.t_interval([1.0, 2.0, 3.0])
  assert m == 2.0 and h == pytest.approx(scipy_stats.t.ppf(0.975, 2) * 1.0 / 3**0.5)
  rows = lm_study.summarize(
      runs({"scalenet": [10.0, 11.0, 12.0], "stack": [12.0, 13.0, 14.5], "further": [11.0, 12.0, 13.0]}), 3
  )
  # paired: scalenet is exactly 1 below further on every seed -> difference -1 with zero width
  assert rows["scalenet"]["diff"] == pytest.approx(-1.0) and rows["scalenet"]["diff_ci"] == pytest.approx(0.0)
  assert rows["stack"]["diff"] == pytest.approx(1.1666666, rel=1e-6) and rows["stack"]["diff_ci"] > 0
  assert stats.decide(-1.0, 2.0) == "undecided" and stats.decide(-1.0, 0.5) == "lower"
  assert stats.decide(1.0, 0.5) == "higher" and stats.decide(1.0, float("nan")) == "one seed"
  verdict = lm_study.verdict(rows)
  assert "scalenet is better" in verdict and "stack is worse" in verdict and "lower than the stacked" in verdict


def test_section_is_replaced_in_place(tmp_path):
  doc = tmp_path / "r.md"
  doc.write_text("# Report\n\ntext\n")
  doc_sections.replace(str(doc), "lm_study", f"{lm_study.BEGIN}\nold\n{lm_study.END}")
  doc_sections.replace(str(doc), "lm_study", f"{lm_study.BEGIN}\nnew\n{lm_study.END}")
  text = doc.read_text()
  assert text.count(lm_study.BEGIN) == 1 and "new" in text and "old" not in text and text.startswith("# Report")
  assert doc_sections.section_of(str(doc), "lm_study") == f"{lm_study.BEGIN}\nnew\n{lm_study.END}"
  assert doc_sections.section_of(str(tmp_path / "missing.md"), "lm_study") == ""
