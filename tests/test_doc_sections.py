"""The marked, generated parts of docs (scalenet_jax/doc_sections.py): replaced in place, read back."""

from scalenet_jax import doc_sections


def test_section_is_replaced_in_place(tmp_path):
  doc = tmp_path / "r.md"
  doc.write_text("# Report\n\ntext\n")
  begin, end = doc_sections.markers("lm_study")
  doc_sections.replace(str(doc), "lm_study", doc_sections.wrap("lm_study", "old"))  # appended
  doc_sections.replace(str(doc), "lm_study", f"{begin}\nnew\n{end}")
  text = doc.read_text()
  assert text.count(begin) == 1 and "new" in text and "old" not in text and text.startswith("# Report\n\ntext\n")
  assert doc_sections.section_of(str(doc), "lm_study") == f"{begin}\nnew\n{end}"
  assert doc_sections.section_of(str(doc), "nas_run") == ""
  assert doc_sections.section_of(str(tmp_path / "missing.md"), "lm_study") == ""
  assert not doc_sections.replace(str(doc), "nas_run", doc_sections.wrap("nas_run", "x"), append=False)
  assert doc.read_text() == text
