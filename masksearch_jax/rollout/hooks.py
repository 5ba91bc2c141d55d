"""Logits hooks: jittable edits of the next-token logits inside the decode loop.

A hook sees the engine's buffers (hook(logits [B, V], tokens [B, T], mask [B, T], length [B]))
and returns new logits; it is a static part of the compiled program, so build it once per sampler.
Used for forced decoding (scripted agents in tests, benchmarks with a fixed tool-call pattern).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

_FORCE = -1e9


def forced_tokens(script: np.ndarray):
  """Forces row b's n-th policy token (n = policy tokens so far, counted by the loss mask, so
  observations and prompts do not shift it) to script[b, n]; entries < 0 and n past the script
  leave the model's logits alone. The forced token's log-prob is 0 (probability 1)."""
  table = jnp.asarray(np.asarray(script), jnp.int32)                  # [B, N]

  def hook(logits, tokens, mask, length):
    del tokens, length
    n = jnp.sum(mask, axis=1)                                         # [B]
    want = jnp.take_along_axis(table, jnp.minimum(n, table.shape[1] - 1)[:, None], 1)[:, 0]
    want = jnp.where(n < table.shape[1], want, -1)
    forced = jnp.where(jnp.arange(logits.shape[1])[None] == want[:, None], 0.0, _FORCE)
    return jnp.where((want >= 0)[:, None], forced, logits)

  return hook
