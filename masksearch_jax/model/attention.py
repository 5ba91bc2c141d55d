"""Attention kernels behind one signature, so the model never branches on hardware.

All implementations take q [B, T, H, Dh], k/v [B, S, K, Dh] (K divides H: grouped-query attention)
and a boolean mask [B, T, S] (True = may attend), and return [B, T, H, Dh] in q's dtype with the
softmax computed in float32.
  - "xla":   plain einsum + f32 softmax; runs everywhere, the reference.
  - "jax":   `jax.nn.dot_product_attention`, letting JAX pick (XLA on CPU/TPU).
  - "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, the fused GPU kernel.
`causal_only=True` promises that the mask is exactly the causal one (no padding, no packing,
no cache), which lets the fused kernels skip reading a mask at all.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "jax", "cudnn")
_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)


def attend_xla(q, k, v, mask):
  b, t, h, dh = q.shape
  kh = k.shape[2]
  g = h // kh
  q = q.reshape(b, t, kh, g, dh)
  scale = dh ** -0.5
  # [B, K, G, T, S] scores in f32 whatever the operand dtype.
  s = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
  s = jnp.where(mask[:, None, None, :, :], s, _NEG)
  p = jax.nn.softmax(s, axis=-1)
  o = jnp.einsum("bkgts,bskd->btkgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return o.reshape(b, t, h, dh).astype(q.dtype)


def attend(q, k, v, mask, *, impl: str = "xla", causal_only: bool = False):
  if impl == "xla":
    return attend_xla(q, k, v, mask)
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {impl!r}; choose from {IMPLEMENTATIONS}")
  implementation = "cudnn" if impl == "cudnn" else None
  if causal_only:
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
  return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, :, :],
                                      implementation=implementation)
