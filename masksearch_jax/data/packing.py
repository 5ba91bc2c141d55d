"""Greedy first-fit packing of variable-length examples into fixed rows.

Packing several short examples into one row keeps the accelerator busy on
real tokens instead of padding. Each example keeps its own segment id (1, 2,
... within a row; 0 = padding) and positions that restart at 0, so the model's
segment-aware attention mask stops tokens attending across examples and
rotary positions match those of the unpacked example.

Pure numpy, no grain/jax: the pipeline calls it on a window of examples.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from absl import logging
import numpy as np

OVERLONG_MODES = ("truncate", "drop")
FIELDS = ("tokens", "loss_mask", "segment_ids", "positions")


@dataclasses.dataclass
class PackStats:
  """Counts from one or more `pack_examples` calls (mutable, summed)."""
  examples: int = 0  # examples placed in a row
  truncated: int = 0  # overlong examples cut to seq_len
  dropped: int = 0  # overlong examples skipped (overlong="drop")
  empty: int = 0  # zero-length examples skipped
  tokens_lost: int = 0  # tokens removed by truncation or dropping
  rows: int = 0
  real_tokens: int = 0  # non-padding tokens in the emitted rows

  def add(self, other: "PackStats") -> None:
    for f in dataclasses.fields(self):
      setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _check_example(i: int, tokens, loss_mask) -> tuple[np.ndarray, np.ndarray]:
  tokens = np.asarray(tokens)
  loss_mask = np.asarray(loss_mask)
  if tokens.ndim != 1 or loss_mask.ndim != 1:
    raise ValueError(
        f"example {i}: tokens and loss_mask must be 1-D, got shapes "
        f"{tokens.shape} and {loss_mask.shape}")
  if tokens.shape != loss_mask.shape:
    raise ValueError(
        f"example {i}: tokens has length {tokens.shape[0]} but loss_mask has "
        f"length {loss_mask.shape[0]}")
  return tokens.astype(np.int32), loss_mask.astype(np.int32)


def pack_examples(
    examples: Sequence[tuple[np.ndarray, np.ndarray]],
    seq_len: int,
    *,
    overlong: str = "truncate",
    pad_id: int = 0,
) -> tuple[dict[str, np.ndarray], PackStats]:
  """Packs `(tokens, loss_mask)` pairs into rows of length `seq_len`.

  First fit in input order: each example goes into the first open row with
  room for it, else a new row. Examples longer than `seq_len` are truncated
  (keeping the first `seq_len` tokens) or dropped, and counted in the stats.

  Returns:
    rows: dict of int32 arrays, each [rows, seq_len]: tokens (pad_id where
      empty), loss_mask (0 on padding), segment_ids (1.. per example within a
      row, 0 = padding), positions (0.. within each example, 0 on padding).
    stats: what happened, for logging.
  """
  if seq_len <= 0:
    raise ValueError(f"seq_len must be positive, got {seq_len}")
  if overlong not in OVERLONG_MODES:
    raise ValueError(f"overlong must be one of {OVERLONG_MODES}, got {overlong!r}")
  stats = PackStats()
  placed: list[list[tuple[np.ndarray, np.ndarray]]] = []  # per row
  free: list[int] = []  # remaining room per row
  for i, (tokens, loss_mask) in enumerate(examples):
    tokens, loss_mask = _check_example(i, tokens, loss_mask)
    n = tokens.shape[0]
    if n == 0:
      stats.empty += 1
      continue
    if n > seq_len:
      stats.tokens_lost += n - seq_len if overlong == "truncate" else n
      if overlong == "drop":
        stats.dropped += 1
        continue
      stats.truncated += 1
      tokens, loss_mask, n = tokens[:seq_len], loss_mask[:seq_len], seq_len
    for r, room in enumerate(free):
      if room >= n:
        break
    else:
      r = len(free)
      placed.append([])
      free.append(seq_len)
    placed[r].append((tokens, loss_mask))
    free[r] -= n
    stats.examples += 1
    stats.real_tokens += n

  num_rows = len(placed)
  stats.rows = num_rows
  out = {
      "tokens": np.full((num_rows, seq_len), pad_id, np.int32),
      "loss_mask": np.zeros((num_rows, seq_len), np.int32),
      "segment_ids": np.zeros((num_rows, seq_len), np.int32),
      "positions": np.zeros((num_rows, seq_len), np.int32),
  }
  for r, row in enumerate(placed):
    start = 0
    for seg, (tokens, loss_mask) in enumerate(row, start=1):
      end = start + tokens.shape[0]
      out["tokens"][r, start:end] = tokens
      out["loss_mask"][r, start:end] = loss_mask
      out["segment_ids"][r, start:end] = seg
      out["positions"][r, start:end] = np.arange(end - start, dtype=np.int32)
      start = end
  if stats.truncated or stats.dropped:
    logging.log_every_n(
        logging.WARNING,
        "packing: %d example(s) longer than seq_len=%d were %s (%d tokens "
        "lost) in this window; raise seq_len or filter the data.", 100,
        stats.truncated + stats.dropped, seq_len,
        "truncated" if overlong == "truncate" else "dropped",
        stats.tokens_lost)
  return out, stats
