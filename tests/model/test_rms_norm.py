"""model/rms_norm.py: the one-kernel RMSNorm backward (Pallas interpret mode on CPU) against
autodiff of the reference norm, alone and inside the model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.model import qwen2, rms_norm
from masksearch_jax.model.config import Qwen2Config


def _inputs(n, d, dtype, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(0, 2, (n, d)), dtype)
  w = jnp.asarray(rng.normal(1, 0.3, (d,)), dtype)
  dy = jnp.asarray(rng.normal(0, 1, (n, d)), dtype)
  return x, w, dy


def _grads(impl, x, w, dy):
  y, vjp = jax.vjp(lambda x, w: rms_norm.rms_norm(x, w, 1e-6, impl), x, w)
  return (y,) + vjp(dy)


def test_hand_worked_gradient():
  # x = [3, 4], w = 1: mean(x^2) = 12.5, r = 1 / sqrt(12.5); dy = [1, 0].
  x = jnp.array([[3.0, 4.0]]); w = jnp.ones((2,)); dy = jnp.array([[1.0, 0.0]])
  r = 1 / np.sqrt(12.5)
  _, dx, dw = _grads("pallas", x, w, dy)            # 1 row: not a kernel shape -> jnp formulas
  # dx_i = r dy_i - x_i r^3 sum(dy * x) / 2 = r [1, 0] - r^3 * 3/2 * [3, 4]
  np.testing.assert_allclose(np.asarray(dx[0]), r * np.array([1, 0]) - r**3 * 1.5 * np.array([3, 4]),
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(dw), [3 * r, 0.0], rtol=1e-6)


@pytest.mark.parametrize("d", [64, 96])             # one 64-column tile; three 32-column tiles
def test_kernel_matches_autodiff_f32(d):
  x, w, dy = _inputs(48, d, jnp.float32)
  assert rms_norm.kernel_supported(48, d)
  y0, dx0, dw0 = _grads("xla", x, w, dy)
  y1, dx1, dw1 = _grads("pallas", x, w, dy)
  np.testing.assert_array_equal(np.asarray(y1), np.asarray(y0))        # same forward
  np.testing.assert_allclose(np.asarray(dx1), np.asarray(dx0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(dw1), np.asarray(dw0), rtol=1e-5, atol=1e-5)


def test_kernel_equals_jnp_reference_and_bf16():
  x, w, dy = _inputs(32, 96, jnp.bfloat16, seed=1)
  r = rms_norm.rms_scale(x, 1e-6)[:, 0]
  dx_k, parts = rms_norm._bwd_kernel(x, dy, r, w)
  dx_r, dw_r = rms_norm.bwd_reference(x, dy, r, w)
  assert dx_k.dtype == jnp.bfloat16 and parts.shape == (32 // rms_norm.ROWS * 96,)
  np.testing.assert_allclose(np.asarray(dx_k, np.float32), np.asarray(dx_r.astype(jnp.bfloat16),
                             np.float32), rtol=2e-2, atol=1e-3)
  np.testing.assert_allclose(np.asarray(parts.reshape(-1, 96).sum(0)), np.asarray(dw_r), rtol=1e-5,
                             atol=1e-4)
  # against autodiff in bf16 (which rounds dy * w to bf16): within bf16 rounding
  _, dx0, dw0 = _grads("xla", x, w, dy)
  _, dx1, dw1 = _grads("pallas", x, w, dy)
  assert dx1.dtype == dx0.dtype == jnp.bfloat16 and dw1.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(dx1, np.float32), np.asarray(dx0, np.float32), rtol=5e-2,
                             atol=2e-2)
  np.testing.assert_allclose(np.asarray(dw1, np.float32), np.asarray(dw0, np.float32), rtol=5e-2,
                             atol=5e-2)


def test_unsupported_rows_use_the_jnp_backward():
  x, w, dy = _inputs(10, 96, jnp.float32)                            # 10 rows: not a multiple of 16
  assert not rms_norm.kernel_supported(10, 96)
  _, dx0, dw0 = _grads("xla", x, w, dy)
  _, dx1, dw1 = _grads("pallas", x, w, dy)
  np.testing.assert_allclose(np.asarray(dx1), np.asarray(dx0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(dw1), np.asarray(dw0), rtol=1e-5, atol=1e-5)


def test_unknown_impl():
  with pytest.raises(ValueError, match="impl='triton'"):
    rms_norm.rms_norm(jnp.ones((2, 4)), jnp.ones((4,)), 1e-6, "triton")


def test_model_gradients_with_the_kernel_equal_autodiff():
  cfg = Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=16, tie_embeddings=True)
  params = qwen2.init_params(cfg, jax.random.key(0), jnp.float32)
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params)
  tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, 64)          # 32 rows: kernel shape

  def loss(p, impl):
    h, _ = qwen2.apply(p, cfg, tokens, compute_dtype=jnp.float32, remat="dots_attn_acts",
                       scan_layers=False, return_hidden=True, norm_impl=impl)
    return jnp.sum(jnp.sin(h))

  l0, g0 = jax.value_and_grad(loss)(params, "xla")
  l1, g1 = jax.value_and_grad(loss)(params, "pallas")
  assert float(l0) == float(l1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4,
                                                       atol=2e-5), g0, g1)
