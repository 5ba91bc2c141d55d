"""The attention kernel that also does the q/k/v bias, row scale and RoPE (interpret mode here)
equals the XLA arithmetic followed by decode_attend_write, and the model's decode step gives the
same logits and caches with it as without."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.model import (config as mcfg, decode_attention as da,
                                  decode_attention_rope as dar, kv_cache, qwen2)


def _reference(y, rs, bias, pos, kc, vc, end, H, K, dh, theta, splits):
  """The XLA path (qwen2._dense + bias + rope), then the k/v-appending kernel."""
  b, dt = y.shape[0], y.dtype
  yy = (y if rs is None else (y * rs).astype(dt)) + bias
  q, k, v = jnp.split(yy, [H * dh, (H + K) * dh], axis=-1)
  q = qwen2.rope(q.reshape(b, 1, H, dh), pos, theta)
  k = qwen2.rope(k.reshape(b, 1, K, dh), pos, theta)
  return da.decode_attend_write(q, k, v.reshape(b, 1, K, dh), kc, vc, end, interpret=True,
                                splits=splits)


@pytest.mark.parametrize("b,H,K,dh,s,ends,scaled,splits", [
    (2, 12, 2, 128, 768, [0, 300], True, None),       # 1.5B heads, folded norm's row scale
    (2, 12, 2, 128, 768, [0, 300], True, 1),          # one program a row: in-kernel normalise
    (3, 4, 2, 32, 64, [5, 63, 64], False, None),      # unfolded; a full row drops its token
])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_equals_xla_projection_then_write_kernel(b, H, K, dh, s, ends, scaled, splits, dtype):
  rng = np.random.default_rng(b * 7 + dh)
  y = jnp.asarray(rng.normal(size=(b, 1, (H + 2 * K) * dh)), dtype)
  rs = jnp.asarray(rng.uniform(0.5, 2, size=(b, 1, 1)), jnp.float32) if scaled else None
  bias = jnp.asarray(rng.normal(size=((H + 2 * K) * dh,)), dtype)
  end = jnp.asarray(ends, jnp.int32)
  pos = (end + 3)[:, None]
  kc, vc = (jnp.asarray(rng.normal(size=(b, s, K, dh)), dtype) for _ in range(2))
  want = _reference(y, rs, bias, pos, kc, vc, end, H, K, dh, 1e6, splits)
  got = dar.decode_attend_write_rope(y, rs, bias, pos, kc, vc, end, heads=H, kv_heads=K,
                                     theta=1e6, interpret=True, splits=splits)
  # f32: cos/sin and fused multiply-adds may round differently; bf16: at most one ulp
  tol = 1e-4 if dtype == jnp.float32 else 1.6e-2
  for w, g in zip(want, got):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                               atol=tol, rtol=tol)


def test_rejects_shapes_it_cannot_take():
  y = jnp.zeros((1, 1, 8 * 16))
  c = jnp.zeros((1, 64, 2, 16))
  with pytest.raises(ValueError, match="decode_attend_write_rope"):
    dar.decode_attend_write_rope(y, None, jnp.zeros((8 * 16,)), jnp.zeros((1, 1), jnp.int32),
                                 c, c, jnp.zeros((1,), jnp.int32), heads=4, kv_heads=2,
                                 theta=1e4, interpret=True)


def _decode(params, cfg, dtype, enabled):
  old = dar.ENABLED
  dar.ENABLED = enabled
  try:
    cache = kv_cache.init_cache(cfg, 2, 32, dtype, per_layer=True)
    fwd = jax.jit(lambda p, t, c, s: qwen2.apply(p, cfg, t, segment_ids=s, cache=c,
                                                 attn_impl="pallas", compute_dtype=dtype,
                                                 scan_layers=False))
    toks = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 8)))
    logits, cache = fwd(params, toks, cache, jnp.asarray([[1] * 8, [1] * 5 + [0] * 3]))
    out, nxt = [], jnp.argmax(logits[jnp.arange(2), cache["end"] - 1], -1)[:, None]
    for _ in range(3):
      logits, cache = fwd(params, nxt, cache, jnp.ones((2, 1), jnp.int32))
      out.append(np.asarray(logits[:, 0], np.float32))
      nxt = jnp.argmax(logits[:, 0], -1)[:, None]
    step = str(jax.make_jaxpr(lambda c: qwen2.apply(
        params, cfg, nxt, cache=c, attn_impl="pallas", compute_dtype=dtype,
        scan_layers=False))(cache))
    return out, cache, "decode_attention_write_rope" in step
  finally:
    dar.ENABLED = old


@pytest.mark.parametrize("linear_impl", ["xla", "xla_folded"])
def test_model_decode_step_same_with_and_without(linear_impl):
  cfg = mcfg.PRESETS["tiny"].replace(hidden_size=128, num_heads=4, num_kv_heads=2)   # Dh 32
  params = qwen2.decode_layout(qwen2.init_params(cfg, jax.random.PRNGKey(0), jnp.float32,
                                                 std=0.1), cfg, jnp.float32, linear_impl)
  base, base_cache, used_off = _decode(params, cfg, jnp.float32, enabled=False)
  got, got_cache, used_on = _decode(params, cfg, jnp.float32, enabled=True)
  assert used_on and not used_off
  for a, b in zip(base, got):
    np.testing.assert_allclose(a, b, atol=1e-4)
  for name in ("k", "v"):
    for a, b in zip(base_cache[name], got_cache[name]):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
