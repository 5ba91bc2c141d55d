"""Shared benchmark helpers: timing, FLOP counts, hardware peaks, table printing."""
from __future__ import annotations

import json
import statistics
import time
from typing import Callable

import jax

from masksearch_jax.model.config import Qwen2Config
from masksearch_jax.train import flops

# H100 SXM datasheet dense bf16 peak (MFU is reported against this, as MaxText does) and the
# copy bandwidth measured on the lent H100 (decode roofline).
PEAK_FLOPS = {"gpu": 989e12, "tpu": 197e12, "cpu": 1e12}
HBM_BYTES_PER_S = {"gpu": 3.02e12}


def train_flops_per_step(cfg: Qwen2Config, batch: int, seq: int) -> float:
  """Model FLOPs of one training step: the trainer's own count (train/flops.py), times tokens."""
  return flops.train_flops_per_token(cfg, seq) * batch * seq


def time_fn(fn: Callable[[], object], warmup: int = 2, iters: int = 10) -> list[float]:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  out = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - t0)
  return out


def median(xs):
  return statistics.median(xs)


def print_table(rows: list[dict], cols: list[str]) -> None:
  widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
  print(" | ".join(c.ljust(widths[c]) for c in cols))
  print("-|-".join("-" * widths[c] for c in cols))
  for r in rows:
    print(" | ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))


def write_json(path: str | None, payload) -> None:
  if path:
    with open(path, "w") as f:
      json.dump(payload, f, indent=2, default=str)
