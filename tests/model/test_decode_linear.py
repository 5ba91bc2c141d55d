"""The fused one-token projection kernels (interpret mode here) against the plain math, the model's
decode with `decode_layout(linear_impl="pallas")` against its full forward, and the sampler's
tokens with the kernels against the XLA path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.model import config as mcfg, decode_linear as dl, kv_cache, qwen2

HP = jax.lax.Precision.HIGHEST


def _arr(shape, seed, scale=1.0, dtype=jnp.float32):
  return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), dtype)


def _matmul(x, w_t):
  return jnp.dot(x, w_t.T, precision=HP)


@pytest.mark.parametrize("m", [1, 2, 4, 16])
def test_plain_with_norm_bias_residual(m):
  k, n = 192, 96                                  # K = 3 tiles of 64, N = 12 blocks of 8 (6 of 16)
  x, w, sc, b, r = (_arr((m, k), 0), _arr((n, k), 1, 0.1), 1 + _arr((k,), 2, 0.1),
                    _arr((n,), 3, 0.1), _arr((m, n), 4))
  want = _matmul(qwen2.rms_norm(x, sc, 1e-6), w) + b + r
  got = dl.linear(x, w, norm_scale=sc, bias=b, residual=r, interpret=True)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=0)
  # without the optional parts, and an f32 output from bf16 operands (the LM head)
  np.testing.assert_allclose(np.asarray(dl.linear(x, w, interpret=True)),
                             np.asarray(_matmul(x, w)), atol=2e-5, rtol=0)
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  got = dl.linear(xb, wb, out_dtype=jnp.float32, interpret=True)
  assert got.dtype == jnp.float32
  want = jnp.einsum("mk,nk->mn", xb, wb, preferred_element_type=jnp.float32)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("m", [1, 8, 16])
def test_swiglu_pairs_gate_and_up_columns(m):
  k, f = 128, 64
  x, w, sc = _arr((m, k), 5), _arr((2 * f, k), 6, 0.1), 1 + _arr((k,), 7, 0.1)
  y = _matmul(qwen2.rms_norm(x, sc, 1e-6), w)
  want = jax.nn.silu(y[:, :f]) * y[:, f:]
  got = dl.linear(x, w, mode="swiglu", norm_scale=sc, interpret=True)
  assert got.shape == (m, f)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=0)


@pytest.mark.parametrize("m,dh", [(1, 16), (2, 32), (16, 32)])
def test_rope_rotates_q_and_k_heads_only(m, dh):
  """Heads laid out [q heads | k heads | v heads] as in the fused q/k/v projection."""
  k, heads, rot = 64, 5, 3
  x, w, b = _arr((m, k), 8), _arr((heads * dh, k), 9, 0.2), _arr((heads * dh,), 10, 0.1)
  pos = jnp.asarray(np.arange(m) * 37 + 5, jnp.int32)
  y = (_matmul(x, w) + b).reshape(1, m, heads, dh)
  want = jnp.concatenate([qwen2.rope(y[:, :, :rot], pos[None], 1e4), y[:, :, rot:]], axis=2)
  got = dl.linear(x, w, mode="rope", bias=b, positions=pos, head_dim=dh, rotary_heads=rot,
                  theta=1e4, interpret=True)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want.reshape(m, -1)), atol=3e-5, rtol=0)


def test_supported_and_clear_errors():
  assert dl.supported(1, 1536, 2048, "rope", 128) and dl.supported(64, 8960, 1536, "plain")
  assert dl.supported(1, 1536, 151936, "plain")                     # the 1.5B LM head
  assert not dl.supported(3, 64, 64, "plain")                       # rows not a power of two
  assert not dl.supported(1, 100, 64, "plain")                      # K not a multiple of 64
  assert not dl.supported(16, 64, 64, "rope", 16)                   # half a head < 16 columns
  with pytest.raises(ValueError, match="unsupported shape"):
    dl.linear(jnp.ones((3, 64)), jnp.ones((64, 64)), interpret=True)
  with pytest.raises(ValueError, match="mode"):
    dl.linear(jnp.ones((1, 64)), jnp.ones((64, 64)), mode="gelu", interpret=True)


@pytest.mark.parametrize("name,b", [("tiny", 2), ("tiny", 4), ("tiny_untied", 1),
                                    ("tiny", 3)])              # 3 rows: the XLA fallback
def test_model_decode_matches_full_forward(name, b):
  cfg = mcfg.get_config(name)
  params = qwen2.init_params(cfg, jax.random.PRNGKey(1))
  rng = np.random.default_rng(0)
  T, P = 9, 4
  tokens = rng.integers(0, cfg.vocab_size, (b, T))
  full = np.asarray(qwen2.apply(params, cfg, jnp.asarray(tokens), compute_dtype=jnp.float32)[0])
  dp = qwen2.decode_layout(params, cfg, jnp.float32, linear_impl="pallas")
  assert "qkv_t" in dp["layers"][0] and "lm_head_t" in dp
  assert (dp["lm_head_t"] is dp["embed"]) == cfg.tie_embeddings
  cache = kv_cache.init_cache(cfg, b, 16, jnp.float32, per_layer=True)
  step = jax.jit(lambda p, t, c: qwen2.apply(p, cfg, t, cache=c, compute_dtype=jnp.float32,
                                             scan_layers=False))
  logits, cache = step(dp, jnp.asarray(tokens[:, :P]), cache)          # prefill through XLA
  np.testing.assert_allclose(np.asarray(logits), full[:, :P], atol=2e-5, rtol=0)
  for i in range(P, T):                                                # one-token kernels
    logits, cache = step(dp, jnp.asarray(tokens[:, i:i + 1]), cache)
    np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, i], atol=2e-5, rtol=0)


def test_model_decode_bfloat16_within_rounding():
  """bf16 weights and activations: the kernels' f32 accumulation order differs from XLA's, so the
  logits agree to bf16 rounding of the hidden states, not bit for bit."""
  cfg = mcfg.get_config("tiny")
  params = qwen2.init_params(cfg, jax.random.PRNGKey(2))
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 6)))
  outs = []
  for impl in ("xla", "pallas", "xla_folded"):
    dp = qwen2.decode_layout(params, cfg, jnp.bfloat16, linear_impl=impl)
    cache = kv_cache.init_cache(cfg, 2, 16, jnp.bfloat16, per_layer=True)
    _, cache = qwen2.apply(dp, cfg, tokens[:, :5], cache=cache, scan_layers=False)
    outs.append(np.asarray(qwen2.apply(dp, cfg, tokens[:, 5:], cache=cache, scan_layers=False)[0]))
  np.testing.assert_allclose(outs[1], outs[0], atol=0.03, rtol=0)
  np.testing.assert_allclose(outs[2], outs[0], atol=0.03, rtol=0)     # norm gains folded
  assert np.abs(outs[0]).max() > 0.1                                   # not trivially small


def test_sampler_tokens_equal_xla_path():
  from masksearch_jax.protocol import DEFAULT
  from masksearch_jax.rollout import sampler as sampler_lib, types as T
  from benchmarks.common import SyntheticTokenizer
  cfg = mcfg.get_config("tiny")
  params = qwen2.init_params(cfg, jax.random.PRNGKey(3))
  tok = SyntheticTokenizer(cfg.vocab_size, DEFAULT)
  rng = np.random.default_rng(2)
  prompts = [list(rng.integers(16, cfg.vocab_size, n)) for n in (5, 9)]
  rcfg = T.RolloutConfig(max_len=32, max_new_tokens=12, prompt_buckets=(16,), chunk_steps=8,
                         use_tools=False)
  outs = {}
  for impl in ("xla", "pallas", "xla_folded"):
    s = sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=0.0), rcfg,
                            compute_dtype=jnp.float32, cache_dtype=jnp.float32, scan_layers=False,
                            linear_impl=impl)
    outs[impl] = s.generate(params, prompts)
  np.testing.assert_array_equal(outs["pallas"].tokens, outs["xla"].tokens)
  np.testing.assert_allclose(outs["pallas"].logprobs, outs["xla"].logprobs, atol=1e-5)
  np.testing.assert_array_equal(outs["xla_folded"].tokens, outs["xla"].tokens)
  np.testing.assert_allclose(outs["xla_folded"].logprobs, outs["xla"].logprobs, atol=1e-5)
  for impl in ("pallas", "xla_folded"):
    with pytest.raises(ValueError, match="scan_layers=False"):
      sampler_lib.Sampler(cfg, tok, rollout_cfg=rcfg, linear_impl=impl)
  with pytest.raises(ValueError, match="linear_impl"):
    sampler_lib.Sampler(cfg, tok, rollout_cfg=rcfg, scan_layers=False, linear_impl="cuda")
