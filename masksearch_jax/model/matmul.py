"""Mixed-precision matmul helpers.

`einsum_f32_out` returns float32 results of a (bf16) product — what logits need for a stable
softmax — while its backward pass runs in the operands' dtype. Without it, autodiff sees a
float32 cotangent and XLA runs the two backward products of the [tokens, vocab] unembedding in
float32/TF32: measured on an H100 (1.5B, 16k tokens) that alone cost ~50 ms of a ~400 ms step.
With float32 operands (tests) it is an ordinary float32 einsum, gradients included.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def einsum_f32_out(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
  return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32)


def _fwd(spec, x, w):
  return einsum_f32_out(spec, x, w), (x, w)


def _bwd(spec, res, g):
  x, w = res
  _, vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), x, w)
  return vjp(g.astype(jnp.result_type(x, w)))


einsum_f32_out.defvjp(_fwd, _bwd)


# XLA:GPU strength-reduces a vector x matrix dot whose operands hold fewer elements than this
# (xla/service/gpu/transforms/algebraic_simplifier.cc); larger ones already run as gemms, and a
# zero row there would only add a pad kernel per call (~1.4 us each in an H100 profile).
_XLA_GPU_SMALL_DOT = 10_000_000


def rows_einsum(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
  """`jnp.einsum(spec, x, w)` for activations x [B, T, ...] times a weight, that stays a matmul
  when B * T == 1 (batch-1 decoding).

  XLA:GPU rewrites a vector-times-matrix product whose operands hold < 10M elements into a
  multiply fusion that writes the whole [in, out] product to memory and a reduction that reads it
  back. Measured on an H100 (1.5B, batch 1): the q/k/v and o projections then took 617 us of a
  2.26 ms decode step for 308 MB of weights (~100 us at the copy bandwidth). A second, zero row
  behind an optimization barrier (XLA cannot see it is zero, so the operand is not a vector)
  keeps the product a gemm; the extra row costs one more row of a weight-bound matmul. Products
  at or above XLA's size threshold are left alone. Batch-1 decode of the 1.5B went from 427 to
  521 tok/s with it (benchmarks/RESULTS.md).
  """
  if x.shape[0] * x.shape[1] != 1 or x.size + w.size >= _XLA_GPU_SMALL_DOT:
    return jnp.einsum(spec, x, w)
  x2 = jax.lax.optimization_barrier(jnp.concatenate([x, jnp.zeros_like(x)], axis=0))
  y = jax.lax.optimization_barrier(jnp.einsum(spec, x2, w))    # the slice must not move inside
  return y[:1]
