"""Vector indexes over unit embeddings (dot product): ScaNN and exact brute force.

Both answer `search(queries [Q, D], k) -> (scores [Q, k], rows [Q, k])`, best first, so the
exact index doubles as the recall reference for ScaNN. ScaNN parameters are chosen from corpus
size (k-means partitioning into ~sqrt(N) leaves, quantised scoring, exact re-ranking) and every
one can be overridden. The default scoring is int8 rather than anisotropic hashing: on 2 CPU
cores it built a 1M x 384 index ~2x faster and at much higher recall per query/s (measured,
benchmarks/RESULTS.md); AH stays available as `scoring="ah"` for memory-bound corpora.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Protocol

import numpy as np

INDEX_META = "index.json"
SCANN_DIR = "scann"


class VectorIndex(Protocol):
  backend: str

  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ...

  def save(self, directory: Path) -> None:
    ...


@dataclasses.dataclass(frozen=True)
class ScannParams:
  """ScaNN settings. `num_leaves = 0`: no partitioning. `scoring`: how candidates in the searched
  leaves are scored before the exact float re-ranking of the best `reorder_k`:
  "int8" (fixed-point brute force: cheap to build, accurate), "ah" (asymmetric hashing with
  `dims_per_block`: 4x smaller than int8, slower to build), "float" (exact, no re-ranking)."""
  num_leaves: int = 0
  num_leaves_to_search: int = 0
  training_sample_size: int = 100_000
  scoring: str = "float"
  dims_per_block: int = 2
  aq_threshold: float = 0.2
  reorder_k: int = 100
  spherical: bool = True
  training_iterations: int = 10


def scann_params_for(n: int, **overrides) -> ScannParams:
  """Defaults from corpus size; `overrides` with a non-None value replace them.

  Below 20k vectors, brute force is cheap and exact. Above, ~sqrt(N) leaves, 2% of them searched
  (never fewer than 16), int8 scoring and exact re-ranking of the best 40 candidates. On the
  1M x 384 clustered benchmark this builds in 35-80 s (32 CPU-s) on 2 cores at recall@10 0.98;
  searching 5 leaves with 20 re-ranked trades recall 0.955 for ~4x the queries/s (see
  benchmarks/RESULTS.md).
  """
  if n < 20_000:
    p = ScannParams(num_leaves=0, scoring="float")
  else:
    leaves = int(round(math.sqrt(n)))
    p = ScannParams(num_leaves=leaves, num_leaves_to_search=max(16, leaves // 50),
                    training_sample_size=min(n, max(50_000, 50 * leaves)), scoring="int8",
                    reorder_k=40)
  p = dataclasses.replace(p, **{k: v for k, v in overrides.items() if v is not None})
  if p.scoring not in ("int8", "ah", "float"):
    raise ValueError(f"scoring must be 'int8', 'ah' or 'float', got {p.scoring!r}")
  return p


def _as_queries(queries: np.ndarray) -> np.ndarray:
  q = np.ascontiguousarray(queries, np.float32)
  if q.ndim != 2:
    raise ValueError(f"queries must be [Q, D], got shape {q.shape}")
  return q


class ExactIndex:
  """Brute-force inner product in corpus chunks (bounded memory), top-k by argpartition."""
  backend = "exact"

  def __init__(self, embeddings: np.ndarray, chunk_rows: int = 262_144):
    self.emb = np.ascontiguousarray(embeddings, np.float32)  # [N, D]
    self.chunk_rows = chunk_rows

  def __len__(self) -> int:
    return self.emb.shape[0]

  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = _as_queries(queries)
    k = min(k, len(self))
    best_s = np.full((q.shape[0], 0), -np.inf, np.float32)
    best_i = np.zeros((q.shape[0], 0), np.int64)
    for s in range(0, len(self), self.chunk_rows):
      scores = q @ self.emb[s:s + self.chunk_rows].T  # [Q, chunk]
      kk = min(k, scores.shape[1])
      top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
      cand_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], 1)
      cand_i = np.concatenate([best_i, top + s], 1)
      keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
      best_s, best_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
    return best_s, best_i

  def save(self, directory: Path) -> None:
    """Nothing beyond the embeddings, which the index directory already holds."""


def rerank_exact(queries: np.ndarray, emb: np.ndarray, cand: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Exact inner products of candidate rows [Q, C] (-1 = none) -> best k (scores, rows)."""
  valid = cand >= 0
  scores = np.einsum("qd,qcd->qc", queries, emb[np.where(valid, cand, 0)])  # [Q, C]
  scores = np.where(valid, scores, -np.inf).astype(np.float32)
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  top = np.take_along_axis(scores, order, 1)
  return top, np.where(np.isfinite(top), np.take_along_axis(cand, order, 1), -1)


class ScannIndex:
  """ScaNN searcher. With int8 scoring the exact re-ranking is done here over the float
  embeddings (ScaNN 1.4 cannot serialize an int8 searcher that re-ranks itself); with AH,
  ScaNN re-ranks internally."""
  backend = "scann"

  def __init__(self, searcher, params: ScannParams, n: int, emb: np.ndarray | None = None):
    self.searcher, self.params, self.n, self.emb = searcher, params, n, emb
    if params.scoring == "int8" and params.reorder_k and emb is None:
      raise ValueError("int8 scoring with re-ranking needs the float embeddings")

  @classmethod
  def build(cls, embeddings: np.ndarray, params: ScannParams, k: int = 10,
            threads: int = 0) -> "ScannIndex":
    import scann  # pylint: disable=g-import-not-at-top
    from scann.scann_ops.py.scann_builder import ReorderType  # pylint: disable=g-import-not-at-top
    db = np.ascontiguousarray(embeddings, np.float32)
    b = scann.scann_ops_pybind.builder(db, k, "dot_product")
    if threads:
      b = b.set_n_training_threads(threads)
    if params.num_leaves:
      b = b.tree(num_leaves=params.num_leaves, num_leaves_to_search=params.num_leaves_to_search,
                 training_sample_size=min(params.training_sample_size, len(db)),
                 spherical=params.spherical, training_iterations=params.training_iterations)
    if params.scoring == "ah":
      b = b.score_ah(params.dims_per_block, anisotropic_quantization_threshold=params.aq_threshold,
                     training_sample_size=min(params.training_sample_size, len(db)))
      b = b.reorder(params.reorder_k)
    elif params.scoring == "int8":
      b = b.score_brute_force(ReorderType.INT8)
    else:
      b = b.score_brute_force()
    return cls(b.build(), params, len(db), db if params.scoring == "int8" else None)

  def __len__(self) -> int:
    return self.n

  def search(self, queries: np.ndarray, k: int, leaves_to_search: int | None = None,
             reorder_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`leaves_to_search` / `reorder_k` override the build-time settings for this call."""
    q = _as_queries(queries)
    k = min(k, self.n)
    reorder = self.params.reorder_k if reorder_k is None else reorder_k
    leaves = leaves_to_search if self.params.num_leaves else None
    # ScaNN parallelises over query batches: split so that every core gets work.
    batch = int(min(256, max(16, -(-len(q) // (os.cpu_count() or 1)))))
    if self.params.scoring == "int8" and reorder > k and self.emb is not None:
      cand, _ = self.searcher.search_batched_parallel(
          q, final_num_neighbors=min(reorder, self.n), leaves_to_search=leaves, batch_size=batch)
      return rerank_exact(q, self.emb, np.asarray(cand, np.int64), k)
    pre = max(reorder, k) if self.params.scoring == "ah" else None
    rows, scores = self.searcher.search_batched_parallel(
        q, final_num_neighbors=k, pre_reorder_num_neighbors=pre, leaves_to_search=leaves,
        batch_size=batch)
    return np.asarray(scores, np.float32), np.asarray(rows, np.int64)

  def save(self, directory: Path) -> None:
    d = Path(directory) / SCANN_DIR
    d.mkdir(parents=True, exist_ok=True)
    self.searcher.serialize(str(d), relative_path=True)


def build_index(embeddings: np.ndarray, backend: str, params: ScannParams | None = None
                ) -> VectorIndex:
  if backend == "exact":
    return ExactIndex(embeddings)
  if backend == "scann":
    return ScannIndex.build(embeddings, params or scann_params_for(len(embeddings)))
  raise ValueError(f"unknown index backend {backend!r}; use 'scann' or 'exact'")


def save_index(index: VectorIndex, directory: str | Path) -> None:
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  index.save(directory)
  meta = {"backend": index.backend, "n": len(index)}
  if isinstance(index, ScannIndex):
    meta["scann"] = dataclasses.asdict(index.params)
  (directory / INDEX_META).write_text(json.dumps(meta, indent=1))


def load_index(directory: str | Path, embeddings_loader) -> VectorIndex:
  """`embeddings_loader()` is called for the exact backend and int8 ScaNN (for re-ranking)."""
  directory = Path(directory)
  meta = json.loads((directory / INDEX_META).read_text())
  if meta["backend"] == "exact":
    return ExactIndex(embeddings_loader())
  if meta["backend"] == "scann":
    import scann  # pylint: disable=g-import-not-at-top
    params = ScannParams(**meta["scann"])
    searcher = scann.scann_ops_pybind.load_searcher(str(directory / SCANN_DIR))
    emb = embeddings_loader() if params.scoring == "int8" and params.reorder_k else None
    return ScannIndex(searcher, params, int(meta["n"]), emb)
  raise ValueError(f"{directory / INDEX_META}: unknown backend {meta['backend']!r}")
