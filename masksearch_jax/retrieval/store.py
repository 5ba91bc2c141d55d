"""On-disk passage store: row number -> Passage, without holding the corpus in memory.

Layout in a directory: `passages.jsonl` (one {"id","title","text"} per row, in index row order) and
`offsets.npy` (int64 [N + 1] byte offsets). Lookups are `os.pread`s, so they are thread-safe and
cost one small read per hit — the server can answer from a 21M-passage store with a few MB of RAM.
"""
from __future__ import annotations

import json
import os
import weakref
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from masksearch_jax.retrieval.corpus import Passage

PASSAGES = "passages.jsonl"
OFFSETS = "offsets.npy"


def write_store(directory: str | Path, passages: Iterable[Passage]) -> int:
  """Writes the store atomically (offsets last, so a present offsets file means complete)."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  offsets = [0]
  tmp = directory / (PASSAGES + ".tmp")
  with open(tmp, "wb") as f:
    for p in passages:
      row = json.dumps({"id": p.id, "title": p.title, "text": p.text}, ensure_ascii=False)
      f.write(row.encode("utf-8") + b"\n")
      offsets.append(f.tell())
  os.replace(tmp, directory / PASSAGES)
  np.save(directory / (OFFSETS + ".tmp.npy"), np.asarray(offsets, np.int64))
  os.replace(directory / (OFFSETS + ".tmp.npy"), directory / OFFSETS)
  return len(offsets) - 1


def store_exists(directory: str | Path) -> bool:
  d = Path(directory)
  return (d / PASSAGES).exists() and (d / OFFSETS).exists()


class PassageStore:
  """Read side of the store; `get(rows)` returns passages in the order of `rows`."""

  def __init__(self, directory: str | Path):
    directory = Path(directory)
    if not store_exists(directory):
      raise FileNotFoundError(f"no passage store in {directory} (need {PASSAGES} and {OFFSETS})")
    self._offsets = np.load(directory / OFFSETS, mmap_mode="r")
    self._path = directory / PASSAGES
    self._fd = os.open(self._path, os.O_RDONLY)
    self._finalizer = weakref.finalize(self, os.close, self._fd)

  def __len__(self) -> int:
    return int(self._offsets.shape[0]) - 1

  def close(self) -> None:
    self._finalizer()

  def get(self, rows: Sequence[int]) -> list[Passage]:
    n = len(self)
    out = []
    for r in rows:
      r = int(r)
      if not 0 <= r < n:
        raise IndexError(f"row {r} out of range [0, {n}) in {self._path}")
      start, end = int(self._offsets[r]), int(self._offsets[r + 1])
      obj = json.loads(os.pread(self._fd, end - start, start))
      out.append(Passage(obj["id"], obj["title"], obj["text"]))
    return out

  def iter_range(self, start: int, stop: int) -> list[Passage]:
    return self.get(range(start, min(stop, len(self))))
