"""model/matmul.py: the mixed-precision and one-row matmul helpers compute plain einsums."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.model import matmul


@pytest.mark.parametrize("spec,xs,ws", [
    ("btd,de->bte", (1, 1, 8), (8, 6)),            # one row: the zero-row path
    ("btd,de->bte", (3, 2, 8), (8, 6)),            # several rows: plain einsum
    ("bthk,hkd->btd", (1, 1, 2, 4), (2, 4, 8)),    # the o projection, one row
    ("btd,dhk->bthk", (1, 1, 8), (8, 2, 4)),
    ("btd,de->bte", (1, 1, 4096), (4096, 2500)),   # at XLA's size threshold: plain einsum
])
def test_rows_einsum_equals_einsum_values_and_grads(spec, xs, ws):
  kx, kw = jax.random.split(jax.random.PRNGKey(0))
  x, w = jax.random.normal(kx, xs), jax.random.normal(kw, ws)
  want = jnp.einsum(spec, x, w)
  got = jax.jit(matmul.rows_einsum, static_argnums=0)(spec, x, w)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  loss = lambda f: (lambda a, b: jnp.sum(jnp.sin(f(spec, a, b))))
  g_want = jax.grad(loss(jnp.einsum), argnums=(0, 1))(x, w)
  g_got = jax.jit(jax.grad(loss(matmul.rows_einsum), argnums=(0, 1)))(x, w)
  for a, b in zip(g_got, g_want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_one_row_product_stays_a_dot_in_the_lowered_program():
  """The zero row is hidden behind a barrier, so the lowered program multiplies two rows."""
  x, w = jnp.ones((1, 1, 8)), jnp.ones((8, 6))
  text = jax.jit(matmul.rows_einsum, static_argnums=0).lower("btd,de->bte", x, w).as_text()
  assert "optimization_barrier" in text
  assert "tensor<2x1x8xf32>" in text
  big = jax.jit(matmul.rows_einsum, static_argnums=0).lower(
      "btd,de->bte", jnp.ones((1, 1, 4096)), jnp.ones((4096, 2500))).as_text()
  assert "optimization_barrier" not in big


def test_einsum_f32_out_returns_float32_and_bf16_grads():
  x = jnp.ones((2, 3, 4), jnp.bfloat16)
  w = jnp.ones((4, 5), jnp.bfloat16)
  y = matmul.einsum_f32_out("btd,dv->btv", x, w)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, 4.0)
  gx, gw = jax.grad(lambda a, b: matmul.einsum_f32_out("btd,dv->btv", a, b).sum(),
                    argnums=(0, 1))(x, w)
  assert gx.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
  np.testing.assert_allclose(gx.astype(jnp.float32), 5.0)
  np.testing.assert_allclose(gw.astype(jnp.float32), 6.0)


@pytest.mark.parametrize("b,t,s", [(2, 1, 4), (64, 1, 8), (1, 1, 4), (3, 100, 2)])
def test_split_k_einsum_equals_one_product(b, t, s, monkeypatch):
  """S partial products over K / S summed in f32 == the one product (rows above
  SPLIT_K_MAX_ROWS and a single row take the one-gemm path over the same weights)."""
  monkeypatch.setattr(matmul, "SPLIT_K_MAX_ROWS", 256)
  rng = np.random.default_rng(b + s)
  x = jnp.asarray(rng.normal(size=(b, t, 48)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(48, 20)), jnp.float32)
  got = matmul.split_k_einsum(x, w.reshape(s, 48 // s, 20))
  np.testing.assert_allclose(np.asarray(got), np.asarray(x @ w), rtol=1e-5, atol=1e-5)
  lowered = str(jax.make_jaxpr(matmul.split_k_einsum)(x, w.reshape(s, 48 // s, 20)))
  assert ("reduce_sum" in lowered) == (1 < b * t <= 256)
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)        # one rounding, like a gemm
  got = matmul.split_k_einsum(xb, wb.reshape(s, 48 // s, 20))
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32),
                             np.asarray(jnp.einsum("btk,kn->btn", xb, wb,
                                                   preferred_element_type=jnp.float32)
                                        .astype(jnp.bfloat16), np.float32), rtol=1e-2, atol=5e-2)


def test_unknown_split_k_weight_is_an_error(monkeypatch):
  from masksearch_jax.model import config as mcfg, qwen2
  cfg = mcfg.PRESETS["tiny"]
  monkeypatch.setattr(qwen2, "DECODE_SPLIT_K", 2)
  monkeypatch.setattr(qwen2, "DECODE_SPLIT_K_WEIGHTS", ("qvk",))
  with pytest.raises(ValueError, match="'qvk' is not one of qkv, o, down"):
    qwen2.decode_layout(qwen2.init_params(cfg, jax.random.PRNGKey(0)), cfg, jnp.float32)
