"""The one-kernel residual add + RMSNorm (Pallas interpret mode on CPU) equals the model's two XLA
steps, alone and inside a decode step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.model import add_norm, config, kv_cache, qwen2


def _xla(h, d, w, eps):
  s = h + d
  return s, qwen2.rms_norm(s, w, eps)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("n,dim", [(1, 128), (2, 1536), (5, 896)])
def test_equals_add_then_rms_norm(dtype, n, dim):
  ks = jax.random.split(jax.random.PRNGKey(n), 3)
  h, d = (jax.random.normal(k, (n, dim), jnp.float32).astype(dtype) * 3 for k in ks[:2])
  w = (1 + 0.1 * jax.random.normal(ks[2], (dim,))).astype(dtype)
  want_s, want_x = _xla(h, d, w, 1e-6)
  s, x = add_norm.add_rms_norm(h, d, w, eps=1e-6, interpret=True)
  assert s.dtype == x.dtype == dtype
  f = lambda a: np.asarray(a, np.float32)
  np.testing.assert_array_equal(f(s), f(want_s))                 # the same rounded sum
  tol = dict(rtol=1e-6, atol=1e-6) if dtype == jnp.float32 else dict(rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(f(x), f(want_x), **tol)


def test_bad_shapes_fail_clearly():
  h = jnp.ones((2, 192))
  with pytest.raises(ValueError, match="multiple of 128"):
    add_norm.add_rms_norm(h, h, jnp.ones(192), eps=1e-6, interpret=True)
  h = jnp.ones((2, 256))
  with pytest.raises(ValueError, match="must match"):
    add_norm.add_rms_norm(h, h.astype(jnp.bfloat16), jnp.ones(256), eps=1e-6, interpret=True)


def _names(jaxpr):
  for e in jaxpr.eqns:
    if e.primitive.name == "pallas_call":
      yield e.params["name"] if "name" in e.params else e.params["name_and_src_info"].name
    elif "jaxpr" in e.params:
      yield from _names(getattr(e.params["jaxpr"], "jaxpr", e.params["jaxpr"]))


def test_model_decode_step_equals_xla_add_and_norm(monkeypatch):
  """qwen2.DECODE_ADD_NORM: the kernel runs once a layer in a one-token step (not in the
  prefill), and logits and caches equal the XLA path's."""
  cfg = config.get_config("small")                       # hidden 256: two chunks of 128
  params = qwen2.decode_layout(qwen2.init_params(cfg, jax.random.PRNGKey(1)), cfg, jnp.float32)
  run = lambda t, c: qwen2.apply(params, cfg, t, cache=c, attn_impl="xla", scan_layers=False,
                                 compute_dtype=jnp.float32)
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 5), 1, cfg.vocab_size)
  cache = kv_cache.init_cache(cfg, 2, 32, jnp.float32, per_layer=True)
  step = jnp.array([[3], [4]], jnp.int32)
  outs = {}
  for on in (True, False):
    monkeypatch.setattr(qwen2, "DECODE_ADD_NORM", on)
    assert "add_rms_norm" not in list(_names(jax.make_jaxpr(lambda c: run(tokens, c))(cache).jaxpr))
    _, c1 = run(tokens, cache)
    names = list(_names(jax.make_jaxpr(lambda c: run(step, c))(c1).jaxpr))
    assert names.count("add_rms_norm") == (cfg.num_layers if on else 0), names
    outs[on] = run(step, c1)
  (la, ca), (lb, cb) = outs[True], outs[False]
  np.testing.assert_allclose(np.asarray(la), np.asarray(lb), rtol=1e-5, atol=1e-5)
  for x, y in zip(jax.tree.leaves(ca), jax.tree.leaves(cb)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)
