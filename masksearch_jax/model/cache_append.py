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


def _kernel(end_ref, kn_ref, vn_ref, k_ref, v_ref, ko_ref, vo_ref):
  """end_ref [] int32; kn/vn [1, K * Dh]; the caches' row [S, K * Dh] (ko/vo alias k/v)."""
  del k_ref, v_ref                                     # only written, through the aliases
  end = end_ref[...]

  @pl.when(end < ko_ref.shape[0])
  def _():
    ko_ref[pl.ds(end, 1), :] = kn_ref[...]
    vo_ref[pl.ds(end, 1), :] = vn_ref[...]


@functools.partial(jax.jit, static_argnames=("interpret",))
def append(k_new, v_new, k_cache, v_cache, end, *, interpret: bool = False):
  """k_new/v_new [B, 1, K, Dh] (cast to the cache dtype) into k_cache/v_cache [B, S, K, Dh] at
  slot end [B] (int; >= S: dropped). Returns the two caches, updated in place."""
  if k_cache.dtype != v_cache.dtype:
    raise ValueError(f"k and v caches differ in dtype: {k_cache.dtype} vs {v_cache.dtype}")
  b, s, kh, dh = k_cache.shape
  w = kh * dh
  k3, v3 = k_cache.reshape(b, s, w), v_cache.reshape(b, s, w)      # free: heads side by side
  # k and v side by side in one array, so XLA computes both (RoPE, bias, the split of the fused
  # q/k/v product) in one fusion, not one each; the kernel reads each half through its own spec.
  kv = jnp.concatenate([k_new.reshape(b, 1, w).astype(k3.dtype),
                        v_new.reshape(b, 1, w).astype(v3.dtype)], axis=-1)       # [B, 1, 2W]
  k_half = pl.BlockSpec((None, 1, w), lambda i: (i, 0, 0))
  v_half = pl.BlockSpec((None, 1, w), lambda i: (i, 0, 1))
  row = pl.BlockSpec((None, s, w), lambda i: (i, 0, 0))
  kwargs = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu
    kwargs["compiler_params"] = plgpu.CompilerParams(num_warps=1, num_stages=1)
  k3, v3 = pl.pallas_call(
      _kernel, grid=(b,),
      in_specs=[pl.BlockSpec((None,), lambda i: (i,)), k_half, v_half, row, row],
      out_specs=[row, row],
      out_shape=[jax.ShapeDtypeStruct(k3.shape, k3.dtype), jax.ShapeDtypeStruct(v3.shape, v3.dtype)],
      input_output_aliases={3: 0, 4: 1}, interpret=interpret, name="kv_cache_append", **kwargs,
  )(end.astype(jnp.int32), kv, kv, k3, v3)
  return k3.reshape(k_cache.shape), v3.reshape(v_cache.shape)
