"""Residual add + RMSNorm of one decode token per row, in one Pallas (Triton) kernel.

Why: at batch 1 a decode step is mostly small kernels (~1.3 us each however little they do), and
XLA runs each residual add and the RMSNorm statistic after it as two (1.5B on an H200: 4 of the
~13 kernels a layer, ~150 us of a 1.5 ms step; benchmarks/RESULTS.md). `add_norm` does both in
one launch: h + y, stored, and either the normalised row (gain given) or its 1 / RMS (gain None:
the "xla_folded" layout, whose gain lives in the next weights).

The arithmetic is the XLA path's (`qwen2.rms_norm` / `rms_scale` after a bf16 add): the sum is
rounded to h's dtype, the statistic taken in f32 from the rounded sum, the normalised row rounded
to h's dtype before the gain multiplies it. Only the order of the f32 sum of squares differs.
On backends other than GPU the kernel runs in Pallas interpret mode (tests).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

ENABLED = True           # benchmarks flip it for an A/B in one process (read at trace time)


def chunk(d: int) -> int:
  """Elements a load: the largest power of two dividing d, at most 1024 (Triton values are
  power-of-two sized; 1536 -> 512, 896 -> 128)."""
  c = 1
  while d % (c * 2) == 0 and c * 2 <= 1024:
    c *= 2
  return c


def _kernel(h_ref, y_ref, *refs, eps: float, d: int, ch: int, gain: bool):
  """One row: h_ref/y_ref [D]; refs: (gain [D],) then outputs h_out [D] and x [D] (normalised
  with the gain) or inv [] (1 / RMS)."""
  if gain:
    g_ref, o_ref, x_ref = refs
  else:
    o_ref, inv_ref = refs
  sums, parts = jnp.zeros((ch,), jnp.float32), []
  for c in range(d // ch):
    sl = pl.ds(c * ch, ch)
    hc = (h_ref[sl].astype(jnp.float32) + y_ref[sl].astype(jnp.float32)).astype(o_ref.dtype)
    o_ref[sl] = hc
    hf = hc.astype(jnp.float32)
    parts.append(hf)
    sums = sums + hf * hf
  inv = jax.lax.rsqrt(jnp.sum(sums) / d + eps)
  if not gain:
    inv_ref[...] = inv
    return
  for c, hf in enumerate(parts):
    sl = pl.ds(c * ch, ch)
    x_ref[sl] = g_ref[sl].astype(x_ref.dtype) * (hf * inv).astype(x_ref.dtype)


@functools.partial(jax.jit, static_argnames=("eps", "interpret"))
def add_norm(h, y, gain, *, eps: float, interpret: bool = False):
  """h, y [B, 1, D] (y in any float dtype, added in f32 and rounded to h's dtype); gain [D] or
  None. Returns (h + y, (x, scale)) in the form of qwen2._normed: with a gain x is the RMSNorm
  of h + y and scale None; without, x is h + y itself and scale its 1 / RMS, f32 [B, 1, 1]."""
  b, t, d = h.shape
  if t != 1:
    raise ValueError(f"add_norm takes one token per row, got h {h.shape}")
  ch = chunk(d)
  row = pl.BlockSpec((None, d), lambda i: (i, 0))
  with_gain = gain is not None
  out_shape = [jax.ShapeDtypeStruct((b, d), h.dtype)]
  if with_gain:
    out_specs, in_specs = [row, row], [row, row, pl.BlockSpec((d,), lambda i: (0,))]
    out_shape.append(jax.ShapeDtypeStruct((b, d), h.dtype))
  else:
    out_specs, in_specs = [row, pl.BlockSpec((None,), lambda i: (i,))], [row, row]
    out_shape.append(jax.ShapeDtypeStruct((b,), jnp.float32))
  kwargs = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu
    kwargs["compiler_params"] = plgpu.CompilerParams(num_warps=4, num_stages=1)
  args = (h.reshape(b, d), y.reshape(b, d)) + ((gain,) if with_gain else ())
  h_new, second = pl.pallas_call(
      functools.partial(_kernel, eps=eps, d=d, ch=ch, gain=with_gain), grid=(b,),
      in_specs=in_specs, out_specs=out_specs, out_shape=out_shape, interpret=interpret,
      name="residual_rms_norm", **kwargs)(*args)
  h_new = h_new.reshape(b, 1, d)
  if with_gain:
    return h_new, (second.reshape(b, 1, d), None)
  return h_new, (h_new, second.reshape(b, 1, 1))
