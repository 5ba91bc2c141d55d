"""Decode attention that also finishes the q/k/v projection: bias, the folded norm's row scale,
and RoPE of the new query and key, inside the kernel that appends k/v and attends.

Why: at batch 1 every kernel costs ~1.3 us however little it does, and between the q/k/v product
and the attention kernel XLA runs one more (scale, bias, RoPE and the query padding, fused) in
each of the 28 layers of the 1.5B (benchmarks/RESULTS.md). Here the attention kernel reads the
product's raw output y [B, (H + 2K), Dh] and does that arithmetic itself, in the XLA path's
order and roundings (model/qwen2.py `_dense`, `rope`): the row scale in f32 rounded to the
compute dtype, the bias added and rounded, RoPE in f32 rounded. Rotate-half RoPE needs each
head's two halves: they are loaded as two [rows, Dh / 2] tiles, rotated, and the query-key
product is taken as the sum of the two halves' products (no shuffle of a vector in registers).

Same outputs as model/decode_attention.py `decode_attend_write` fed with the XLA path's q/k/v
(tested to float rounding); only where `decode_attention.decode_attend_write` runs (few rows).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from masksearch_jax.model import decode_attention as da

ENABLED = True           # benchmarks flip it for an A/B in one process (read at trace time)


def _rows(ref, first, n_rows, cols):
  """Rows [first, first + n_rows) of a [heads, Dh] ref, columns `cols`, as f32; rows past the
  group (n_rows > the group size) are masked by the caller's `live`."""
  return ref[pl.ds(first, n_rows), cols].astype(jnp.float32)


def _finish_proj(y, bias, rs, dtype):
  """The XLA path's arithmetic up to RoPE: (y * row scale) rounded, + bias rounded (f32 out)."""
  if rs is not None:
    y = (y * rs).astype(dtype).astype(jnp.float32)
  return (y + bias).astype(dtype).astype(jnp.float32)


def _rope(x1, x2, cos, sin, dtype):
  """Rotate-half RoPE of the two halves (f32 in), rounded to dtype."""
  return (x1 * cos - x2 * sin).astype(dtype), (x2 * cos + x1 * sin).astype(dtype)


def _kernel(end_ref, pos_ref, *refs, scale: float, blk: int, steps: int, g: int, heads: int,
            kv_heads: int, has_scale: bool):
  """Program (row i, kv head j, key split c). refs: [rs_ref []], y_ref / b_ref [H + 2K, Dh],
  f_ref [Dh / 2] (RoPE inverse frequencies), k_ref / v_ref [steps * blk, Dh], outputs as
  decode_attention._kernel_write (the last two alias the caches)."""
  if has_scale:
    rs_ref, *refs = refs
  y_ref, b_ref, f_ref, k_ref, v_ref, *refs = refs
  *out_refs, ko_ref, vo_ref = refs
  j = pl.program_id(1)
  start, end = pl.program_id(2) * steps * blk, end_ref[...]
  dh = y_ref.shape[-1]
  half = dh // 2
  lo, hi = pl.ds(0, half), pl.ds(half, half)
  rs = rs_ref[...] if has_scale else None
  dtype = k_ref.dtype
  ang = pos_ref[...].astype(jnp.float32) * f_ref[...]                       # [Dh / 2]
  cos, sin = jnp.cos(ang)[None, :], jnp.sin(ang)[None, :]
  from jax.experimental.pallas import triton as plgpu
  live_q = (jnp.arange(da._Q_ROWS) < g)[:, None]

  def proj(first, n_rows, cols, mask):
    if mask is None:
      y, b = _rows(y_ref, first, n_rows, cols), _rows(b_ref, first, n_rows, cols)
    else:
      load = lambda r: plgpu.load(r.at[pl.ds(first, n_rows), cols], mask=mask, other=0)
      y, b = load(y_ref).astype(jnp.float32), load(b_ref).astype(jnp.float32)
    return _finish_proj(y, b, rs, dtype)

  q = _rope(proj(j * g, da._Q_ROWS, lo, live_q), proj(j * g, da._Q_ROWS, hi, live_q), cos, sin,
            dtype)                                                            # 2 x [16, Dh / 2]
  kn = _rope(proj(heads + j, 1, lo, None), proj(heads + j, 1, hi, None), cos, sin, dtype)
  vn = proj(heads + kv_heads + j, 1, slice(None), None).astype(dtype)        # [1, Dh]

  def load_kv(i, live):
    new = (start + i * blk + jnp.arange(blk) == end)[:, None]
    k = tuple(jnp.where(new, kp, da._masked_block(k_ref, i, blk, live, cols))
              for kp, cols in zip(kn, (lo, hi)))
    return k, jnp.where(new, vn, da._masked_block(v_ref, i, blk, live))

  acc, m, l = da._attend_span(load_kv, q, start=start, n=end + 1, blk=blk, steps=steps,
                              scale=scale)
  da._finish(acc, m, l, out_refs, start=start, n=end + 1)

  @pl.when((start <= end) & (end < start + steps * blk))
  def _():
    row = pl.ds(end - start, 1)
    ko_ref[row, lo], ko_ref[row, hi] = kn
    vo_ref[row, :] = vn


@functools.partial(jax.jit, static_argnames=("heads", "kv_heads", "theta", "interpret",
                                             "splits"))
def decode_attend_write_rope(y, row_scale, bias, positions, k_cache, v_cache, end, *, heads: int,
                             kv_heads: int, theta: float, interpret: bool = False,
                             splits: int | None = None):
  """y [B, 1, (H + 2K) * Dh]: the new token's raw q/k/v product (before row scale and bias);
  row_scale [B, 1, 1] f32 or None; bias [(H + 2K) * Dh]; positions [B, 1] the token's RoPE
  positions; the caches [B, S, K, Dh] in the compute dtype (y's); end [B] as in
  decode_attention.decode_attend_write. Returns (out [B, 1, H, Dh], k_cache, v_cache)."""
  b = y.shape[0]
  s, kh, dh = k_cache.shape[1:]
  if kh != kv_heads or y.shape[-1] != (heads + 2 * kv_heads) * dh or dh % 32:
    raise ValueError(f"decode_attend_write_rope: y {y.shape}, cache {k_cache.shape}, "
                     f"heads {heads}/{kv_heads}")
  blk = da.block_size(s)
  ns = splits or da.key_splits(b, kh, s // blk)
  steps = s // blk // ns
  rows = heads + 2 * kv_heads
  k3, v3 = k_cache.reshape(b, s, kh * dh), v_cache.reshape(b, s, kh * dh)
  kv_spec = da._kv_spec(steps * blk, dh)
  _, out_specs, out_shapes = da._outputs_io(b, kh, ns, dh, y.dtype)
  inv_freq = 1.0 / (theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))   # as qwen2.rope
  scalar = pl.BlockSpec((None,), lambda i, j, c: (i,))
  has_scale = row_scale is not None
  in_specs = ([scalar, scalar] + ([scalar] if has_scale else [])
              + [pl.BlockSpec((None, rows, dh), lambda i, j, c: (i, 0, 0)),
                 pl.BlockSpec((rows, dh), lambda i, j, c: (0, 0)),
                 pl.BlockSpec((dh // 2,), lambda i, j, c: (0,)), kv_spec, kv_spec])
  args = ([end.astype(jnp.int32), positions.reshape(b).astype(jnp.int32)]
          + ([row_scale.reshape(b).astype(jnp.float32)] if has_scale else [])
          + [y.reshape(b, rows, dh), bias.reshape(rows, dh).astype(y.dtype), inv_freq, k3, v3])
  n_in = len(args)
  *outs, k3, v3 = pl.pallas_call(
      functools.partial(_kernel, scale=dh ** -0.5, blk=blk, steps=steps, g=heads // kv_heads,
                        heads=heads, kv_heads=kv_heads, has_scale=has_scale),
      grid=(b, kh, ns), in_specs=in_specs, out_specs=out_specs + [kv_spec, kv_spec],
      out_shape=out_shapes + [jax.ShapeDtypeStruct(k3.shape, k3.dtype),
                              jax.ShapeDtypeStruct(v3.shape, v3.dtype)],
      input_output_aliases={n_in - 2: len(out_specs), n_in - 1: len(out_specs) + 1},
      interpret=interpret, name="decode_attention_write_rope", **da._compiler_params(interpret),
  )(*args)
  out = da._combine(outs, b, kh, ns, heads // kv_heads, heads, dh, y.dtype)
  return out, k3.reshape(k_cache.shape), v3.reshape(v_cache.shape)
