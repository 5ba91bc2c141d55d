"""In-process dense retriever: encoder + vector index + passage store, loaded from one directory.

Index directory layout (written by `build_index.py`):
  retriever.json         encoder config (+ whether it is the embedded default model)
  index.json, scann/     the vector index (see index.py)
  passages.jsonl, offsets.npy   the passage store (see store.py)
  embeddings.zarr/, progress.json   the corpus embeddings (see embeddings.py)
"""
from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from masksearch_jax.retrieval import embeddings as emb_lib
from masksearch_jax.retrieval import index as index_lib
from masksearch_jax.retrieval.encoder import Encoder, EncoderConfig, default_model_dir
from masksearch_jax.retrieval.store import PassageStore
from masksearch_jax.retrieval.types import Hit

RETRIEVER_META = "retriever.json"


def write_retriever_meta(directory: str | Path, cfg: EncoderConfig) -> None:
  try:
    is_default = Path(cfg.model_dir).resolve() == default_model_dir().resolve()
  except ImportError:
    is_default = False
  meta = {"encoder": cfg.to_json(), "default_model": is_default}
  (Path(directory) / RETRIEVER_META).write_text(json.dumps(meta, indent=1))


def read_encoder_config(directory: str | Path, model_dir: str | None = None,
                        batch_size: int | None = None, dtype: str | None = None) -> EncoderConfig:
  """The encoder the index was built with; the model may have moved (other venv or host), so the
  embedded default is re-located and `model_dir` overrides the stored path."""
  path = Path(directory) / RETRIEVER_META
  if not path.exists():
    raise FileNotFoundError(f"{path} missing: not an index directory made by build_index")
  meta = json.loads(path.read_text())
  kw = dict(meta["encoder"])
  if model_dir:
    kw["model_dir"] = model_dir
  elif meta.get("default_model"):
    kw["model_dir"] = str(default_model_dir())
  elif not Path(kw["model_dir"]).exists():
    raise FileNotFoundError(f"{path}: model_dir {kw['model_dir']} not found; pass --model_dir")
  if batch_size:
    kw["batch_size"] = batch_size
  if dtype:
    kw["dtype"] = dtype
  return EncoderConfig(**kw)


class DenseRetriever:
  """Implements `types.Retriever`: one batched encode + one batched index search per call."""

  def __init__(self, encoder: Encoder, index: index_lib.VectorIndex, store: PassageStore):
    if len(index) != len(store):
      raise ValueError(f"index has {len(index)} rows but passage store {len(store)}")
    self.encoder, self.index, self.store = encoder, index, store
    self._lock = threading.Lock()  # the jitted encoder is shared by server threads

  @classmethod
  def load(cls, directory: str | Path, model_dir: str | None = None,
           batch_size: int | None = None, dtype: str | None = None) -> "DenseRetriever":
    directory = Path(directory)
    cfg = read_encoder_config(directory, model_dir, batch_size, dtype)
    index = index_lib.load_index(directory, lambda: emb_lib.read_embeddings(directory))
    return cls(Encoder(cfg), index, PassageStore(directory))

  def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
    scores, rows = self.index.search(vectors, k)  # [Q, k] each
    out = []
    for srow, rrow in zip(scores, rows):
      keep = rrow >= 0  # ScaNN pads with -1 when fewer than k candidates exist
      passages = self.store.get(rrow[keep])
      out.append([Hit(p.id, p.title, p.text, float(s)) for p, s in zip(passages, srow[keep])])
    return out

  def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
    if isinstance(queries, str):
      raise TypeError("queries must be a sequence of strings, not one string")
    if k < 1:
      raise ValueError(f"k must be >= 1, got {k}")
    if not queries:
      return []
    with self._lock:
      vectors = self.encoder.encode(list(queries), "query")  # [Q, H]
    return self.search_vectors(vectors, k)


@dataclasses.dataclass
class StaticRetriever:
  """Test fake with a fixed answer per query (unknown queries get no hits)."""
  answers: dict[str, list[Hit]]

  def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
    return [list(self.answers.get(q, []))[:k] for q in queries]
