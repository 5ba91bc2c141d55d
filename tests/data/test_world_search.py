"""BM25 scores of `LexicalRetriever` against the Okapi formula written out by hand."""
import math

import pytest

from masksearch_jax.data import world_search

DOCS = [
    {"id": "a", "title": "Alpha", "text": "born in Lorn born"},          # 5 tokens
    {"id": "b", "title": "Beta", "text": "founded in Lorn"},             # 4 tokens
    {"id": "c", "title": "Gamma", "text": "nothing here"},               # 3 tokens
    {"id": "d", "title": "Delta", "text": "founded in Lorn"},            # 4 tokens, ties b
]


def _bm25(doc_tf: dict, dl: float, avg: float, df: int, n: int, k1=1.2, b=0.75) -> float:
  idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
  f = doc_tf
  return idf * f * (k1 + 1) / (f + k1 * (1 - b + b * dl / avg))


def test_scores_match_the_formula():
  r = world_search.LexicalRetriever(DOCS)
  avg = (5 + 4 + 3 + 4) / 4
  # "born": only in a (tf 2); "lorn": in a, b, d (tf 1 each).
  want_a = _bm25(2, 5, avg, 1, 4) + _bm25(1, 5, avg, 3, 4)
  want_b = _bm25(1, 4, avg, 3, 4)
  hits = r.search(["Born LORN"], 3)[0]
  assert [h.id for h in hits] == ["a", "b", "d"]               # b before d: corpus order on ties
  assert hits[0].score == pytest.approx(want_a, rel=1e-12)
  assert hits[1].score == pytest.approx(want_b, rel=1e-12) == hits[2].score


def test_always_k_hits_padded_in_corpus_order():
  r = world_search.LexicalRetriever(DOCS)
  hits = r.search(["gamma", "unknownword", ""], 3)
  assert [h.id for h in hits[0]] == ["c", "a", "b"] and hits[0][1].score == 0.0
  assert [h.id for h in hits[1]] == ["a", "b", "c"]
  assert [h.id for h in hits[2]] == ["a", "b", "c"]
