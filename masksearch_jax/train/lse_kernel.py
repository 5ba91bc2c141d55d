"""Log-sum-exp and argmax over the vocabulary in one read of the logits (a Pallas/Triton kernel).

Why: the fused SFT loss (losses.fused_cross_entropy) reads each chunk's [tokens, vocab] logits
once for the row max (argmax rides along) and once for the sum of exponentials before the pass
that writes the softmax gradient; at Qwen2.5's 151,936-token vocabulary one read of an 8192-token
chunk is 5 GB in f32 (2.5 GB in bf16), ~4.4 ms of the 1.5B SFT step on an H200. Here program i
streams rows [i*R, (i+1)*R) tile by tile and keeps, per row, the running max, the sum of
exp(x - running max) rescaled whenever the max grows (online softmax), and the first index of
the max: one read, one exponential a logit. (An XLA variadic reduce doing the same merge needs
two exponentials a merge and measured slower, benchmarks/RESULTS.md.)

Opt-in (`TrainConfig.loss_lse_impl="pallas"`; the slices leave it off, as RL's chunked loss and
several devices cannot use it): measured on an H200, +0.2 points of the 1.5B SFT step's MFU in two
interleaved rounds (benchmarks/RESULTS.md). Pallas interpret mode on CPU (tests); other backends
keep XLA. Vocabulary tiles must divide V exactly (no masked loads): the largest power of two
dividing V, up to 1024 (128 for Qwen2.5's 151,936).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

ROWS = 16                         # rows per program
_NEG = -3.0e38                    # finite start for the running max: exp(_NEG - m) is 0, not NaN


def tile(v: int, cap: int = 1024) -> int:
  """Vocabulary columns per loop trip: the largest power of two dividing v, at most cap."""
  t = 1
  while t * 2 <= cap and v % (t * 2) == 0:
    t *= 2
  return t


def available() -> bool:
  return jax.default_backend() in ("gpu", "cpu")


def supported(n: int, v: int) -> bool:
  """Row count a multiple of ROWS and a vocabulary tile of at least 64 columns."""
  return n % ROWS == 0 and tile(v) >= 64


def _kernel(x_ref, lse_ref, arg_ref, *, rows: int, cols: int, v: int):
  """x_ref [n, V] (whole array); lse_ref [n] f32, arg_ref [n] int32: rows of program i."""
  r0 = pl.program_id(0) * rows

  def body(t, carry):
    m, s, a = carry                                                     # [R] each
    x = x_ref[pl.ds(r0, rows), pl.ds(t * cols, cols)].astype(jnp.float32)  # [R, cols]
    t_max = jnp.max(x, axis=1)
    idx = t * cols + jax.lax.broadcasted_iota(jnp.int32, (rows, cols), 1)
    t_arg = jnp.min(jnp.where(x == t_max[:, None], idx, v), axis=1)    # first max in the tile
    m_new = jnp.maximum(m, t_max)
    s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(x - m_new[:, None]), axis=1)
    a = jnp.where(t_max > m, t_arg, a)                                   # ties keep the earlier
    return m_new, s, a

  init = (jnp.full((rows,), _NEG, jnp.float32), jnp.zeros((rows,), jnp.float32),
          jnp.zeros((rows,), jnp.int32))
  m, s, a = jax.lax.fori_loop(0, v // cols, body, init)
  lse_ref[pl.ds(r0, rows)] = m + jnp.log(s)
  arg_ref[pl.ds(r0, rows)] = a


@functools.partial(jax.jit, static_argnames=("interpret", "num_warps"))
def lse_argmax(logits: jax.Array, *, interpret: bool | None = None, num_warps: int = 4
               ) -> tuple[jax.Array, jax.Array]:
  """logits [n, V] (any float dtype, read as f32) -> (logsumexp [n] f32, argmax [n] int32, the
  lowest index on ties, as jnp.argmax). Rows that are all -inf give (-inf, 0), as XLA does."""
  n, v = logits.shape
  if not supported(n, v):
    raise ValueError(f"lse_argmax: {n} rows x {v} columns (rows must be a multiple of {ROWS}, "
                     f"and a power-of-two tile >= 64 must divide the vocabulary)")
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  kwargs = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu
    kwargs["compiler_params"] = plgpu.CompilerParams(num_warps=num_warps, num_stages=3)
  return pl.pallas_call(
      functools.partial(_kernel, rows=ROWS, cols=tile(v), v=v), grid=(n // ROWS,),
      out_shape=[jax.ShapeDtypeStruct((n,), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.int32)],
      interpret=interpret, name="lse_argmax", **kwargs)(logits)
