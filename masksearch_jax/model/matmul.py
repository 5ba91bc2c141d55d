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


# Rows up to which split_k_einsum splits (one-token decode steps); longer chunks (prefill,
# splices) run as one gemm over the same weights.
SPLIT_K_MAX_ROWS = 256


def split_k_einsum(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [B, T, K] times a weight stored split along K, w [S, K / S, N] -> [B, T, N] in x's dtype.

  For the small decode projections (q/k/v and o of the 1.5B: [B, 1536] x [1536, <= 2048]) whose
  XLA gemms stream their weights at 1.0-1.7 TB/s on an H200 (few output tiles leave most SMs
  idle; benchmarks/RESULTS.md): S products over K / S each, as one batched gemm with S times the
  programs, and their f32 sum, which XLA can fuse into the consumer (bias + RoPE, residual add).
  Accumulated in f32 and rounded once, as the single gemm is. Opt-in (qwen2.DECODE_SPLIT_K).
  """
  b, t, k = x.shape
  s = w.shape[0]
  if b * t == 1 or b * t > SPLIT_K_MAX_ROWS:
    return rows_einsum("btk,kn->btn", x, w.reshape(k, -1))
  part = jnp.einsum("btsk,skn->sbtn", x.reshape(b, t, s, k // s), w,
                    preferred_element_type=jnp.float32)                      # [S, B, T, N]
  return jnp.sum(part, axis=0).astype(x.dtype)
