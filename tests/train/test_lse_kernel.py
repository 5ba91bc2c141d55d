"""train/lse_kernel.py (Pallas interpret mode on CPU): one-read log-sum-exp and argmax against
NumPy, and the fused loss with it against the XLA path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.train import losses, lse_kernel


def test_tile_and_supported():
  assert lse_kernel.tile(151936) == 128 and lse_kernel.tile(4096) == 1024 and lse_kernel.tile(96) == 32
  assert lse_kernel.supported(8192, 151936) and not lse_kernel.supported(8190, 151936)
  assert not lse_kernel.supported(32, 96)                 # a 32-column tile is too narrow
  with pytest.raises(ValueError, match="multiple of 16"):
    lse_kernel.lse_argmax(jnp.zeros((8, 128)))


def test_matches_numpy_with_ties_huge_and_masked_rows():
  rng = np.random.default_rng(0)
  x = rng.normal(0, 20, (32, 640)).astype(np.float32)       # five 128-column tiles
  x[1, [3, 300, 639]] = 500.0                                # a tie across tiles: first wins
  x[2, :] = 4.0                                              # all equal
  x[3, ::2] = -np.inf
  x[4, :] = -np.inf                                          # (-inf, 0), as XLA
  x[5, 200] = 3e4                                            # one huge logit
  lse, arg = lse_kernel.lse_argmax(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(lse), np.asarray(jax.nn.logsumexp(x, axis=-1)), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(arg), x.argmax(-1))
  assert int(arg[1]) == 3 and int(arg[2]) == 0 and np.isneginf(float(lse[4]))
  lse16, _ = lse_kernel.lse_argmax(jnp.asarray(x, jnp.bfloat16))     # bf16 in, f32 out
  assert lse16.dtype == jnp.float32


def test_fused_loss_with_the_kernel_equals_xla():
  rng = np.random.default_rng(1)
  h = jnp.asarray(rng.normal(0, 1, (2, 16, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(0, 1, (256, 8)), jnp.float32)
  tgt = jnp.asarray(rng.integers(0, 256, (2, 16)))
  mask = jnp.asarray(rng.integers(0, 2, (2, 16)), jnp.float32)
  f = lambda a, b, impl: losses.fused_cross_entropy(a, b, tgt, mask, token_chunk=8, lse_impl=impl)
  (s0, n0, c0), (s1, n1, c1) = f(h, w, "xla"), f(h, w, "pallas")
  np.testing.assert_allclose(s1, s0, rtol=1e-6)
  assert float(c1) == float(c0) and float(n1) == float(n0)
  g0, g1 = (jax.grad(lambda a, b: f(a, b, i)[0], argnums=(0, 1))(h, w) for i in ("xla", "pallas"))
  for a, b in zip(g0, g1):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="lse_impl='triton'"):
    f(h, w, "triton")


def test_lowers_through_triton_for_cuda():
  """The kernel lowers through Pallas' Triton path for CUDA at the Qwen2.5 vocabulary (what a GPU
  runs; the other tests run it in interpret mode)."""
  from tests.cuda_lowering import triton_kernels
  x = jax.ShapeDtypeStruct((4 * lse_kernel.ROWS, 151936), jnp.bfloat16)
  assert triton_kernels(lambda x: lse_kernel.lse_argmax(x, interpret=False), x) == 1
