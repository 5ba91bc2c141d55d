"""One-token decode attention against the KV cache as a single Pallas (Triton) kernel.

Why: at decode, XLA lowers attention over the cache to several small kernels per layer (scores,
softmax reductions, weighted sum), and small kernels are where a 1.5B decode step at batch 1
spends half its time on an H100 (1.19 of 2.34 ms; benchmarks/RESULTS.md); XLA also reads the whole
cache, filled or not. This kernel does one layer's attention in one launch, split-K:
program (row b, kv head h, key block j) reads keys [j*blk, (j+1)*blk) of that head straight from
the cache layout [B, S, K, Dh] (no transpose copy), skips blocks past the row's length, and writes
a partial (max, sum, weighted values); a few XLA ops then merge the blocks (flash-decoding).

`decode_attend_write` also appends the new token's key and value to the cache: the program whose
key block holds slot `end` (the row's length before this token) attends to the new key from its
input instead of the cache, and stores it there (the cache is an aliased output). This replaces
the model's two XLA scatters a layer into the cache (~130-140 us of a 1.5B decode step on an H200
at batch 1 and 64; benchmarks/RESULTS.md). Measured at batch 1 (two rows): +3% decode tokens/s;
batch 64 is not measured yet, so the model uses it up to WRITE_MAX_ROWS rows only.

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
WRITE_MAX_ROWS = 8                 # rows up to which the model appends k/v inside the kernel


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


def _partials(load_kv, q_ref, o_ref, m_ref, l_ref, *, start, n, blk: int, scale: float):
  """One key block's flash-decoding partial for the 16 query rows: o [16, Dh] (unnormalised
  weighted values), m [16] (max score), l [16] (sum of exp(score - m)). load_kv(idx) gives the
  block's keys and values [blk, Dh]; a block past the row's length n writes the neutral partial
  (0, -1e30, 0) without reading them."""
  idx = start + jnp.arange(blk)

  @pl.when(start < n)
  def _():
    k, v = load_kv(idx)
    s = jnp.dot(q_ref[...], k.T, preferred_element_type=jnp.float32) * scale  # [16, blk]
    s = jnp.where((idx < n)[None, :], s, _NEG)
    m = jnp.max(s, axis=1)                                                  # [16]
    p = jnp.exp(s - m[:, None])
    o_ref[...] = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    m_ref[...] = m
    l_ref[...] = jnp.sum(p, axis=1)

  @pl.when(start >= n)
  def _():
    o_ref[...] = jnp.zeros(o_ref.shape, jnp.float32)
    m_ref[...] = jnp.full(m_ref.shape, _NEG, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)


def _kernel(len_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, *, scale: float, blk: int):
  """len_ref [] int32; q_ref [16, Dh]; k_ref/v_ref [blk, Dh]; o_ref [16, Dh] f32; m/l [16] f32."""
  _partials(lambda idx: (k_ref[...], v_ref[...]), q_ref, o_ref, m_ref, l_ref,
            start=pl.program_id(2) * blk, n=len_ref[...], blk=blk, scale=scale)


def _kernel_write(end_ref, q_ref, kn_ref, vn_ref, k_ref, v_ref, o_ref, m_ref, l_ref, ko_ref,
                  vo_ref, *, scale: float, blk: int):
  """As _kernel with the new token at slot end_ref[] (keys < end are the cache's): kn_ref/vn_ref
  [1, Dh] its key/value in the cache dtype; ko_ref/vo_ref [blk, Dh] alias k_ref/v_ref's buffers.
  The stale slot's load may race with the store; it is replaced by kn/vn either way."""
  start = pl.program_id(2) * blk
  end = end_ref[...]

  def load_kv(idx):
    new = (idx == end)[:, None]
    return (jnp.where(new, kn_ref[...], k_ref[...]), jnp.where(new, vn_ref[...], v_ref[...]))

  _partials(load_kv, q_ref, o_ref, m_ref, l_ref, start=start, n=end + 1, blk=blk, scale=scale)

  @pl.when((start <= end) & (end < start + blk))
  def _():
    ko_ref[pl.ds(end - start, 1), :] = kn_ref[...]
    vo_ref[pl.ds(end - start, 1), :] = vn_ref[...]


def _merge(o, m, l, b, kh, nb, g, h, dh, dtype):
  """Flash-decoding merge of the key blocks' partials -> [B, 1, H, Dh]: weights exp(m_c - max_c
  m_c); skipped blocks have m = -1e30 -> weight 0."""
  o = o.reshape(b, kh, nb, _Q_ROWS, dh)
  m, l = m.reshape(b, kh, nb, _Q_ROWS), l.reshape(b, kh, nb, _Q_ROWS)
  w = jnp.exp(m - jnp.max(m, axis=2, keepdims=True))                      # [B, K, nb, 16]
  num = jnp.sum(o * w[..., None], axis=2)                                  # [B, K, 16, Dh]
  den = jnp.sum(l * w, axis=2)[..., None]
  out = (num / jnp.maximum(den, 1e-30))[:, :, :g]                          # [B, K, G, Dh]
  return out.reshape(b, 1, h, dh).astype(dtype)


def _padded_queries(q, kh):
  b, _, h, dh = q.shape
  qg = q.reshape(b, kh, h // kh, dh)
  return jnp.pad(qg, ((0, 0), (0, 0), (0, _Q_ROWS - h // kh), (0, 0))).reshape(b * kh, _Q_ROWS, dh)


def _partials_io(b: int, kh: int, nb: int, dh: int):
  """(q block spec, partial out specs, partial out shapes) of a grid (row, kv head, key block):
  q [B * K, 16, Dh] in; o [B * K * nb, 16, Dh], m / l [B * K * nb, 16] f32 out."""
  part = lambda i, j, c: ((i * kh + j) * nb + c, 0)
  q_spec = pl.BlockSpec((None, _Q_ROWS, dh), lambda i, j, c: (i * kh + j, 0, 0))
  specs = [pl.BlockSpec((None, _Q_ROWS, dh), lambda i, j, c: part(i, j, c) + (0,)),
           pl.BlockSpec((None, _Q_ROWS), part), pl.BlockSpec((None, _Q_ROWS), part)]
  shapes = [jax.ShapeDtypeStruct((b * kh * nb, _Q_ROWS, dh), jnp.float32),
            jax.ShapeDtypeStruct((b * kh * nb, _Q_ROWS), jnp.float32),
            jax.ShapeDtypeStruct((b * kh * nb, _Q_ROWS), jnp.float32)]
  return q_spec, specs, shapes


def _compiler_params(interpret: bool) -> dict:
  if interpret:
    return {}
  from jax.experimental.pallas import triton as plgpu
  return {"compiler_params": plgpu.CompilerParams(num_warps=4, num_stages=2)}


@functools.partial(jax.jit, static_argnames=("interpret",))
def decode_attend_write(q, k_new, v_new, k_cache, v_cache, end, *, interpret: bool = False):
  """Append one token to the cache and attend over it, in one kernel. q [B, 1, H, Dh]; k_new/
  v_new [B, 1, K, Dh] and the caches [B, S, K, Dh] in one dtype (q's); end [B] int32: the slot
  of the new token (slots < end hold the row's keys; end >= S: the token is dropped and all S
  slots attended, as the scatter with mode="drop" and lengths end + 1 did).
  Returns (out [B, 1, H, Dh], k_cache, v_cache) with the caches updated in place."""
  b, _, h, dh = q.shape
  s, kh = k_cache.shape[1], k_cache.shape[2]
  blk = block_size(s)
  nb = s // blk
  k3, v3 = k_cache.reshape(b, s, kh * dh), v_cache.reshape(b, s, kh * dh)
  kv_spec = pl.BlockSpec((None, blk, dh), lambda i, j, c: (i, c, j))
  new_spec = pl.BlockSpec((None, 1, dh), lambda i, j, c: (i * kh + j, 0, 0))
  q_spec, part_specs, part_shapes = _partials_io(b, kh, nb, dh)
  o, m, l, k3, v3 = pl.pallas_call(
      functools.partial(_kernel_write, scale=dh ** -0.5, blk=blk),
      grid=(b, kh, nb),
      in_specs=[pl.BlockSpec((None,), lambda i, j, c: (i,)), q_spec, new_spec, new_spec,
                kv_spec, kv_spec],
      out_specs=part_specs + [kv_spec, kv_spec],
      out_shape=part_shapes + [jax.ShapeDtypeStruct(k3.shape, k3.dtype),
                               jax.ShapeDtypeStruct(v3.shape, v3.dtype)],
      input_output_aliases={4: 3, 5: 4},
      interpret=interpret, name="decode_attention_write", **_compiler_params(interpret),
  )(end.astype(jnp.int32), _padded_queries(q, kh), k_new.reshape(b * kh, 1, dh),
    v_new.reshape(b * kh, 1, dh), k3, v3)
  out = _merge(o, m, l, b, kh, nb, h // kh, h, dh, q.dtype)
  return out, k3.reshape(k_cache.shape), v3.reshape(v_cache.shape)


@functools.partial(jax.jit, static_argnames=("interpret",))
def decode_attend(q, k, v, lengths, *, interpret: bool = False):
  """q [B, 1, H, Dh], k/v [B, S, K, Dh] (the cache), lengths [B] int32 (slots < length are
  attended; >= 1) -> [B, 1, H, Dh] in q's dtype."""
  b, _, h, dh = q.shape
  s, kh = k.shape[1], k.shape[2]
  g = h // kh
  blk = block_size(s)
  nb = s // blk
  qg = _padded_queries(q, kh)
  k3, v3 = k.reshape(b, s, kh * dh), v.reshape(b, s, kh * dh)     # free: heads side by side
  kv_spec = pl.BlockSpec((None, blk, dh), lambda i, j, c: (i, c, j))
  q_spec, part_specs, part_shapes = _partials_io(b, kh, nb, dh)
  o, m, l = pl.pallas_call(
      functools.partial(_kernel, scale=dh ** -0.5, blk=blk),
      grid=(b, kh, nb),
      in_specs=[pl.BlockSpec((None,), lambda i, j, c: (i,)), q_spec, kv_spec, kv_spec],
      out_specs=part_specs, out_shape=part_shapes,
      interpret=interpret, name="decode_attention", **_compiler_params(interpret),
  )(lengths.astype(jnp.int32), qg, k3, v3)
  return _merge(o, m, l, b, kh, nb, g, h, dh, q.dtype)
