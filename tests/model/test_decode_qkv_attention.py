"""The decode attention straight from the q/k/v product (Pallas interpret mode on CPU) equals bias +
RoPE + scatter into the cache + XLA attention; in the model it equals the other decode paths."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.model import attention, config, decode_qkv_attention as dq, kv_cache, qwen2


def _reference(y, bias, pos, k, v, end, h, theta):
  """What the model did before: bias, RoPE on q and k, scatter k/v at end (drop past S), attend."""
  b, s, kh, dh = k.shape
  yb = y + bias
  q = qwen2.rope(yb[:, :h * dh].reshape(b, 1, h, dh), pos[:, None], theta)
  kn = qwen2.rope(yb[:, h * dh:(h + kh) * dh].reshape(b, 1, kh, dh), pos[:, None], theta)
  vn = yb[:, (h + kh) * dh:].reshape(b, 1, kh, dh)
  rows, slots = jnp.arange(b)[:, None], end[:, None]
  k2 = k.at[rows, slots].set(kn.astype(k.dtype), mode="drop")
  v2 = v.at[rows, slots].set(vn.astype(v.dtype), mode="drop")
  mask = jnp.arange(s)[None, None, :] < (end + 1)[:, None, None]
  return attention.attend_xla(q.astype(k.dtype), k2, v2, mask), k2, v2


def _inputs(b, h, kh, dh, s, ends, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  r = lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)
  end = jnp.asarray(ends, jnp.int32)
  return r(b, (h + 2 * kh) * dh), r((h + 2 * kh) * dh), end + 3, r(b, s, kh, dh), r(b, s, kh, dh), end


def _rope_cs(pos, dh, theta):
  return qwen2.rope_table(pos, dh, theta)


@pytest.mark.parametrize("b,h,kh,dh,s,ends,splits", [
    (4, 12, 2, 32, 768, [0, 63, 64, 700], None),   # block edges; default splits (partials + merge)
    (4, 12, 2, 32, 768, [0, 63, 64, 700], 1),      # one program a (row, kv head): direct output
    (4, 12, 2, 32, 768, [0, 255, 256, 700], 3),    # the new slot at a program's edges
    (4, 12, 2, 32, 48, [47, 48, 100, 5], None),    # full rows: the token dropped, S slots attended
    (2, 14, 2, 64, 96, [33, 95], 1),               # the 0.5B head shape (G = 7)
    (2, 15, 1, 16, 64, [10, 63], None),            # 15 query heads a kv head (the tile's limit)
])
def test_equals_bias_rope_scatter_attend(b, h, kh, dh, s, ends, splits):
  theta = 1e6
  y, bias, pos, k, v, end = _inputs(b, h, kh, dh, s, ends)
  want, k2, v2 = _reference(y, bias, pos, k, v, end, h, theta)
  out, kc, vc = dq.decode_attend_qkv(y, bias, _rope_cs(pos, dh, theta), k, v, end, num_heads=h,
                                     interpret=True, splits=splits)
  assert out.shape == (b, 1, h, dh)
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=3e-6, rtol=0)
  np.testing.assert_allclose(np.asarray(kc), np.asarray(k2), atol=2e-6, rtol=0)
  np.testing.assert_array_equal(np.asarray(vc), np.asarray(v2))
  # only slot `end` of each row changed (nothing else written)
  changed = np.any(np.asarray(kc) != np.asarray(k), axis=(2, 3))
  want_changed = np.arange(s)[None, :] == np.minimum(np.asarray(end), s + 1)[:, None]
  np.testing.assert_array_equal(changed, want_changed)


def test_bfloat16_within_rounding():
  y, bias, pos, k, v, end = _inputs(3, 12, 2, 128, 256, [200, 7, 255], jnp.bfloat16, seed=5)
  want, k2, _ = _reference(y, bias, pos, k, v, end, 12, 1e6)
  out, kc, _ = dq.decode_attend_qkv(y, bias, _rope_cs(pos, 128, 1e6), k, v, end, num_heads=12,
                                    interpret=True)
  assert out.dtype == kc.dtype == jnp.bfloat16
  f = lambda x: np.asarray(x, np.float32)
  np.testing.assert_allclose(f(out), f(want), atol=3e-2, rtol=0)
  np.testing.assert_allclose(f(kc), f(k2), atol=3e-2, rtol=2e-2)


def test_supported_and_bad_shapes_fail_clearly():
  assert dq.supported(12, (1, 768, 2, 128)) and dq.supported(14, (1, 96, 2, 64))
  assert not dq.supported(12, (1, 768, 2, 8))         # tl.dot needs Dh >= 16
  assert not dq.supported(32, (1, 768, 2, 128))       # 16 query heads a kv head: no row for the key
  assert not dq.supported(12, (1, 100, 2, 128))       # no key block divides 100 slots
  y, bias, pos, k, v, end = _inputs(2, 12, 2, 32, 64, [3, 4])
  with pytest.raises(ValueError, match="decode_attend_qkv: expected y"):
    dq.decode_attend_qkv(y[:, :-32], bias, _rope_cs(pos, 32, 1e6), k, v, end, num_heads=12,
                         interpret=True)
  with pytest.raises(ValueError, match="rope_cs"):
    dq.decode_attend_qkv(y, bias, _rope_cs(pos, 64, 1e6), k, v, end, num_heads=12,
                         interpret=True)
  with pytest.raises(ValueError, match="at most 15 query heads"):
    y, bias, pos, k, v, end = _inputs(2, 16, 1, 16, 64, [3, 4])
    dq.decode_attend_qkv(y, bias, _rope_cs(pos, 16, 1e6), k, v, end, num_heads=16,
                         interpret=True)


def _pallas_calls(jaxpr):
  for e in jaxpr.eqns:
    if e.primitive.name == "pallas_call":
      yield e
    elif "jaxpr" in e.params:
      yield from _pallas_calls(getattr(e.params["jaxpr"], "jaxpr", e.params["jaxpr"]))


def _name(eqn) -> str:
  """A pallas_call's kernel name (its parameter's name differs between jax versions)."""
  p = eqn.params
  return p["name"] if "name" in p else p["name_and_src_info"].name


@pytest.mark.parametrize("linear_impl", ["xla", "xla_folded"])
@pytest.mark.parametrize("b", [2, 3])
def test_model_decode_step_equals_the_other_kernels(monkeypatch, linear_impl, b):
  """attention.QKV_KERNEL: one kernel a layer (its name in the step's jaxpr) and the same logits
  and caches as the decode path without it (the appending or append + attend kernels)."""
  cfg = config.get_config("small")                     # Dh = 32, 4 query heads a kv head
  params = qwen2.decode_layout(qwen2.init_params(cfg, jax.random.PRNGKey(1)), cfg, jnp.float32,
                               linear_impl)
  if b == 3:
    monkeypatch.setattr(attention.decode_attention, "WRITE_MAX_ROWS", 2)   # the append kernel
  run = lambda t, c, impl: qwen2.apply(params, cfg, t, cache=c, attn_impl=impl, scan_layers=False,
                                       compute_dtype=jnp.float32)
  tokens = jax.random.randint(jax.random.PRNGKey(2), (b, 5), 1, cfg.vocab_size)
  cache = kv_cache.init_cache(cfg, b, 64, jnp.float32, per_layer=True)
  _, cache = run(tokens, cache, "xla")
  cache["end"] = cache["end"] - jnp.arange(b, dtype=jnp.int32)     # rows of different lengths
  step = jnp.arange(3, 3 + b, dtype=jnp.int32)[:, None]
  outs = {}
  for on in (True, False):
    monkeypatch.setattr(attention, "QKV_KERNEL", on)
    outs[on] = run(step, cache, "pallas")
    names = [_name(e) for e in
             _pallas_calls(jax.make_jaxpr(lambda c: run(step, c, "pallas"))(cache).jaxpr)]
    assert (names.count("decode_attention_qkv") == cfg.num_layers) == on, names
  (la, ca), (lb, cb) = outs[True], outs[False]
  np.testing.assert_allclose(np.asarray(la), np.asarray(lb), rtol=1e-5, atol=1e-5)
  for x, y in zip(jax.tree.leaves(ca), jax.tree.leaves(cb)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)
