"""The decode KV cache: a plain dict pytree with a per-sequence fill level.

Layout (stacked over layers, so the layer scan can index it):
  k, v: [layers, batch, max_len, kv_heads, head_dim]   (post-RoPE keys)
  or, with per_layer=True (unrolled decode), lists of [batch, max_len, kv_heads, head_dim].
  end:  [batch] int32 — slots [0, end) hold real tokens of that sequence.
A forward over new tokens [B, T] writes them at slots end[b] .. end[b]+T-1 and advances end[b] by
the number of non-padding tokens (segment id != 0). Padding must therefore sit at the *tail* of a
chunk: its slots are overwritten by the next write. Per-sequence `end` is what lets the sampler
splice retrieved passages into some rows while the others keep decoding. Writes past max_len are
dropped (never clamped onto real slots); the sampler budgets lengths so that this never happens.
"""
from __future__ import annotations

import jax.numpy as jnp

from masksearch_jax.model.config import Qwen2Config

Cache = dict

# The sampler's caches hold a multiple of this many slots (slots past its max_len are never
# valid). The Pallas decode attention runs only on cache lengths that its key blocks divide
# (decode_attention.block_size); without the rounding a max_len such as 1144 fell back to the
# generic path, on GPUs cuDNN's one-token kernel, which is slower and does not repeat
# (benchmarks/RESULTS.md, session 25). The kernel never reads slots past a row's end, so the
# extra slots cost memory only (< 128 a row).
CACHE_ALIGN = 128


def aligned_length(max_len: int) -> int:
  """Cache slots for a max_len-token buffer: max_len rounded up to a multiple of CACHE_ALIGN."""
  if max_len < 1:
    raise ValueError(f"max_len={max_len} must be >= 1")
  return -(-max_len // CACHE_ALIGN) * CACHE_ALIGN


def init_cache(cfg: Qwen2Config, batch: int, max_len: int, dtype=jnp.bfloat16,
               per_layer: bool = False) -> Cache:
  """per_layer=True: k and v are lists of [batch, max_len, kv_heads, head_dim] arrays, one buffer
  per layer, for unrolled decoding (each layer's scatter is then in place; slicing a stacked cache
  inside the decode loop copies it). The scan path needs the stacked layout."""
  if per_layer:
    shape = (batch, max_len, cfg.num_kv_heads, cfg.dim_per_head)
    return {"k": [jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)],
            "v": [jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)],
            "end": jnp.zeros((batch,), jnp.int32)}
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.dim_per_head)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
          "end": jnp.zeros((batch,), jnp.int32)}


def cache_bytes(cfg: Qwen2Config, batch: int, max_len: int, itemsize: int = 2) -> int:
  return 2 * cfg.num_layers * batch * max_len * cfg.num_kv_heads * cfg.dim_per_head * itemsize
