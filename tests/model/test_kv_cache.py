"""The sampler's cache length: max_len rounded up so that the decode-attention kernel applies."""
import pytest

from masksearch_jax.model import decode_attention, kv_cache


def test_cache_length_rounds_up_to_the_alignment():
  assert kv_cache.CACHE_ALIGN == 128
  assert [kv_cache.aligned_length(n) for n in (1, 127, 128, 129, 1144, 2048)] == [
      128, 128, 128, 256, 1152, 2048]
  with pytest.raises(ValueError, match="max_len=0"):
    kv_cache.aligned_length(0)


def test_every_aligned_length_takes_the_widest_key_block():
  """1144 slots (session 24's multi-turn benchmark) had no key block; its aligned length does."""
  assert decode_attention.block_size(1144) is None
  for n in (1, 100, 1144, 3000):
    assert decode_attention.block_size(kv_cache.aligned_length(n), 128) == 128
