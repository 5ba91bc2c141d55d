"""Masked CE and token log-probs (full, chunked and fused) vs a NumPy reference: values and gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.train import losses


def _np_logsoftmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _data(seed=0, b=2, t=5, d=8, v=37):
  rng = np.random.default_rng(seed)
  h = rng.normal(size=(b, t, d)).astype(np.float32)
  w = rng.normal(size=(v, d)).astype(np.float32) * 0.7
  tgt = rng.integers(0, v, size=(b, t)).astype(np.int32)
  tgt[0, 0], tgt[1, -1] = 0, v - 1             # both ends of the vocab (first / clamped chunk)
  mask = (rng.random((b, t)) < 0.6).astype(np.float32)
  mask[0, 0] = mask[1, -1] = 1
  return h, w, tgt, mask


def _np_ce_and_grads(h, w, tgt, mask):
  """CE = -sum mask * log softmax(h W^T)[tgt]; dlogits = mask (softmax - onehot)."""
  logits = h.astype(np.float64) @ w.T.astype(np.float64)            # [B, T, V]
  logp = _np_logsoftmax(logits)
  tok = np.take_along_axis(logp, tgt[..., None], -1)[..., 0]
  loss = -(tok * mask).sum()
  dlogits = (np.exp(logp) - np.eye(w.shape[0])[tgt]) * mask[..., None]
  dh = dlogits @ w
  dw = np.einsum("btv,btd->vd", dlogits, h)
  return tok, loss, dh, dw


def test_full_logits_ce_matches_numpy():
  h, w, tgt, mask = _data()
  logits = jnp.asarray(h) @ jnp.asarray(w).T
  tok, loss, _, _ = _np_ce_and_grads(h, w, tgt, mask)
  np.testing.assert_allclose(losses.token_logprobs(logits, tgt), tok, rtol=1e-5, atol=1e-5)
  s, n = losses.masked_cross_entropy(logits, tgt, mask)
  assert float(n) == mask.sum()
  np.testing.assert_allclose(s, loss, rtol=1e-5)
  s16, _ = losses.masked_cross_entropy(logits.astype(jnp.bfloat16), tgt, mask)
  assert s16.dtype == jnp.float32
  np.testing.assert_allclose(s16, loss, rtol=2e-2)


@pytest.mark.parametrize("token_chunk, vocab_chunk", [(4, 8), (3, 37), (64, 64)])
def test_chunked_matches_numpy_value_and_grad(token_chunk, vocab_chunk):
  # (4, 8): 10 tokens padded to 12, 37 = 4 x 8 + 5 -> a clamped, overlapping last vocab chunk.
  h, w, tgt, mask = _data()
  tok, loss, dh, dw = _np_ce_and_grads(h, w, tgt, mask)
  kw = dict(token_chunk=token_chunk, vocab_chunk=vocab_chunk)

  @jax.jit
  def run(h, w):
    (s, n), grads = jax.value_and_grad(
        lambda a, b: losses.chunked_cross_entropy(a, b, tgt, mask, **kw), argnums=(0, 1),
        has_aux=True)(h, w)
    return s, n, grads, losses.chunked_token_logprobs(h, w, tgt, **kw)

  s, n, (gh, gw), lp = run(h, w)
  np.testing.assert_allclose(s, loss, rtol=1e-5)
  assert float(n) == mask.sum()
  np.testing.assert_allclose(gh, dh, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gw, dw, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(lp, tok, rtol=1e-5, atol=1e-5)


def test_chunked_bf16_inputs_close_to_f32():
  h, w, tgt, mask = _data(seed=1)
  _, loss, _, _ = _np_ce_and_grads(h, w, tgt, mask)
  s, _ = jax.jit(functools.partial(losses.chunked_cross_entropy, token_chunk=4, vocab_chunk=8))(
      jnp.asarray(h, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), tgt, mask)
  assert s.dtype == jnp.float32
  np.testing.assert_allclose(s, loss, rtol=2e-2)


def test_masked_tokens_get_zero_gradient_and_shape_error():
  h, w, tgt, mask = _data(seed=2)
  gh = jax.jit(jax.grad(lambda a: losses.chunked_cross_entropy(a, w, tgt, mask, token_chunk=4,
                                                               vocab_chunk=8)[0]))(h)
  assert np.all(np.asarray(gh)[mask == 0] == 0.0)
  with pytest.raises(ValueError, match="vocab, d_model=8"):
    losses.chunked_token_logprobs(h, w.T, tgt)


def test_chunked_backward_never_materialises_full_logits():
  n, v, d = 256, 16384, 32
  h, w = jnp.zeros((1, n, d)), jnp.zeros((v, d))
  t, m = jnp.zeros((1, n), jnp.int32), jnp.ones((1, n))
  f = lambda a, b: losses.chunked_cross_entropy(a, b, t, m, token_chunk=64, vocab_chunk=1024)[0]
  mem = jax.jit(jax.grad(f, argnums=(0, 1))).lower(h, w).compile().memory_analysis()
  if mem is None:
    pytest.skip("no memory analysis on this backend")
  full_logits = n * v * 4
  # what remains is the f32 [V, D] gradient accumulator (2 MiB) plus a few [64, 1024] tiles
  assert mem.temp_size_in_bytes < full_logits / 4, mem.temp_size_in_bytes


@pytest.mark.parametrize("token_chunk", [4, 3, 64])
def test_fused_matches_numpy_value_grad_and_accuracy(token_chunk):
  # 4: 10 tokens per row padded to 12; 64: one chunk. The gradient is made in the forward pass.
  h, w, tgt, mask = _data()
  _, loss, dh, dw = _np_ce_and_grads(h, w, tgt, mask)
  argmax_hits = ((h @ w.T).argmax(-1) == tgt) * mask

  @jax.jit
  def run(h, w):
    f = lambda a, b: losses.fused_cross_entropy(a, b, tgt, mask, token_chunk=token_chunk)
    loss2 = lambda a, b: (2.0 * f(a, b)[0], f(a, b))
    (_, (s, n, c)), grads = jax.value_and_grad(loss2, argnums=(0, 1), has_aux=True)(h, w)
    return s, n, c, grads, f(h, w)[0]                      # plain (undifferentiated) call too

  s, n, c, (gh, gw), s_plain = run(h, w)
  np.testing.assert_allclose(s, loss, rtol=1e-5)
  np.testing.assert_allclose(s_plain, loss, rtol=1e-5)
  assert float(n) == mask.sum() and float(c) == argmax_hits.sum()
  np.testing.assert_allclose(gh, 2.0 * dh, rtol=1e-4, atol=1e-5)     # the cotangent scales it
  np.testing.assert_allclose(gw, 2.0 * dw, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(gh)[mask == 0] == 0.0)
  with pytest.raises(ValueError, match="vocab, d_model=8"):
    losses.fused_cross_entropy(h, w.T, tgt, mask)


def test_fused_masked_out_of_range_target_stays_finite():
  """A masked-out target id outside the vocabulary (-1, V) contributes nothing and no NaN: the
  target logit is a clipped gather."""
  h, w, tgt, mask = _data()
  bad = np.where(mask == 0, -1, tgt)
  bad[0, -1], mask_b = w.shape[0], mask.copy()
  mask_b[0, -1] = 0
  ref = losses.fused_cross_entropy(h, w, np.where(mask_b == 0, 0, tgt), mask_b)[0]
  s, gh = jax.value_and_grad(lambda a: losses.fused_cross_entropy(a, w, bad, mask_b)[0])(h)
  np.testing.assert_allclose(s, ref, rtol=1e-6)
  assert np.all(np.isfinite(np.asarray(gh)))


def test_fused_bf16_logits_close_to_f32_logits():
  """logits_dtype=bfloat16: the product stores bf16 logits (checked in the jaxpr), the softmax
  stays f32; loss and gradients within bf16 rounding of the f32-logits loss."""
  rng = np.random.default_rng(3)
  h = jnp.asarray(rng.normal(0, 1, (2, 24, 16)), jnp.float32)
  w = jnp.asarray(rng.normal(0, 1, (300, 16)), jnp.float32)
  tgt = jnp.asarray(rng.integers(0, 300, (2, 24)))
  mask = jnp.ones((2, 24))
  f = lambda a, b, dt: losses.fused_cross_entropy(a, b, tgt, mask, token_chunk=16, logits_dtype=dt)[0]
  (s32, g32), (s16, g16) = (jax.value_and_grad(f, argnums=(0, 1))(h, w, dt)
                            for dt in (jnp.float32, jnp.bfloat16))
  np.testing.assert_allclose(s16, s32, rtol=5e-3)
  for a, b in zip(g16, g32):
    assert np.linalg.norm(np.asarray(a) - np.asarray(b)) < 2e-2 * np.linalg.norm(np.asarray(b))
  jaxpr = str(jax.make_jaxpr(jax.grad(f), static_argnums=2)(h, w, jnp.bfloat16))
  assert "preferred_element_type=bfloat16" in jaxpr and float(s16) != float(s32)


def test_fused_bf16_close_to_f32_and_saves_no_logits():
  h, w, tgt, mask = _data(seed=1)
  _, loss, dh, _ = _np_ce_and_grads(h, w, tgt, mask)
  f = lambda a, b: losses.fused_cross_entropy(a, b, tgt, mask, token_chunk=4)[0]
  s, (gh, gw) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(
      jnp.asarray(h, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16))
  assert s.dtype == jnp.float32 and gh.dtype == gw.dtype == jnp.bfloat16
  np.testing.assert_allclose(s, loss, rtol=2e-2)
  np.testing.assert_allclose(np.asarray(gh, np.float32), dh, atol=3e-2)
  n, v, d = 256, 16384, 32
  big = lambda a, b: losses.fused_cross_entropy(a, b, jnp.zeros((1, n), jnp.int32),
                                                jnp.ones((1, n)), token_chunk=64)[0]
  mem = jax.jit(jax.grad(big, argnums=(0, 1))).lower(
      jnp.zeros((1, n, d)), jnp.zeros((v, d))).compile().memory_analysis()
  if mem is not None:               # one [64, V] chunk's logits at a time, not [n, V]
    assert mem.temp_size_in_bytes < n * v * 4 / 2, mem.temp_size_in_bytes


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (virtual) devices")
@pytest.mark.parametrize("impl", ["chunked", "fused"])
def test_chunked_loss_keeps_rows_on_their_devices(impl):
  """With rows sharded over 8 devices, the chunked and fused losses (value and gradients) need no
  all-gather: each device scans its own rows' chunks. (Chunking the flattened tokens gathered
  every row onto every device: the whole batch's logits on each.)"""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
  rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  h, w = jnp.zeros((8, 64, 16)), jnp.zeros((96, 16))
  t, m = jnp.zeros((8, 64), jnp.int32), jnp.ones((8, 64))
  f = lambda a, b: losses.chunked_cross_entropy(a, b, t, m, token_chunk=128, vocab_chunk=96)[0]
  if impl == "fused":
    f = lambda a, b: losses.fused_cross_entropy(a, b, t, m, token_chunk=128)[0]
  hlo = jax.jit(jax.grad(f, argnums=(0, 1)), in_shardings=(rows, rep)).lower(
      jax.device_put(h, rows), jax.device_put(w, rep)).compile().as_text()
  assert "all-gather" not in hlo

