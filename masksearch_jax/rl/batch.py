"""Rollouts -> the DAPO training batch (host-side NumPy, static shapes).

A `Rollout` row holds prompt + policy tokens + spliced `<information>` tokens in [0, length) and
padding after. Training predicts token t+1 from position t, so the batch is the rollout shifted
by one:

  inputs[b, t]       = tokens[b, t]
  targets[b, t]      = tokens[b, t + 1]                  (pad in the last column)
  loss_mask[b, t]    = rollout.loss_mask[b, t + 1]       1 only where the POLICY sampled the target;
                                                         prompt, observations and pad stay 0
  sampler_logp[b, t] = rollout.logprobs[b, t + 1]        kept only for the mismatch metric
  advantages[b]      = group-normalised reward of row b  (broadcast over loss tokens by dapo_loss)

Rows are right-padded, so under a causal mask the padding never changes a live position's output;
no segment ids are needed. `old_logp` is NOT the sampler's: the trainer computes it with its own
forward pass before the update (train/rl.py `rl_update`, on device; `with_old_logp` attaches
host values), so the ratio starts at exactly 1 whatever the sampler's numerics.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from masksearch_jax.rollout.types import Rollout

__all__ = ["FIELDS", "from_rollout", "select_rows", "concat", "num_loss_tokens", "with_old_logp"]

FIELDS = ("inputs", "targets", "loss_mask", "sampler_logp", "advantages")
Batch = dict[str, np.ndarray]


def from_rollout(rollout: Rollout, advantages: np.ndarray | Sequence[float] | None = None,
                 seq_len: int | None = None, pad_id: int = 0) -> Batch:
  """A Rollout [B, T] -> Batch of [B, seq_len] arrays (seq_len defaults to T).

  seq_len < T is allowed only if no live token is cut (raises naming the row otherwise): silently
  truncating would train on responses whose reward was computed on text the loss never sees.
  advantages: [B] (None -> zeros, filled in later with `concat`/assignment).
  """
  tokens = np.asarray(rollout.tokens, np.int32)                          # [B, T]
  mask = np.asarray(rollout.loss_mask, np.int32)                         # [B, T]
  lps = np.asarray(rollout.logprobs, np.float32)                         # [B, T]
  b, t = tokens.shape
  lengths = np.asarray(rollout.lengths)
  seq_len = t if seq_len is None else int(seq_len)
  if seq_len < 2:
    raise ValueError(f"from_rollout: seq_len={seq_len} must be >= 2")
  too_long = np.flatnonzero(lengths > seq_len)
  if too_long.size:
    r = int(too_long[0])
    raise ValueError(f"from_rollout: row {r} has {int(lengths[r])} tokens > seq_len={seq_len}; "
                     "raise seq_len to the rollout buffer (RolloutConfig.max_len)")
  if mask.shape != (b, t) or lps.shape != (b, t):
    raise ValueError(f"from_rollout: tokens {tokens.shape}, loss_mask {mask.shape} and logprobs "
                     f"{lps.shape} must all be [B, T]")
  if b and (mask[:, 0] != 0).any():
    raise ValueError("from_rollout: loss_mask is 1 at position 0, which has no previous token")

  def fit(x: np.ndarray, fill) -> np.ndarray:                            # [B, T] -> [B, seq_len]
    if x.shape[1] >= seq_len:
      return x[:, :seq_len]
    return np.pad(x, ((0, 0), (0, seq_len - x.shape[1])), constant_values=fill)

  live = np.arange(t)[None, :] < lengths[:, None]                        # [B, T]
  tokens = np.where(live, tokens, pad_id).astype(np.int32)
  mask = np.where(live, mask, 0)
  nxt = lambda x, fill: np.concatenate([x[:, 1:], np.full((b, 1), fill, x.dtype)], axis=1)
  adv = np.zeros(b, np.float32) if advantages is None else np.asarray(advantages, np.float32)
  if adv.shape != (b,):
    raise ValueError(f"from_rollout: advantages shape {adv.shape}, expected ({b},)")
  lp_next = nxt(lps, 0.0)
  return {
      "inputs": fit(tokens, pad_id),                                     # [B, S]
      "targets": fit(nxt(tokens, pad_id), pad_id),                       # [B, S]
      "loss_mask": fit(nxt(mask, 0), 0).astype(np.int32),                # [B, S]
      "sampler_logp": fit(np.where(nxt(mask, 0) > 0, lp_next, 0.0), 0.0).astype(np.float32),
      "advantages": adv,                                                 # [B]
  }


def select_rows(batch: Mapping[str, np.ndarray], rows: Sequence[int] | np.ndarray) -> Batch:
  idx = np.asarray(rows, np.int64)
  return {k: np.asarray(v)[idx] for k, v in batch.items()}


def concat(batches: Sequence[Mapping[str, np.ndarray]]) -> Batch:
  """Row-concatenation; all batches must have the same fields and widths."""
  if not batches:
    raise ValueError("concat: no batches")
  keys = set(batches[0])
  for i, bt in enumerate(batches):
    if set(bt) != keys:
      raise ValueError(f"concat: batch {i} has fields {sorted(bt)}, expected {sorted(keys)}")
  return {k: np.concatenate([np.asarray(bt[k]) for bt in batches], axis=0) for k in batches[0]}


def num_loss_tokens(batch: Mapping[str, np.ndarray]) -> int:
  return int(np.asarray(batch["loss_mask"]).sum())


def with_old_logp(batch: Mapping[str, np.ndarray], old_logp: np.ndarray) -> Batch:
  """Adds the trainer's own pre-update log-probs [N, S] (0 off the loss mask)."""
  old = np.asarray(old_logp, np.float32)
  if old.shape != np.asarray(batch["targets"]).shape:
    raise ValueError(f"with_old_logp: shape {old.shape} != targets {batch['targets'].shape}")
  return {**batch, "old_logp": np.where(np.asarray(batch["loss_mask"]) > 0, old, 0.0)}
