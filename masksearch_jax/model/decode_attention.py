"""One-token decode attention against the KV cache as a single Pallas (Triton) kernel.

Why: at decode, XLA lowers attention over the cache to several small kernels per layer (scores,
softmax reductions, weighted sum), and small kernels are where a 1.5B decode step at batch 1
spends half its time on an H100 (1.19 of 2.34 ms; benchmarks/RESULTS.md); XLA also reads the whole
cache, filled or not. This kernel does one layer's attention in one launch, split-K:
program (row b, kv head h, key block j) reads keys [j*blk, (j+1)*blk) of that head straight from
the cache layout [B, S, K, Dh] (no transpose copy), skips blocks past the row's length, and writes
a partial (max, sum, weighted values); a few XLA ops then merge the blocks (flash-decoding).

With many rows (batch x kv heads >= SINGLE_PASS_MIN_PROGRAMS: enough programs to fill the GPU
without splitting the keys) a second kernel does the whole layer in one launch: program (row b,
kv head h) loops over its key blocks with an online softmax, one query head at a time (element-wise
products and reductions, no tl.dot, so no padding of the G heads of a group to 16 rows), and
writes its G output rows in q's dtype. The query pad, the partials and the merge — three small
XLA kernels a layer, ~140 us of a 2.1 ms step at batch 64 on an H200 — are gone.

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
SINGLE_PASS_MIN_PROGRAMS = 64      # batch x kv heads from which each program takes a whole row


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


def _kernel_rows(len_ref, q_ref, k_ref, v_ref, o_ref, *, scale: float, blk: int, g: int,
                 dh: int):
  """Program (row b, kv head h). Whole arrays: len_ref [B] int32, q_ref/o_ref [B, H, Dh],
  k_ref/v_ref [B, S, K * Dh]. Keys [0, len_b) of head h, in blk-key blocks, online softmax."""
  b, h = pl.program_id(0), pl.program_id(1)
  n = len_ref[b]
  qs = [q_ref[b, h * g + r, :].astype(jnp.float32) * scale for r in range(g)]   # g x [Dh]

  def body(c, carry):
    k = k_ref[b, pl.ds(c * blk, blk), pl.ds(h * dh, dh)].astype(jnp.float32)   # [blk, Dh]
    v = v_ref[b, pl.ds(c * blk, blk), pl.ds(h * dh, dh)].astype(jnp.float32)
    live = c * blk + jnp.arange(blk) < n
    out = []
    for r in range(g):
      m, l, acc = carry[3 * r: 3 * r + 3]
      sc = jnp.where(live, jnp.sum(k * qs[r][None, :], axis=1), _NEG)          # [blk]
      m_new = jnp.maximum(m, jnp.max(sc))
      p = jnp.exp(sc - m_new)
      alpha = jnp.exp(m - m_new)
      out += [m_new, l * alpha + jnp.sum(p), acc * alpha + jnp.sum(p[:, None] * v, axis=0)]
    return tuple(out)

  init = (jnp.float32(_NEG), jnp.float32(0.0), jnp.zeros((dh,), jnp.float32)) * g
  res = jax.lax.fori_loop(0, (n + blk - 1) // blk, body, init)
  for r in range(g):
    _, l, acc = res[3 * r: 3 * r + 3]
    o_ref[b, h * g + r, :] = (acc / l).astype(o_ref.dtype)


def _attend_rows(q, k, v, lengths, interpret: bool, num_warps: int = 4, num_stages: int = 2):
  b, _, h, dh = q.shape
  s, kh = k.shape[1], k.shape[2]
  kwargs = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu
    kwargs["compiler_params"] = plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)
  o = pl.pallas_call(
      functools.partial(_kernel_rows, scale=dh ** -0.5, blk=block_size(s), g=h // kh, dh=dh),
      grid=(b, kh), out_shape=jax.ShapeDtypeStruct((b, h, dh), q.dtype),
      interpret=interpret, name="decode_attention_rows", **kwargs,
  )(lengths.astype(jnp.int32), q.reshape(b, h, dh), k.reshape(b, s, kh * dh),
    v.reshape(b, s, kh * dh))
  return o.reshape(b, 1, h, dh)


@functools.partial(jax.jit, static_argnames=("interpret", "single_pass"))
def decode_attend(q, k, v, lengths, *, interpret: bool = False, single_pass: bool | None = None):
  """q [B, 1, H, Dh], k/v [B, S, K, Dh] (the cache), lengths [B] int32 (slots < length are
  attended; >= 1) -> [B, 1, H, Dh] in q's dtype. single_pass: one program a (row, kv head) over
  all its keys (None: when B x K >= SINGLE_PASS_MIN_PROGRAMS) instead of split keys + merge."""
  b, _, h, dh = q.shape
  s, kh = k.shape[1], k.shape[2]
  if single_pass is None:
    single_pass = b * kh >= SINGLE_PASS_MIN_PROGRAMS
  if single_pass:
    return _attend_rows(q, k, v, lengths, interpret)
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
