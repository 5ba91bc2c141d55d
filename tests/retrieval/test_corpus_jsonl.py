"""Corpus readers (both layouts, bad lines) and the on-disk passage store."""
from __future__ import annotations

import json

import pytest

from masksearch_jax.retrieval import corpus
from masksearch_jax.retrieval import store as store_lib


def _write(tmp_path, lines, name="c.jsonl"):
  p = tmp_path / name
  p.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return p


GOOD = [
    json.dumps({"id": "a", "title": "Alpha", "text": "first passage"}),
    json.dumps({"id": 7, "contents": "\"Beta (film)\"\nsecond \"quoted\" passage\nwith a newline"}),
    "",  # blank lines are ignored, not errors
    json.dumps({"id": "c", "contents": "no title line"}),
]


def test_reads_both_layouts(tmp_path):
  ps = list(corpus.iter_passages(_write(tmp_path, GOOD)))
  assert ps == [
      corpus.Passage("a", "Alpha", "first passage"),
      corpus.Passage("7", "Beta (film)", "second \"quoted\" passage\nwith a newline"),
      corpus.Passage("c", "", "no title line"),
  ]
  assert ps[1].contents() == "\"Beta (film)\"\nsecond \"quoted\" passage\nwith a newline"


@pytest.mark.parametrize("bad,reason", [
    ("{not json", "invalid JSON"),
    (json.dumps({"id": "x", "title": "T"}), "missing text"),
    (json.dumps({"title": "T", "text": "t"}), "missing field 'id'"),
    (json.dumps({"id": "x", "text": "   "}), "empty text"),
    (json.dumps(["a", "b"]), "expected a JSON object"),
    (json.dumps({"id": "a", "text": "dup"}), "duplicate id 'a'"),
])
def test_bad_line_names_file_and_line(tmp_path, bad, reason):
  p = _write(tmp_path, [GOOD[0], GOOD[1], bad, GOOD[3]])
  with pytest.raises(corpus.CorpusError) as e:
    list(corpus.iter_passages(p))
  assert f"{p}:3:" in str(e.value) and reason in str(e.value)


def test_skip_bad_counts(tmp_path):
  lines = [GOOD[0], "{oops", json.dumps({"id": "a", "text": "dup"}), GOOD[1],
           json.dumps({"id": "z"})]
  stats = corpus.ReadStats()
  ps = list(corpus.iter_passages(_write(tmp_path, lines), skip_bad=True, stats=stats))
  assert [p.id for p in ps] == ["a", "7"]
  assert (stats.read, stats.skipped) == (2, 3)
  assert stats.skipped_by_reason == {"invalid JSON": 1, "duplicate id": 1, "missing text": 1}


def test_store_roundtrip_random_access(tmp_path):
  ps = list(corpus.iter_passages(_write(tmp_path, GOOD)))
  ps.append(corpus.Passage("u", "Ünïcode ☃", "naïve text — with dashes"))
  assert store_lib.write_store(tmp_path / "idx", ps) == 4
  s = store_lib.PassageStore(tmp_path / "idx")
  assert len(s) == 4
  assert s.get([3, 0, 3]) == [ps[3], ps[0], ps[3]]
  assert s.iter_range(1, 10) == ps[1:]
  with pytest.raises(IndexError, match="row 4"):
    s.get([4])
  with pytest.raises(FileNotFoundError):
    store_lib.PassageStore(tmp_path / "nope")
