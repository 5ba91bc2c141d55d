"""The one-kernel residual add + RMSNorm of decode steps (interpret mode here) equals the XLA
arithmetic it replaces, and the model's decode step gives the same logits with it as without."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.model import config as mcfg, kv_cache, qwen2, residual_norm as rn


@pytest.mark.parametrize("d,dtype", [(1536, jnp.bfloat16), (896, jnp.float32), (64, jnp.bfloat16)])
def test_add_norm_equals_xla(d, dtype):
  rng = np.random.default_rng(d)
  h = jnp.asarray(rng.normal(size=(3, 1, d)), dtype)
  y = jnp.asarray(rng.normal(size=(3, 1, d)), dtype)
  gain = jnp.asarray(rng.normal(size=(d,)), dtype)
  want_h = h + y
  h1, (x, scale) = rn.add_norm(h, y, gain, eps=1e-6, interpret=True)
  np.testing.assert_array_equal(np.asarray(h1), np.asarray(want_h))
  assert scale is None
  want_x = qwen2.rms_norm(want_h, gain, 1e-6)
  # equal up to the order of the f32 sum of squares: at most one rounding step of the output
  tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
  np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(want_x, np.float32),
                             rtol=tol, atol=tol)
  h2, (x2, scale2) = rn.add_norm(h, y, None, eps=1e-6, interpret=True)      # folded layout
  np.testing.assert_array_equal(np.asarray(h2), np.asarray(want_h))
  np.testing.assert_array_equal(np.asarray(x2), np.asarray(h2))
  assert scale2.shape == (3, 1, 1) and scale2.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(scale2), np.asarray(qwen2.rms_scale(want_h, 1e-6)),
                             rtol=1e-6)


def test_chunk_and_shape_errors():
  assert [rn.chunk(d) for d in (1536, 896, 2048, 3584, 64)] == [512, 128, 1024, 512, 64]
  with pytest.raises(ValueError, match="one token per row"):
    rn.add_norm(jnp.zeros((1, 2, 64)), jnp.zeros((1, 2, 64)), None, eps=1e-6, interpret=True)


def _decode(params, cfg, dtype, enabled, steps=3):
  old = rn.ENABLED
  rn.ENABLED = enabled
  try:
    cache = kv_cache.init_cache(cfg, 2, 32, dtype, per_layer=True)
    fwd = jax.jit(lambda p, t, c, s: qwen2.apply(p, cfg, t, segment_ids=s, cache=c,
                                                 attn_impl="pallas", compute_dtype=dtype,
                                                 scan_layers=False))
    toks = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 8)))
    logits, cache = fwd(params, toks, cache, jnp.asarray([[1] * 8, [1] * 5 + [0] * 3]))
    out, nxt = [], jnp.argmax(logits[jnp.arange(2), cache["end"] - 1], -1)[:, None]
    for _ in range(steps):
      logits, cache = fwd(params, nxt, cache, jnp.ones((2, 1), jnp.int32))
      out.append(np.asarray(logits[:, 0], np.float32))
      nxt = jnp.argmax(logits[:, 0], -1)[:, None]
    step = jax.make_jaxpr(lambda c: qwen2.apply(params, cfg, nxt, cache=c, attn_impl="pallas",
                                                compute_dtype=dtype, scan_layers=False))(cache)
    return out, "residual_rms_norm" in str(step)
  finally:
    rn.ENABLED = old


@pytest.mark.parametrize("linear_impl,dtype,atol", [("xla", jnp.float32, 1e-5),
                                                    ("xla_folded", jnp.float32, 1e-5),
                                                    ("xla_folded", jnp.bfloat16, 0.1)])
def test_decode_step_same_logits_with_and_without(linear_impl, dtype, atol):
  cfg = mcfg.PRESETS["tiny"]
  params = qwen2.decode_layout(qwen2.init_params(cfg, jax.random.PRNGKey(0), jnp.float32,
                                                 std=0.1), cfg, dtype, linear_impl=linear_impl)
  base, used_off = _decode(params, cfg, dtype, enabled=False)
  fused, used_on = _decode(params, cfg, dtype, enabled=True)
  assert used_on and not used_off
  for a, b in zip(base, fused):
    np.testing.assert_allclose(a, b, atol=atol)
    np.testing.assert_array_equal(np.argmax(a, -1), np.argmax(b, -1))


def test_not_used_outside_unrolled_pallas_decode():
  cfg = mcfg.PRESETS["tiny"]
  params = qwen2.init_params(cfg, jax.random.PRNGKey(0), jnp.float32)
  dp = qwen2.decode_layout(params, cfg, jnp.float32)
  cache = kv_cache.init_cache(cfg, 2, 32, jnp.float32, per_layer=True)
  one = jnp.ones((2, 1), jnp.int32)
  jaxpr = lambda p, t, impl: str(jax.make_jaxpr(lambda c: qwen2.apply(
      p, cfg, t, cache=c, attn_impl=impl, compute_dtype=jnp.float32, scan_layers=False))(cache))
  assert "residual_rms_norm" in jaxpr(dp, one, "pallas")
  assert "residual_rms_norm" not in jaxpr(dp, one, "xla")                  # XLA attention
  assert "residual_rms_norm" not in jaxpr(dp, jnp.ones((2, 4), jnp.int32), "pallas")  # a chunk
