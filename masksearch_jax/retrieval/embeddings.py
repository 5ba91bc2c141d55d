"""Corpus encoding into a resumable tensorstore (zarr) array.

Encoding 21M passages takes hours, so rows are written block by block and a small
`progress.json` records how many rows are durable; a rerun with the same store and encoder
continues from there. The progress file is written only after a block's write has completed, so
a crash can at worst redo one block, never leave a hole.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import tensorstore as ts
from absl import logging

from masksearch_jax.retrieval.encoder import Encoder
from masksearch_jax.retrieval.store import PassageStore

ARRAY = "embeddings.zarr"
PROGRESS = "progress.json"


def _spec(directory: Path) -> dict:
  return {"driver": "zarr", "kvstore": {"driver": "file", "path": str(directory / ARRAY)}}


def passage_text(title: str, text: str) -> str:
  """What gets embedded: the wiki-18 `contents` string, as FlashRAG / Search-R1 indexes do."""
  return f'"{title}"\n{text}' if title else text


def _write_progress(directory: Path, progress: dict) -> None:
  tmp = directory / (PROGRESS + ".tmp")
  tmp.write_text(json.dumps(progress))
  os.replace(tmp, directory / PROGRESS)


def encode_store(encoder: Encoder, store: PassageStore, directory: str | Path, *,
                 block_rows: int = 8192, max_blocks: int | None = None,
                 on_block: Callable[[int, int], None] | None = None) -> int:
  """Encodes every passage of `store` into `directory/embeddings.zarr` ([N, H] float32).

  Returns the number of rows done. `max_blocks` stops early (tests use it to simulate an
  interrupted run). A progress file made by a different encoder config or corpus size is an
  error rather than a silent mix of embeddings.
  """
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  n, dim = len(store), encoder.dim
  ident = {"n": n, "dim": dim, "encoder": encoder.cfg.to_json()}
  prog_path = directory / PROGRESS
  if prog_path.exists():
    prog = json.loads(prog_path.read_text())
    old = {k: prog.get(k) for k in ident}
    if old != ident:
      raise ValueError(f"{prog_path} was written for {old}, not {ident}; "
                       "delete the directory to re-encode")
    arr = ts.open(_spec(directory), open=True).result()
    done = int(prog["done"])
    logging.info("resuming %s at row %d / %d", directory, done, n)
  else:
    arr = ts.open(_spec(directory), create=True, delete_existing=True, dtype=ts.float32,
                  shape=[n, dim],
                  chunk_layout=ts.ChunkLayout(chunk_shape=[min(block_rows, max(n, 1)), dim])
                  ).result()
    done = 0
    _write_progress(directory, {**ident, "done": 0})
  blocks, start = 0, done
  t0 = time.perf_counter()
  while done < n and (max_blocks is None or blocks < max_blocks):
    stop = min(done + block_rows, n)
    texts = [passage_text(p.title, p.text) for p in store.iter_range(done, stop)]
    emb = encoder.encode(texts, "passage")  # [rows, H]
    arr[done:stop].write(emb).result()
    done, blocks = stop, blocks + 1
    _write_progress(directory, {**ident, "done": done})
    if on_block:
      on_block(done, n)
    rate = (done - start) / max(time.perf_counter() - t0, 1e-9)
    logging.info("encoded %d / %d passages (%.0f/s this run)", done, n, rate)
  return done


def is_complete(directory: str | Path) -> bool:
  p = Path(directory) / PROGRESS
  if not p.exists():
    return False
  prog = json.loads(p.read_text())
  return int(prog["done"]) == int(prog["n"])


def read_embeddings(directory: str | Path) -> np.ndarray:
  """All rows as float32 [N, H]; refuses an incomplete encoding."""
  directory = Path(directory)
  if not is_complete(directory):
    raise ValueError(f"embeddings in {directory} are incomplete; rerun the encoding to resume")
  return np.asarray(ts.open(_spec(directory), open=True).result().read().result(), np.float32)
