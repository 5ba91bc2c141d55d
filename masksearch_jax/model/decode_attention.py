"""One-token decode attention against the KV cache as a single Pallas (Triton) kernel.

Why: at decode, XLA lowers attention over the cache to several small kernels per layer (scores,
softmax reductions, weighted sum), and small kernels are where a 1.5B decode step at batch 1
spends half its time on an H100 (1.19 of 2.34 ms; benchmarks/RESULTS.md); XLA also reads the whole
cache, filled or not. This kernel does one layer's attention in one launch, split-K:
program (row b, kv head h, key block j) reads keys [j*blk, (j+1)*blk) of that head straight from
the cache layout [B, S, K, Dh] (no transpose copy), skips blocks past the row's length, and writes
a partial (max, sum, weighted values); a few XLA ops then merge the blocks (flash-decoding).

Used for `attn_impl="pallas"` when a forward appends exactly one token to a cache; on other
backends than GPU it runs in Pallas interpret mode (tests). Equal to `attention.attend_xla` with
the cache mask (slots < length) up to float rounding.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

_Q_ROWS = 16                       # tl.dot needs >= 16 rows: the G query heads of a group are padded
_NEG = -1e30


def block_size(s: int) -> int | None:
  """Keys per program: the largest of 64/32/16 dividing the cache length (None: unsupported)."""
  for blk in (64, 32, 16):
    if s % blk == 0:
      return blk
  return None


def supported(q_shape, k_shape) -> bool:
  """One query token, head_dim a power of two >= 16, cache length a multiple of 16."""
  _, t, h, dh = q_shape
  _, s, kh, _ = k_shape
  return (t == 1 and h % kh == 0 and h // kh <= _Q_ROWS and dh >= 16 and dh & (dh - 1) == 0
          and block_size(s) is not None)


def _kernel(len_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, *, scale: float, blk: int):
  """len_ref [] int32; q_ref [16, Dh]; k_ref/v_ref [blk, Dh]; o_ref [16, Dh] f32; m/l [16] f32."""
  start = pl.program_id(2) * blk
  n = len_ref[...]

  @pl.when(start < n)
  def _():
    q, k = q_ref[...], k_ref[...]
    s = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * scale        # [16, blk]
    idx = start + jnp.arange(blk)
    s = jnp.where((idx < n)[None, :], s, _NEG)
    m = jnp.max(s, axis=1)                                                  # [16]
    p = jnp.exp(s - m[:, None])
    o_ref[...] = jnp.dot(p.astype(v_ref.dtype), v_ref[...], preferred_element_type=jnp.float32)
    m_ref[...] = m
    l_ref[...] = jnp.sum(p, axis=1)

  @pl.when(start >= n)
  def _():
    o_ref[...] = jnp.zeros(o_ref.shape, jnp.float32)
    m_ref[...] = jnp.full(m_ref.shape, _NEG, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)


@functools.partial(jax.jit, static_argnames=("interpret",))
def decode_attend(q, k, v, lengths, *, interpret: bool = False):
  """q [B, 1, H, Dh], k/v [B, S, K, Dh] (the cache), lengths [B] int32 (slots < length are
  attended; >= 1) -> [B, 1, H, Dh] in q's dtype."""
  b, _, h, dh = q.shape
  s, kh = k.shape[1], k.shape[2]
  g = h // kh
  blk = block_size(s)
  nb = s // blk
  qg = q.reshape(b, kh, g, dh)
  qg = jnp.pad(qg, ((0, 0), (0, 0), (0, _Q_ROWS - g), (0, 0))).reshape(b * kh, _Q_ROWS, dh)
  k3, v3 = k.reshape(b, s, kh * dh), v.reshape(b, s, kh * dh)     # free: heads side by side
  kv_spec = pl.BlockSpec((None, blk, dh), lambda i, j, c: (i, c, j))
  part = lambda i, j, c: ((i * kh + j) * nb + c, 0)
  kwargs = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu
    kwargs["compiler_params"] = plgpu.CompilerParams(num_warps=4, num_stages=2)
  o, m, l = pl.pallas_call(
      functools.partial(_kernel, scale=dh ** -0.5, blk=blk),
      grid=(b, kh, nb),
      in_specs=[pl.BlockSpec((None,), lambda i, j, c: (i,)),
                pl.BlockSpec((None, _Q_ROWS, dh), lambda i, j, c: (i * kh + j, 0, 0)),
                kv_spec, kv_spec],
      out_specs=[pl.BlockSpec((None, _Q_ROWS, dh), lambda i, j, c: part(i, j, c) + (0,)),
                 pl.BlockSpec((None, _Q_ROWS), part), pl.BlockSpec((None, _Q_ROWS), part)],
      out_shape=[jax.ShapeDtypeStruct((b * kh * nb, _Q_ROWS, dh), jnp.float32),
                 jax.ShapeDtypeStruct((b * kh * nb, _Q_ROWS), jnp.float32),
                 jax.ShapeDtypeStruct((b * kh * nb, _Q_ROWS), jnp.float32)],
      interpret=interpret, name="decode_attention", **kwargs,
  )(lengths.astype(jnp.int32), qg, k3, v3)
  # Merge the key blocks: weights exp(m_c - max_c m_c); skipped blocks have m = -1e30 -> 0.
  o = o.reshape(b, kh, nb, _Q_ROWS, dh)
  m, l = m.reshape(b, kh, nb, _Q_ROWS), l.reshape(b, kh, nb, _Q_ROWS)
  w = jnp.exp(m - jnp.max(m, axis=2, keepdims=True))                      # [B, K, nb, 16]
  num = jnp.sum(o * w[..., None], axis=2)                                  # [B, K, 16, Dh]
  den = jnp.sum(l * w, axis=2)[..., None]
  out = (num / jnp.maximum(den, 1e-30))[:, :, :g]                          # [B, K, G, Dh]
  return out.reshape(b, 1, h, dh).astype(q.dtype)
