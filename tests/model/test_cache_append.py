"""The one-kernel k/v append (Pallas interpret mode on CPU) against XLA's scatter, and in the model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.model import attention, cache_append, config, decode_attention, kv_cache, qwen2


def _scatter(k_new, v_new, kc, vc, end):
  rows = jnp.arange(kc.shape[0])[:, None]
  slots = end[:, None]
  return (kc.at[rows, slots].set(k_new.astype(kc.dtype), mode="drop"),
          vc.at[rows, slots].set(v_new.astype(vc.dtype), mode="drop"))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_append_equals_scatter_including_dropped_rows(dtype):
  b, s, kh, dh = 5, 32, 2, 8
  ks = jax.random.split(jax.random.PRNGKey(0), 4)
  kc = jax.random.normal(ks[0], (b, s, kh, dh), dtype)
  vc = jax.random.normal(ks[1], (b, s, kh, dh), dtype)
  k_new = jax.random.normal(ks[2], (b, 1, kh, dh), jnp.float32)       # cast to the cache dtype
  v_new = jax.random.normal(ks[3], (b, 1, kh, dh), jnp.float32)
  end = jnp.array([0, 7, 31, 32, 40], jnp.int32)                       # last two: past the end
  want = _scatter(k_new, v_new, kc, vc, end)
  got = cache_append.append(k_new, v_new, kc, vc, end, interpret=True)
  for g, w, old in zip(got, want, (kc, vc)):
    assert g.dtype == dtype
    np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))
  # the dropped rows really are untouched, and row 1 changed only at slot 7
  np.testing.assert_array_equal(np.asarray(got[0][3:]), np.asarray(kc[3:]))
  changed = np.any(np.asarray(got[0][1]) != np.asarray(kc[1]), axis=(1, 2))
  assert changed.tolist() == [i == 7 for i in range(s)]


def test_supported_needs_a_power_of_two_row():
  assert cache_append.supported((1, 16, 2, 64))
  assert not cache_append.supported((1, 16, 3, 64))


def test_model_decode_with_append_equals_scatter(monkeypatch):
  """Rows above WRITE_MAX_ROWS: one decode step through the append kernel gives the scatter
  path's logits and caches (attn_impl="pallas", interpret mode)."""
  cfg = config.get_config("tiny")
  params = qwen2.init_params(cfg, jax.random.PRNGKey(1))
  b, prompt = 3, 5
  monkeypatch.setattr(decode_attention, "WRITE_MAX_ROWS", 0)          # every batch "large"
  tokens = jax.random.randint(jax.random.PRNGKey(2), (b, prompt), 1, cfg.vocab_size)
  cache = kv_cache.init_cache(cfg, b, 32, jnp.float32, per_layer=True)   # the sampler's layout
  _, cache = qwen2.apply(params, cfg, tokens, cache=cache, attn_impl="xla", scan_layers=False)
  step = jnp.array([[3], [4], [5]], jnp.int32)
  calls = []
  real = attention.append_decode
  monkeypatch.setattr(attention, "append_decode", lambda *a: calls.append(1) or real(*a))
  outs = {}
  for on in (True, False):
    monkeypatch.setattr(cache_append, "ENABLED", on)
    outs[on] = qwen2.apply(params, cfg, step, cache=cache, attn_impl="pallas", scan_layers=False)
  assert len(calls) == cfg.num_layers                                   # the kernel ran, per layer
  (la, ca), (lb, cb) = outs[True], outs[False]
  np.testing.assert_allclose(np.asarray(la), np.asarray(lb), rtol=1e-5, atol=1e-5)
  for x, y in zip(jax.tree.leaves(ca), jax.tree.leaves(cb)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_append_rows_reads_its_heads_from_a_shared_array():
  """append_rows takes the new k/v from rows [B, R, Dh] at `first` (new_rows' layout: the padded
  queries first) and writes them as append does; a layout that cannot hold them is an error."""
  b, s, kh, dh, h = 3, 32, 2, 16, 4
  ks = jax.random.split(jax.random.PRNGKey(3), 5)
  kc, vc = (jax.random.normal(k, (b, s, kh, dh), jnp.float32) for k in ks[:2])
  q = jax.random.normal(ks[2], (b, 1, h, dh), jnp.float32)
  k_new, v_new = (jax.random.normal(k, (b, 1, kh, dh), jnp.float32) for k in ks[3:])
  end = jnp.array([0, 31, 32], jnp.int32)                              # the last: dropped
  rows = decode_attention.new_rows(q, k_new, v_new)
  first = decode_attention.kv_row(kh)
  assert rows.shape == (b, first + 2 * kh, dh)
  got = cache_append.append_rows(rows, kc, vc, end, first=first, interpret=True)
  for g, w in zip(got, _scatter(k_new, v_new, kc, vc, end)):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  with pytest.raises(ValueError, match="cannot hold 2 key and 2 value heads"):
    cache_append.append_rows(rows, kc, vc, end, first=first + 1, interpret=True)
  with pytest.raises(ValueError, match="cannot hold"):
    cache_append.append_rows(rows[:, :first + 3], kc, vc, end, first=first, interpret=True)


def test_model_decode_with_shared_rows_equals_two_arrays(monkeypatch):
  """attention.SHARED_ROWS: the append and attend kernels read one array (one XLA fusion makes
  it); logits and caches equal the two-array path, and every kernel's operand is that array."""
  cfg = config.get_config("tiny")
  kh, dh = cfg.num_kv_heads, cfg.dim_per_head
  params = qwen2.init_params(cfg, jax.random.PRNGKey(1))
  b = 3
  monkeypatch.setattr(decode_attention, "WRITE_MAX_ROWS", 0)          # every batch "large"
  tokens = jax.random.randint(jax.random.PRNGKey(2), (b, 5), 1, cfg.vocab_size)
  run = lambda t, c, impl: qwen2.apply(params, cfg, t, cache=c, attn_impl=impl, scan_layers=False,
                                       compute_dtype=jnp.float32)    # q in the cache's dtype
  cache = kv_cache.init_cache(cfg, b, 32, jnp.float32, per_layer=True)
  _, cache = run(tokens, cache, "xla")
  step = jnp.array([[3], [4], [5]], jnp.int32)
  fwd = lambda c: run(step, c, "pallas")
  outs = {}
  for on in (True, False):
    monkeypatch.setattr(attention, "SHARED_ROWS", on)
    outs[on] = fwd(cache)
    jaxpr = jax.make_jaxpr(lambda c: fwd(c))(cache).jaxpr   # a new function: no cached trace
    calls = [e for e in _eqns(jaxpr) if e.primitive.name == "pallas_call"]
    assert len(calls) == 2 * cfg.num_layers                 # an append and an attend a layer
    shapes = {tuple(e.invars[1].aval.shape) for e in calls}
    rows = (b, decode_attention.kv_row(kh) + 2 * kh, dh)
    assert (shapes == {rows}) if on else (rows not in shapes)
  (la, ca), (lb, cb) = outs[True], outs[False]
  np.testing.assert_allclose(np.asarray(la), np.asarray(lb), rtol=1e-6, atol=1e-6)
  for x, y in zip(jax.tree.leaves(ca), jax.tree.leaves(cb)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _eqns(jaxpr):
  """Every equation of a jaxpr and of the jitted calls inside it (not kernel bodies)."""
  for e in jaxpr.eqns:
    yield e
    if e.primitive.name != "pallas_call" and "jaxpr" in e.params:
      yield from _eqns(getattr(e.params["jaxpr"], "jaxpr", e.params["jaxpr"]))
