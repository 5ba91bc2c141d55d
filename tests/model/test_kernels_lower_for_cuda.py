"""The model's Pallas kernels lower through Triton for CUDA at the 1.5B decode shapes (what a GPU
runs; the other tests run them in interpret mode), at few rows and at many."""
import jax
import jax.numpy as jnp
import pytest

from masksearch_jax.model import cache_append, decode_attention as da, decode_linear
from tests.cuda_lowering import triton_kernels

B, S, H, K, DH, D = 64, 768, 12, 2, 128, 1536
bf16, i32 = jnp.bfloat16, jnp.int32
sd = jax.ShapeDtypeStruct


def _decode(b, dtype=bf16):
  return (sd((b, 1, H, DH), bf16), sd((b, 1, K, DH), bf16), sd((b, S, K, DH), dtype),
          sd((b,), i32))


@pytest.mark.parametrize("b", [2, B])
def test_decode_attention_kernels_lower(b):
  q, kv, cache, n = _decode(b)
  assert triton_kernels(lambda q, k, v, n: da.decode_attend(q, k, v, n), q, cache, cache, n) == 1
  rows = sd((b, da.kv_row(K) + 2 * K, DH), bf16)
  assert triton_kernels(lambda r, k, v, n: da.decode_attend_rows(r, k, v, n, num_heads=H),
                        rows, cache, cache, n) == 1
  assert triton_kernels(lambda *a: da.decode_attend_write(*a), q, kv, kv, cache, cache, n) == 1
  tiled = lambda q, k, v, n: da.decode_attend(q, k, v, n, block=128, num_warps=8, num_stages=4)
  assert triton_kernels(tiled, q, cache, cache, n) == 1
  # one split a (row, kv head): the G = 6 real rows stored straight into [B, H, Dh]
  one = lambda r, k, v, n: da.decode_attend_rows(r, k, v, n, num_heads=H, splits=1)
  assert triton_kernels(one, rows, cache, cache, n) == 1
  assert triton_kernels(lambda *a: da.decode_attend_write(*a, splits=1), q, kv, kv, cache, cache,
                        n) == 1


@pytest.mark.parametrize("cache_dtype", [bf16, jnp.float32])
def test_cache_append_lowers(cache_dtype):
  _, kv, cache, n = _decode(B, cache_dtype)
  assert triton_kernels(lambda *a: cache_append.append(*a), kv, kv, cache, cache, n) == 1
  rows = sd((B, da.kv_row(K) + 2 * K, DH), bf16)
  append_rows = lambda r, k, v, n: cache_append.append_rows(r, k, v, n, first=da.kv_row(K))
  assert triton_kernels(append_rows, rows, cache, cache, n) == 1


@pytest.mark.parametrize("m", [2, 64])
def test_decode_linear_kernels_lower(m):
  x = sd((m, D), bf16)
  plain = lambda x, w: decode_linear.linear(x, w, interpret=False)
  assert triton_kernels(plain, x, sd((D, D), bf16)) == 1
  swiglu = lambda x, w: decode_linear.linear(x, w, mode="swiglu", interpret=False)
  assert triton_kernels(swiglu, x, sd((2 * 8960, D), bf16)) == 1
  rope = lambda x, w, p: decode_linear.linear(x, w, mode="rope", head_dim=DH, rotary_heads=H + K,
                                              positions=p, interpret=False)
  assert triton_kernels(rope, x, sd(((H + 2 * K) * DH, D), bf16), sd((m,), i32)) == 1
