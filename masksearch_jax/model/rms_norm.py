"""RMSNorm, and a training variant whose backward pass is one Pallas (Triton) kernel.

Why: differentiated by XLA, each RMSNorm's backward makes ~4 passes over its [tokens, D]
activations (the sum of squares again, the row reduction sum(dy * w * x), the column reduction for
the gain's gradient, the element-wise dx) — ~20 ms of a 1.5B SFT step of 16 x 2048 tokens on an
H200, against ~4 ms for one read of x and dy and one write of dx (benchmarks/RESULTS.md). Here
program i takes `ROWS` rows, reads x and dy tile by tile (twice: the second read, a few hundred
KB later, comes from L2), writes dx and a partial gain gradient [D] for its rows; XLA sums the
[N / ROWS, D] partials (a few MB).

`impl="xla"` is the reference and default; `"pallas"` (`TrainConfig.norm_impl`) runs the kernel on
GPUs, Pallas interpret mode on CPU (tests) and the same formulas in jnp elsewhere. The forward
values are the same in both; the backward is the exact gradient computed in f32 (autodiff rounds
dy * w to bf16 first), so they agree to bf16 rounding.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

IMPLS = ("xla", "pallas")
ROWS = 16                    # rows per program
_COL_CAP = 256               # widest column tile: [16, 256] f32 per operand, 32 registers a thread


def rms_scale(x, eps):
  """1 / RMS(x) per position, f32 [..., 1]: rms_norm(x, g) == g * x * rms_scale(x) (up to rounding),
  so with g folded into the next weight the scale can be applied after the product."""
  xf = x.astype(jnp.float32)
  return jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)


def rms_norm(x, scale, eps, impl: str = "xla"):
  """x [..., D] -> scale * x / RMS(x), in x's dtype (normalised in f32, rounded before the gain,
  as transformers' Qwen2RMSNorm). impl: "xla" (autodiff) | "pallas" (one-kernel backward)."""
  if impl == "pallas":
    return _rms_norm_pallas(x, scale, eps)
  if impl != "xla":
    raise ValueError(f"rms_norm impl={impl!r} (one of {IMPLS})")
  xf = x.astype(jnp.float32) * rms_scale(x, eps)
  return scale.astype(x.dtype) * xf.astype(x.dtype)


def col_tile(d: int) -> int:
  t = 1
  while t * 2 <= _COL_CAP and d % (t * 2) == 0:
    t *= 2
  return t


def kernel_supported(n: int, d: int) -> bool:
  """Rows a multiple of ROWS and a power-of-two column tile of at least 32 dividing D."""
  return n % ROWS == 0 and col_tile(d) >= 32


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _rms_norm_pallas(x, scale, eps):
  return rms_norm(x, scale, eps)


def _fwd(x, scale, eps):
  return rms_norm(x, scale, eps), (x, scale)


def _bwd(eps, res, dy):
  x, scale = res
  d = x.shape[-1]
  x2, dy2 = x.reshape(-1, d), dy.reshape(-1, d)                 # [N, D]
  r = rms_scale(x2, eps)[:, 0]                                   # [N] f32 (recomputed: 1 read)
  if _use_kernel(*x2.shape):
    dx, dw_parts = _bwd_kernel(x2, dy2, r, scale)
    dw = jnp.sum(dw_parts.reshape(-1, d), axis=0)
  else:
    dx, dw = bwd_reference(x2, dy2, r, scale)
  return dx.reshape(x.shape).astype(x.dtype), dw.astype(scale.dtype)


_rms_norm_pallas.defvjp(_fwd, _bwd)


def _use_kernel(n: int, d: int) -> bool:
  return jax.default_backend() in ("gpu", "cpu") and kernel_supported(n, d)


def bwd_reference(x, dy, r, scale):
  """The backward in jnp (f32): x, dy [N, D], r [N] = 1 / RMS(x) -> (dx [N, D] f32, dw [D] f32).
  y = w * n, n = x * r: dn = dy * w; dx = r * (dn - n * mean(dn * n)); dw = sum_rows(dy * n)
  with n rounded to x's dtype, as the forward stores it."""
  xf, g = x.astype(jnp.float32), dy.astype(jnp.float32)
  r = r[:, None]
  dn = g * scale.astype(jnp.float32)
  c = jnp.mean(dn * xf, axis=-1, keepdims=True)                 # [N, 1]
  dx = r * (dn - xf * (r * r) * c)
  n = (xf * r).astype(x.dtype).astype(jnp.float32)
  return dx, jnp.sum(g * n, axis=0)


def _kernel(x_ref, dy_ref, r_ref, w_ref, dx_ref, dw_ref, *, rows: int, cols: int, d: int):
  """Program i: rows [i*R, (i+1)*R). x_ref/dy_ref/dx_ref [N, D], r_ref [N], w_ref [D],
  dw_ref [N / R * D] (flat: this program's partial gain gradient at [i*D, (i+1)*D))."""
  i = pl.program_id(0)
  r0 = i * rows
  r = r_ref[pl.ds(r0, rows)]                                       # [R] f32
  acc = jnp.zeros((rows,), jnp.float32)
  for t in range(d // cols):                                      # pass 1: sum(dn * x) per row
    cs = pl.ds(t * cols, cols)
    xf = x_ref[pl.ds(r0, rows), cs].astype(jnp.float32)
    dn = dy_ref[pl.ds(r0, rows), cs].astype(jnp.float32) * w_ref[cs].astype(jnp.float32)[None, :]
    acc += jnp.sum(dn * xf, axis=1)
  k = (r * r * r * acc / d)[:, None]                              # [R, 1]: r^3 * mean(dn * x)
  for t in range(d // cols):                                      # pass 2: dx and dw (L2 reads)
    cs = pl.ds(t * cols, cols)
    x = x_ref[pl.ds(r0, rows), cs]
    xf = x.astype(jnp.float32)
    g = dy_ref[pl.ds(r0, rows), cs].astype(jnp.float32)
    dn = g * w_ref[cs].astype(jnp.float32)[None, :]
    dx_ref[pl.ds(r0, rows), cs] = (r[:, None] * dn - xf * k).astype(dx_ref.dtype)
    n = (xf * r[:, None]).astype(x.dtype).astype(jnp.float32)
    dw_ref[pl.ds(i * d + t * cols, cols)] = jnp.sum(g * n, axis=0)


@functools.partial(jax.jit, static_argnames=("interpret", "rows", "num_warps"))
def _bwd_kernel(x, dy, r, scale, *, interpret: bool | None = None, rows: int = ROWS,
                num_warps: int = 4):
  """x, dy [N, D]; r [N] f32; scale [D] -> (dx [N, D] in x's dtype, dw partials [N / rows * D]).
  rows / num_warps: tuning knobs (benchmarks/rms_norm.py); N must be a multiple of rows."""
  n, d = x.shape
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  kwargs = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu
    kwargs["compiler_params"] = plgpu.CompilerParams(num_warps=num_warps, num_stages=1)
  return pl.pallas_call(
      functools.partial(_kernel, rows=rows, cols=col_tile(d), d=d), grid=(n // rows,),
      out_shape=[jax.ShapeDtypeStruct((n, d), x.dtype),
                 jax.ShapeDtypeStruct((n // rows * d,), jnp.float32)],
      interpret=interpret, name="rms_norm_bwd", **kwargs)(x, dy, r, scale)
