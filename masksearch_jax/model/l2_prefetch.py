"""Start reading a weight into the GPU's L2 early, while the decode step is latency-bound.

Why: at batch 1 a decode layer spends ~25 of its ~50 us in small, latency-bound kernels (norms,
the q/k/v and o products, RoPE, attention, merges) during which HBM is mostly idle, then streams
the MLP weights (82 MB for the 1.5B) at the copy rate (benchmarks/RESULTS.md). One small kernel
at the start of the layer issues bulk L2 prefetches (cp.async.bulk.prefetch, fire-and-forget:
the kernel exits while the fills go on) of the first rows of the gate/up weight, so that part of
the MLP's bytes arrive during the attention half of the layer instead of after it.

The kernel takes the layer input h only as a dependency (so XLA cannot hoist every layer's
prefetch to the start of the step) and returns zeros that the caller adds into a later fusion
(so it is not dead code). GPU only (sm_90, Mosaic GPU); opt-in: qwen2.DECODE_PREFETCH.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

BOX = 256                 # a bulk copy's box is at most 256 elements a dimension


def available() -> bool:
  """Mosaic GPU kernels run on (Hopper) GPUs only; elsewhere the prefetch is skipped."""
  return jax.default_backend() == "gpu"


def prefetch_rows(w: jax.Array, rows: int, after: jax.Array) -> jax.Array:
  """Prefetch w[:rows] (w [K, N], row-major) into L2 once `after` is computed; returns a float32
  zero scalar that depends on the prefetch."""
  import jax.experimental.pallas as pl
  import jax.experimental.pallas.mosaic_gpu as plgpu

  k, n = w.shape
  rows = min(rows, k)
  if rows <= 0:
    raise ValueError(f"rows={rows} must be positive")
  bk, bn = min(BOX, rows), min(BOX, n)
  if rows % bk or n % bn:
    raise ValueError(f"rows={rows} must be a multiple of {bk} and N={n} of {bn}")
  grid = (rows // bk, n // bn)

  def body(w_gmem, dep_gmem, o_gmem):
    del dep_gmem
    i, j = jax.lax.axis_index("k"), jax.lax.axis_index("n")
    plgpu.async_prefetch(w_gmem.at[pl.ds(i * bk, bk), pl.ds(j * bn, bn)])

    @pl.when((i == 0) & (j == 0))
    def _():
      def store(z_smem):
        z_smem[...] = jnp.zeros((128,), jnp.float32)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(z_smem, o_gmem)
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)
      pl.run_scoped(store, plgpu.SMEM((128,), jnp.float32))

  z = plgpu.kernel(body, out_type=jax.ShapeDtypeStruct((128,), jnp.float32),
                   grid=grid, grid_names=("k", "n"))(w, after)
  return z[0]
