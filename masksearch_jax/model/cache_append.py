"""One decode step's new keys and values written into the KV cache by one Pallas kernel, in place.

Why: XLA writes a layer's new k and v with two scatter kernels (`cache.at[rows, slots].set`).
They move almost nothing (64 rows x 2 x 512 bytes at batch 64) but cost a launch each: 80.7 +
73.5 us of a 2.03 ms 1.5B decode step at batch 64 on an H200 (benchmarks/RESULTS.md). Here one
program a row stores both at the row's slot; the caches are aliased outputs, so nothing is
copied. Up to decode_attention.WRITE_MAX_ROWS rows the attention kernel itself appends (one
launch fewer still); this kernel serves the larger batches, where that variant was slower.
Measured (1.5B, H200, batch 64, alternating processes on one machine): 30,393 / 30,362 tok/s
against 30,058 / 29,847 with the scatters (+1.1-1.7%).

Semantics are the scatter's with mode="drop": a row whose slot is >= the cache length writes
nothing. On other backends than GPU it runs in Pallas interpret mode (tests).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

# Off: the model keeps XLA's two scatters (benchmarks flip it for an A/B in one process).
ENABLED = True


def supported(k_cache_shape) -> bool:
  """A row of heads x head_dim elements must be a power of two (Triton block shapes)."""
  _, _, kh, dh = k_cache_shape
  w = kh * dh
  return w >= 16 and w & (w - 1) == 0


def _kernel(end_ref, kn_ref, vn_ref, k_ref, v_ref, ko_ref, vo_ref, *, kh: int, slots: int):
  """end_ref [] int32; kn/vn [K, Dh] the new key / value heads; the caches' row viewed as
  [S * K, Dh] (slot t: rows t*K .. t*K + K - 1; ko/vo alias k/v)."""
  del k_ref, v_ref                                     # only written, through the aliases
  end = end_ref[...]

  @pl.when(end < slots)
  def _():
    ko_ref[pl.ds(end * kh, kh), :] = kn_ref[...].astype(ko_ref.dtype)
    vo_ref[pl.ds(end * kh, kh), :] = vn_ref[...].astype(vo_ref.dtype)


@functools.partial(jax.jit, static_argnames=("interpret",))
def append(k_new, v_new, k_cache, v_cache, end, *, interpret: bool = False):
  """k_new/v_new [B, 1, K, Dh] (cast to the cache dtype) into k_cache/v_cache [B, S, K, Dh] at
  slot end [B] (int; >= S: dropped). Returns the two caches, updated in place."""
  b, _, kh, dh = k_cache.shape
  # k and v in one array, so XLA computes both (RoPE, bias, the split of the fused q/k/v
  # product) in one fusion, not one each; the kernel reads each part through its own spec.
  rows = jnp.concatenate([k_new.reshape(b, kh, dh).astype(k_cache.dtype),
                          v_new.reshape(b, kh, dh).astype(k_cache.dtype)], axis=1)  # [B, 2K, Dh]
  return append_rows(rows, k_cache, v_cache, end, first=0, interpret=interpret)


@functools.partial(jax.jit, static_argnames=("first", "interpret"))
def append_rows(rows, k_cache, v_cache, end, *, first: int, interpret: bool = False):
  """The new key heads rows[:, first:first + K] and value heads rows[:, first + K:first + 2K]
  of rows [B, R, Dh] (any float dtype: cast to the cache's) into k_cache/v_cache [B, S, K, Dh]
  at slot end [B] (>= S: dropped). `first` a multiple of K, so that another kernel can read
  other rows of the same array (decode_attention.new_rows: the padded queries first) and XLA
  computes them all in one fusion. Returns the two caches, updated in place."""
  if k_cache.dtype != v_cache.dtype:
    raise ValueError(f"k and v caches differ in dtype: {k_cache.dtype} vs {v_cache.dtype}")
  b, s, kh, dh = k_cache.shape
  if first % kh or rows.shape[0] != b or rows.shape[2] != dh or rows.shape[1] < first + 2 * kh:
    raise ValueError(f"append_rows: rows {rows.shape} cannot hold {kh} key and {kh} value heads "
                     f"of {dh} at row {first} (a multiple of {kh}) for {b} cache rows")
  k3, v3 = k_cache.reshape(b, s * kh, dh), v_cache.reshape(b, s * kh, dh)   # free: a view
  k_part = pl.BlockSpec((None, kh, dh), lambda i: (i, first // kh, 0))
  v_part = pl.BlockSpec((None, kh, dh), lambda i: (i, first // kh + 1, 0))
  row = pl.BlockSpec((None, s * kh, dh), lambda i: (i, 0, 0))
  kwargs = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu
    kwargs["compiler_params"] = plgpu.CompilerParams(num_warps=1, num_stages=1)
  k3, v3 = pl.pallas_call(
      functools.partial(_kernel, kh=kh, slots=s), grid=(b,),
      in_specs=[pl.BlockSpec((None,), lambda i: (i,)), k_part, v_part, row, row],
      out_specs=[row, row],
      out_shape=[jax.ShapeDtypeStruct(k3.shape, k3.dtype), jax.ShapeDtypeStruct(v3.shape, v3.dtype)],
      input_output_aliases={3: 0, 4: 1}, interpret=interpret, name="kv_cache_append", **kwargs,
  )(end.astype(jnp.int32), rows, rows, k3, v3)
  return k3.reshape(k_cache.shape), v3.reshape(v_cache.shape)
