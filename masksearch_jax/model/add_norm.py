"""A decode step's residual add and the RMSNorm of its result in one Pallas (Triton) kernel.

Why: after the o projection, XLA runs the residual add (h + o) and the post-attention RMSNorm of
its result as two small kernels a layer: 83.7 + 44.9 us of a 2.06 ms 1.5B decode step at batch 64
on an H200 (benchmarks/RESULTS.md, session 22's profile), each mostly launch and ramp, not
bytes (a [64, 1536] row block is 196 KB). Here one program a row adds, stores the sum, and
normalises it from registers: one launch, each byte read once.

Numerics are the model's: the sum rounded to h's dtype (as `h = h + o` is), its mean square in
float32, and `w * (x * rsqrt(ms + eps))` cast as `qwen2.rms_norm` does. Rows are processed as
chunks of 128 (every Qwen2.5 hidden size is a multiple of 128; Triton tiles are powers of two).
On other backends than GPU it runs in Pallas interpret mode (tests).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

CHUNK = 128


def supported(d: int) -> bool:
  """The hidden size must be a multiple of CHUNK."""
  return d >= CHUNK and d % CHUNK == 0


def _kernel(h_ref, d_ref, w_ref, sum_ref, out_ref, *, eps: float, dim: int):
  """h_ref/d_ref/sum_ref/out_ref [D / 128, 128] one row; w_ref [D / 128, 128] the norm gain."""
  dt = h_ref.dtype
  parts = []
  ss = jnp.zeros((), jnp.float32)
  for c in range(h_ref.shape[0]):
    s = (h_ref[c, :] + d_ref[c, :]).astype(dt)                # rounded as the model's add
    sum_ref[c, :] = s
    sf = s.astype(jnp.float32)
    ss = ss + jnp.sum(sf * sf)
    parts.append(sf)
  scale = jax.lax.rsqrt(ss / dim + eps)
  for c, sf in enumerate(parts):
    out_ref[c, :] = w_ref[c, :].astype(dt) * (sf * scale).astype(dt)


@functools.partial(jax.jit, static_argnames=("eps", "interpret"))
def add_rms_norm(h, d, w, *, eps: float, interpret: bool = False):
  """h, d [N, D] in one dtype, w [D] -> (h + d, rms_norm(h + d, w, eps)), both [N, D] in h's
  dtype, in one kernel."""
  n, dim = h.shape
  if d.shape != h.shape or d.dtype != h.dtype or w.shape != (dim,) or not supported(dim):
    raise ValueError(f"add_rms_norm: h {h.shape} {h.dtype} and d {d.shape} {d.dtype} must match, "
                     f"w {w.shape} must be [{dim}], and {dim} a multiple of {CHUNK}")
  c = dim // CHUNK
  row = pl.BlockSpec((None, c, CHUNK), lambda i: (i, 0, 0))
  kwargs = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu
    kwargs["compiler_params"] = plgpu.CompilerParams(num_warps=4, num_stages=1)
  s, x = pl.pallas_call(
      functools.partial(_kernel, eps=eps, dim=dim), grid=(n,),
      in_specs=[row, row, pl.BlockSpec((c, CHUNK), lambda i: (0, 0))],
      out_specs=[row, row],
      out_shape=[jax.ShapeDtypeStruct((n, c, CHUNK), h.dtype)] * 2,
      interpret=interpret, name="add_rms_norm", **kwargs,
  )(h.reshape(n, c, CHUNK), d.reshape(n, c, CHUNK), w.reshape(c, CHUNK))
  return s.reshape(n, dim), x.reshape(n, dim)
