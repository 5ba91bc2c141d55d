"""Exact index against a plain numpy reference; ScaNN recall against exact; save / load."""
from __future__ import annotations

import numpy as np
import pytest

from masksearch_jax.retrieval import index as index_lib

pytest.importorskip("scann")


def _clustered(rng, n, d=32, centres=40, sigma=0.6):
  c = rng.normal(size=(centres, d))
  x = c[rng.integers(0, centres, n)] + rng.normal(scale=sigma, size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _recall(a, b):
  return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


def test_exact_matches_numpy_sort_across_chunks():
  rng = np.random.default_rng(0)
  db, q = _clustered(rng, 1000), _clustered(rng, 20)
  idx = index_lib.ExactIndex(db, chunk_rows=97)  # several chunks, uneven last one
  scores, rows = idx.search(q, 7)
  ref = q @ db.T
  ref_rows = np.argsort(-ref, axis=1)[:, :7]
  np.testing.assert_array_equal(rows, ref_rows)
  np.testing.assert_allclose(scores, np.take_along_axis(ref, ref_rows, 1), rtol=1e-6)
  s2, r2 = idx.search(q, 5000)  # k > N clamps to N
  assert r2.shape == (20, 1000) and sorted(r2[0]) == list(range(1000))


def test_scann_params_scale_with_corpus():
  small, big = index_lib.scann_params_for(5_000), index_lib.scann_params_for(1_000_000)
  assert small.num_leaves == 0 and small.scoring == "float"
  assert big.num_leaves == 1000 and big.num_leaves_to_search == 20 and big.scoring == "int8"
  assert index_lib.scann_params_for(1_000_000, reorder_k=50, num_leaves=None).reorder_k == 50
  with pytest.raises(ValueError, match="scoring"):
    index_lib.scann_params_for(10, scoring="pq")


def test_scann_recall_vs_exact_and_save_load(tmp_path):
  rng = np.random.default_rng(1)
  db, q = _clustered(rng, 30_000), _clustered(rng, 200)
  exact = index_lib.ExactIndex(db)
  _, ref = exact.search(q, 10)
  params = index_lib.scann_params_for(len(db))
  assert params.num_leaves > 0  # the partitioned + AH + reorder path
  scann_idx = index_lib.build_index(db, "scann", params)
  scores, rows = scann_idx.search(q, 10)
  rec = _recall(ref, rows)
  print(f"scann recall@10 vs exact on 30k x 32 clustered: {rec:.3f}")
  assert rec >= 0.9
  # Re-ranked scores are exact inner products of the returned rows.
  np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, db[rows]), atol=1e-5)

  index_lib.save_index(scann_idx, tmp_path)
  loaded = index_lib.load_index(tmp_path, embeddings_loader=lambda: db)
  _, rows2 = loaded.search(q, 10)
  np.testing.assert_array_equal(rows2, rows)

  index_lib.save_index(exact, tmp_path / "ex")
  ex2 = index_lib.load_index(tmp_path / "ex", embeddings_loader=lambda: db)
  np.testing.assert_array_equal(ex2.search(q, 10)[1], ref)


def test_scann_ah_scoring_recall():
  rng = np.random.default_rng(3)
  db, q = _clustered(rng, 25_000), _clustered(rng, 100)
  _, ref = index_lib.ExactIndex(db).search(q, 10)
  params = index_lib.scann_params_for(len(db), scoring="ah", reorder_k=100)
  _, rows = index_lib.build_index(db, "scann", params).search(q, 10)
  rec = _recall(ref, rows)
  print(f"scann AH recall@10 vs exact on 25k x 32 clustered: {rec:.3f}")
  assert rec >= 0.85


def test_scann_brute_force_small_corpus_is_exact():
  rng = np.random.default_rng(2)
  db, q = _clustered(rng, 500), _clustered(rng, 10)
  _, ref = index_lib.ExactIndex(db).search(q, 5)
  _, rows = index_lib.build_index(db, "scann").search(q, 5)
  assert _recall(ref, rows) == 1.0
  with pytest.raises(ValueError, match="backend"):
    index_lib.build_index(db, "annoy")


def test_rerank_exact_hand_worked():
  q = np.array([[1.0, 0.0]], np.float32)
  emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], np.float32)
  scores, rows = index_lib.rerank_exact(q, emb, np.array([[1, 2, -1]]), 2)
  np.testing.assert_array_equal(rows, [[2, 1]])
  np.testing.assert_allclose(scores, [[0.5, 0.0]])
  scores, rows = index_lib.rerank_exact(q, emb, np.array([[1, -1, -1]]), 2)
  np.testing.assert_array_equal(rows, [[1, -1]])  # padding stays padding, never row 0
