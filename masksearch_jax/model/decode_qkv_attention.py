"""A decode step's attention straight from the fused q/k/v product, as one Pallas (Triton) kernel:
the q/k/v biases, RoPE, the cache append and the attention itself.

Why: between a layer's q/k/v product and its attention XLA ran two fusions (the queries' bias,
RoPE and padding to 16 rows a kv head; the new key's bias and RoPE with the value), and above 8
rows the k/v append was a kernel of its own: 57 + 64 + 48 us of a 1.96 ms 1.5B decode step at
batch 64 on an H200 (benchmarks/RESULTS.md, session 21). Here the kernel reads the product itself,
[B, (H + 2K) * Dh] viewed as rows of Dh: program (row b, kv head j, key split c) loads its G query
rows and the new key and value rows, adds the biases, rotates the queries and the key at the
row's position (cos / sin given), walks its share of the filled cache blocks exactly as
decode_attention._kernel does (even splits, online softmax, masked loads), and the program whose
blocks hold the new slot stores the rotated key and the value there (the caches are aliased).
With one split a (row, kv head) it writes the G output rows in the model's layout; with more it
writes flash-decoding partials that decode_attention's merge combines.

RoPE in registers: the G queries and the new key share one 16-row tile (the key in row 15), and
rotate-half is a product with a signed permutation matrix (exact), so the key loop is the
attend kernel's, full rows. (A first version kept the halves of every row apart and scored with two
half-width dots: no faster at batch 64; RESULTS.md, session 22.)

Semantics are decode_attention.decode_attend_write's (slot `end` written, slots <= end attended;
end >= S: the token is dropped and all S slots attended). On other backends than GPU it runs in
Pallas interpret mode (tests).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from masksearch_jax.model import decode_attention as da

_F32 = jnp.float32


_KEY_ROW = da._Q_ROWS - 1             # the tile row that carries the new key through RoPE


def supported(num_heads: int, k_shape) -> bool:
  """G = H / K query heads per kv head, at most 15 (one 16-row tile holds them and the new key),
  Dh a power of two >= 16, and a key block dividing the cache length."""
  _, s, kh, dh = k_shape
  return (num_heads % kh == 0 and 1 <= num_heads // kh <= _KEY_ROW and dh >= 16
          and dh & (dh - 1) == 0 and da.block_size(s) is not None)


def _row(ref, bias_ref, r: int):
  """Row r [Dh] of a product block plus its bias, in f32."""
  return ref[r, :].astype(_F32) + bias_ref[r, :].astype(_F32)


def rotate_half_matrix(dh: int, dtype):
  """[Dh, Dh] signed permutation P with x @ P = rotate_half(x) = [-x2, x1] (exact in any dtype).
  A kernel input, not built in the kernel: building it per program cost ~8 us a layer at batch 64
  (1.5B, H200: 493 us a step for this kernel against 256 for the attend kernel; RESULTS.md)."""
  a, b = jnp.arange(dh)[:, None], jnp.arange(dh)[None, :]
  return jnp.where(a == b + dh // 2, -1.0, jnp.where(a + dh // 2 == b, 1.0, 0.0)).astype(dtype)


def _rotated_tile(q_ref, qb_ref, kn_ref, kb_ref, cs_ref, p_ref, g: int, dtype):
  """[16, Dh] f32: rows 0..g-1 the kv head's queries and row 15 the new key, each plus its bias,
  rounded to the cache dtype (as the model's product + bias was) and rotated at the row's
  position. rotate_half(x) = x @ P (p_ref: rotate_half_matrix), a [16, Dh] x [Dh, Dh] product
  that is exact in any dtype: no halves, so the key loop reads the cache as full rows."""
  rid = jnp.arange(da._Q_ROWS)[:, None]
  x = jnp.zeros((da._Q_ROWS, q_ref.shape[-1]), _F32)
  for r in range(g):
    x = jnp.where(rid == r, _row(q_ref, qb_ref, r)[None, :], x)
  x = jnp.where(rid == _KEY_ROW, _row(kn_ref, kb_ref, 0)[None, :], x).astype(dtype)
  rot = jnp.dot(x, p_ref[...], preferred_element_type=_F32)            # [-x2, x1]
  return x.astype(_F32) * cs_ref[0, :][None, :] + rot * cs_ref[1, :][None, :]


def _kernel(end_ref, cs_ref, p_ref, q_ref, qb_ref, kn_ref, kb_ref, vn_ref, vb_ref, k_ref, v_ref,
            *refs, g: int, scale: float, blk: int, ns: int):
  """end_ref []: the new token's slot; cs_ref [2, Dh] f32 (cos, sin at its position); p_ref
  [Dh, Dh] rotate_half_matrix; q_ref /
  qb_ref [G, Dh] the kv head's query rows of the product and their biases; kn/kb, vn/vb [1, Dh]
  the new key and value rows and biases; k_ref/v_ref [S, Dh] the row's cache for this kv head;
  refs: the outputs (out [G, Dh], or partials o [16, Dh], m/l [16]) then ko/vo aliasing k/v."""
  *out_refs, ko_ref, vo_ref = refs
  s_len = k_ref.shape[0]
  dt = k_ref.dtype
  xr = _rotated_tile(q_ref, qb_ref, kn_ref, kb_ref, cs_ref, p_ref, g, dt)
  rid = jnp.arange(da._Q_ROWS)[:, None]
  kn = jnp.sum(jnp.where(rid == _KEY_ROW, xr, 0.0), axis=0).astype(dt)   # [Dh]
  vn = _row(vn_ref, vb_ref, 0).astype(dt)

  end = end_ref[...]
  n = jnp.minimum(end + 1, s_len)             # a full row (end >= S) attends its S slots
  live_blocks = (n + blk - 1) // blk
  per = (live_blocks + ns - 1) // ns
  first = pl.program_id(2) * per
  steps = jnp.clip(live_blocks - first, 0, per)

  def load_kv(i, live):
    new = ((first + i) * blk + jnp.arange(blk) == end)[:, None]     # the slot being appended
    return (jnp.where(new, kn[None, :], da._masked_block(k_ref, first + i, blk, live)),
            jnp.where(new, vn[None, :], da._masked_block(v_ref, first + i, blk, live)))

  acc, m, l = da._attend_span(load_kv, xr.astype(dt), start=first * blk, n=n, blk=blk,
                              steps=steps, scale=scale)
  if ns == 1:                                 # the G real rows, normalised, in the model's layout
    out = acc / jnp.maximum(l, 1e-30)[:, None]
    for r in range(g):
      out_refs[0][r, :] = jnp.sum(jnp.where(rid == r, out, 0.0), axis=0).astype(out_refs[0].dtype)
  else:
    da._finish(acc, m, l, out_refs, start=first * blk, n=n)

  slot_block = end // blk

  @pl.when((end < s_len) & (first <= slot_block) & (slot_block < first + steps))
  def _():
    ko_ref[pl.ds(end, 1), :] = kn[None, :]
    vo_ref[pl.ds(end, 1), :] = vn[None, :]


@functools.partial(jax.jit, static_argnames=da._STATIC + ("num_heads",))
def decode_attend_qkv(y, bias, rope_cs, k_cache, v_cache, end, *, num_heads: int,
                      interpret: bool = False, splits: int | None = None, block: int | None = None,
                      num_warps: int | None = None, num_stages: int | None = None):
  """One token a row: y [B, (H + 2K) * Dh] the fused q/k/v product (q heads, k heads, v heads;
  before the bias and RoPE), bias [(H + 2K) * Dh], rope_cs [B, 2, Dh] f32 (cos and sin at the
  token's position, HF's full-width tables: qwen2.rope_table), caches [B, S, K, Dh] in one dtype, end [B] int32 the token's slot (>= S:
  dropped, all S slots attended). splits / block / num_warps / num_stages: as in
  decode_attention.decode_attend_write. Returns (out [B, 1, H, Dh] in the cache dtype, k_cache,
  v_cache) with the rotated key and the value stored at slot end, in place."""
  b, s, kh, dh = k_cache.shape
  h = num_heads
  rows = h + 2 * kh
  if (k_cache.dtype != v_cache.dtype or v_cache.shape != k_cache.shape
      or not supported(h, k_cache.shape) or y.shape != (b, rows * dh)
      or bias.shape != (rows * dh,) or rope_cs.shape != (b, 2, dh)):
    raise ValueError(
        f"decode_attend_qkv: expected y [{b}, {rows * dh}] ({h} query, {kh} key, {kh} value heads "
        f"of {dh}), bias [{rows * dh}], rope_cs [{b}, 2, {dh}] and two caches of one dtype "
        f"with at most {_KEY_ROW} query heads a kv head and a head size that is a power of two "
        f">= 16; got y {y.shape}, bias {bias.shape}, rope_cs {rope_cs.shape}, caches "
        f"{k_cache.shape} {k_cache.dtype} / {v_cache.shape} {v_cache.dtype}")
  g = h // kh
  blk, ns, _ = da._plan(b, kh, s, splits, block)
  y3, b2 = y.reshape(b, rows, dh), bias.reshape(rows, dh)             # free: rows of Dh
  k3, v3 = k_cache.reshape(b, s, kh * dh), v_cache.reshape(b, s, kh * dh)
  kv_spec = pl.BlockSpec((None, s, dh), lambda i, j, c: (i, 0, j))   # the whole row: even splits
  row = lambda at: pl.BlockSpec((None, 1, dh), lambda i, j, c: (i, at + j, 0))
  brow = lambda at: pl.BlockSpec((1, dh), lambda i, j, c: (at + j, 0))
  in_specs = [pl.BlockSpec((None,), lambda i, j, c: (i,)),
              pl.BlockSpec((None, 2, dh), lambda i, j, c: (i, 0, 0)),
              pl.BlockSpec((dh, dh), lambda i, j, c: (0, 0)),
              pl.BlockSpec((None, g, dh), lambda i, j, c: (i, j, 0)),
              pl.BlockSpec((g, dh), lambda i, j, c: (j, 0)),
              row(h), brow(h), row(h + kh), brow(h + kh), kv_spec, kv_spec]
  if ns == 1:
    out_specs = [pl.BlockSpec((None, g, dh), lambda i, j, c: (i, j, 0))]
    out_shapes = [jax.ShapeDtypeStruct((b, h, dh), k_cache.dtype)]
  else:
    _, out_specs, out_shapes = da._outputs_io(b, kh, ns, dh, k_cache.dtype)
  *outs, k3, v3 = pl.pallas_call(
      functools.partial(_kernel, g=g, scale=dh ** -0.5, blk=blk, ns=ns),
      grid=(b, kh, ns), in_specs=in_specs,
      out_specs=out_specs + [kv_spec, kv_spec],
      out_shape=out_shapes + [jax.ShapeDtypeStruct(k3.shape, k3.dtype),
                              jax.ShapeDtypeStruct(v3.shape, v3.dtype)],
      input_output_aliases={9: len(out_specs), 10: len(out_specs) + 1},
      interpret=interpret, name="decode_attention_qkv",
      **da._compiler_params(interpret, "write" if b <= da.WRITE_MAX_ROWS else "attend",
                            num_warps, num_stages),
  )(end.astype(jnp.int32), rope_cs.astype(_F32), rotate_half_matrix(dh, k_cache.dtype), y3, b2, y3,
    b2, y3, b2, k3, v3)
  out = (outs[0].reshape(b, 1, h, dh) if ns == 1
         else da._combine(outs, b, kh, ns, g, h, dh, k_cache.dtype))
  return out, k3.reshape(k_cache.shape), v3.reshape(v_cache.shape)
