"""Rotary-embedding frequencies, one definition for the model and every kernel that applies RoPE
itself (they must agree bit for bit with `qwen2.rope`)."""
from __future__ import annotations

import jax.numpy as jnp


def inv_freq(head_dim: int, theta: float) -> jnp.ndarray:
  """[head_dim / 2] f32: 1 / theta^(2i / head_dim), as transformers' Qwen2 computes them."""
  return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
