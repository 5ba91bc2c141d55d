"""Decode-step products through the Hopper bulk-copy engine (Mosaic GPU): y = x @ w.T for a few
rows of activations and a weight stored [out, in].

Why: in a decode step each weight streams from HBM once, and the small projections (q/k/v, o:
4.7-6.3 MB) are latency-bound: XLA's Triton gemms keep too few bytes in flight per SM, reach
1.1-1.5 TB/s on an H200 and add a split-K reduction kernel (benchmarks/RESULTS.md, sessions
18-20). Here every program issues bulk (TMA) copies of its whole weight slab at once, up to
`stages` 64-column chunks in flight, so an SM waits for one HBM latency, not one per tile.

The product is computed transposed ("swap AB"): the weight tile [tn, 64] is wgmma's 64-row
left operand and the activations x [rows, 64] its right operand (N = rows padded to 8), so two
rows cost no 64-row padding of the weight side. The grid is (out / tn, in / kslab): each program
writes a float32 partial [tn, rows_p] of its K slab; `gemv` sums the slabs and transposes back
in XLA, which can fuse that into the consumer (bias + RoPE, residual add, SwiGLU).

GPU only (sm_90); `gemv_reference` is the same contract in XLA for CPUs and tests.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

TK = 64                   # columns a chunk: one 128-byte swizzle row of bf16


@dataclasses.dataclass(frozen=True)
class GemvConfig:
  tn: int = 64            # output features a program (wgmma M: 64 or 128)
  kslab: int = 256        # input features a program (a multiple of TK dividing `in`)
  stages: int = 4         # chunks in flight a program

  def check(self, n: int, k: int) -> None:
    if self.tn % 64 or n % self.tn:
      raise ValueError(f"tn={self.tn} must be a multiple of 64 dividing out={n}")
    if self.kslab % TK or k % self.kslab:
      raise ValueError(f"kslab={self.kslab} must be a multiple of {TK} dividing in={k}")
    if self.stages < 1:
      raise ValueError(f"stages={self.stages} must be >= 1")


def padded_rows(rows: int) -> int:
  """wgmma's N for `rows` activations: a multiple of 8 (the instruction's granule)."""
  return max(8, -(-rows // 8) * 8)


def gemv_partials(x: jax.Array, w: jax.Array, cfg: GemvConfig) -> jax.Array:
  """x [R, K] bf16, w [N, K] bf16 -> float32 partial sums [K / kslab, N, padded_rows(R)]."""
  import jax.experimental.pallas as pl
  import jax.experimental.pallas.mosaic_gpu as plgpu

  r, k = x.shape
  n, k2 = w.shape
  if k != k2 or x.dtype != w.dtype:
    raise ValueError(f"x {x.shape} {x.dtype} and w {w.shape} {w.dtype} do not match")
  cfg.check(n, k)
  rp = padded_rows(r)
  xp = jnp.pad(x, ((0, rp - r), (0, 0)))                          # [RP, K]
  s, chunks, tn = k // cfg.kslab, cfg.kslab // TK, cfg.tn
  swizzle = plgpu.find_swizzle(TK * jnp.dtype(w.dtype).itemsize * 8)
  tiles = (plgpu.TilingTransform((8, swizzle // jnp.dtype(w.dtype).itemsize)),
           plgpu.SwizzleTransform(swizzle))

  def body(x_gmem, w_gmem, o_gmem):
    ni, si = lax.axis_index("n"), lax.axis_index("s")

    def acc_scope(acc):
      def step(_, w_smem, x_smem):                                 # [tn, TK], [RP, TK]
        plgpu.wgmma(acc, w_smem, plgpu.transpose_ref(x_smem, (1, 0)))
        plgpu.wgmma_wait(0)

      plgpu.emit_pipeline(
          step, grid=(chunks,),
          in_specs=[plgpu.BlockSpec((tn, TK), lambda c: (0, c), transforms=tiles),
                    plgpu.BlockSpec((rp, TK), lambda c: (0, c), transforms=tiles)],
          max_concurrent_steps=min(cfg.stages, chunks),
      )(w_gmem.at[pl.ds(ni * tn, tn), pl.ds(si * cfg.kslab, cfg.kslab)],
        x_gmem.at[:, pl.ds(si * cfg.kslab, cfg.kslab)])
      return acc[...]

    val = pl.run_scoped(acc_scope, plgpu.ACC((tn, rp)))              # [tn, RP] f32

    def store(o_smem):
      o_smem[...] = val
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[si, pl.ds(ni * tn, tn)])
      plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    pl.run_scoped(store, plgpu.SMEM((tn, rp), jnp.float32))

  return plgpu.kernel(body, out_type=jax.ShapeDtypeStruct((s, n, rp), jnp.float32),
                      grid=(n // tn, s), grid_names=("n", "s"))(xp, w)


def gemv(x: jax.Array, w: jax.Array, cfg: GemvConfig = GemvConfig(),
         out_dtype=None) -> jax.Array:
  """x [R, K] @ w[N, K].T -> [R, N] (float32 sums of bf16 products, rounded once)."""
  part = gemv_partials(x, w, cfg)
  return jnp.sum(part, axis=0)[:, :x.shape[0]].T.astype(out_dtype or x.dtype)


def gemv_reference(x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
  """The same product in XLA: what `gemv` must equal."""
  return jnp.einsum("rk,nk->rn", x, w, preferred_element_type=jnp.float32).astype(
      out_dtype or x.dtype)
