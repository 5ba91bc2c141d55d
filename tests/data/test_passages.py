"""Paragraph filtering rules (MaskSearch reference pipeline) and corpus readers."""
import json
from pathlib import Path

import pytest

from masksearch_jax.data import passages

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
LONG = " ".join(["word"] * 20)


@pytest.mark.parametrize("line,keep", [
    (f"A normal paragraph with {LONG}.", True),
    (f"BULLET::::- a list item {LONG}", False),
    (f"Section::::History {LONG}", False),
    (f"- dash item {LONG}", False),
    (f"* starred line {LONG}", False),
    (f"Paths a/b/c in a sentence {LONG}", False),  # two '/'
    (f"One slash a/b in a sentence {LONG}", True),
    (f"The members were as follows {LONG}:", False),
    ("Too short to mask.", False),
])
def test_keep_paragraph(line, keep):
  assert passages.keep_paragraph(line) is keep


def test_with_title():
  assert passages.with_title("He was born in 1900.", "John Smith") == "John Smith: He was born in 1900."
  assert passages.with_title("John Smith was born.", "John Smith") == "John Smith was born."
  assert passages.with_title("Ed Wood is a film.", "Ed Wood (film)") == "Ed Wood is a film."


def test_kilt_reader_errors_name_file_and_line(tmp_path):
  p = tmp_path / "pages.jsonl"
  good = {"wikipedia_title": "T", "text": ["T\n", f"T is a thing {LONG}.\n"]}
  p.write_text(json.dumps(good) + "\n" + '{"wikipedia_title": "U", "text": "not a list"}\n')
  it = passages.iter_paragraphs(p)
  first = next(it)
  assert (first.key, first.title, first.text) == ("T#1", "T", f"T is a thing {LONG}.")
  with pytest.raises(passages.PassageError, match=r"pages.jsonl:2: field 'text'"):
    next(it)


def test_jsonl_layouts_and_bad_line(tmp_path):
  p = tmp_path / "c.jsonl"
  p.write_text(json.dumps({"id": "7", "contents": f'"Some Title"\nIt is {LONG}.'}) + "\n{bad\n")
  it = passages.iter_paragraphs(p)
  par = next(it)
  assert (par.key, par.title, par.text) == ("7", "Some Title", f"Some Title: It is {LONG}.")
  with pytest.raises(ValueError, match=r"c.jsonl:2"):
    next(it)


def test_real_kilt_pages_filtered():
  path = DATA / "r1searcher/wiki_samples/filtered_kilt_sample_100.jsonl"
  if not path.exists():
    pytest.skip(f"shared data absent: {path}")
  pars = list(passages.iter_paragraphs(path))
  assert len({p.title for p in pars}) > 90
  for p in pars:
    assert "Section::::" not in p.text and "BULLET::::" not in p.text
    assert not p.text.endswith(":") and p.text.count("/") < 2 + p.text[:len(p.title)].count("/")
    assert p.title.lower() in p.text.lower() or passages.with_title(p.text, p.title) == p.text
