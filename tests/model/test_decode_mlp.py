"""The sliced one-kernel MLP (model/decode_mlp.py) against qwen2's folded XLA path (interpret
mode on CPU; tests/cuda_lowering.py checks that it lowers for CUDA)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.model import decode_mlp, qwen2

D, F, EPS = 64, 96, 1e-6


def _weights(dtype, key=0):
  k = jax.random.split(jax.random.PRNGKey(key), 4)
  gate_up = jax.random.normal(k[0], (D, 2 * F), jnp.float32) * 0.2
  down = jax.random.normal(k[1], (F, D), jnp.float32) * 0.2
  gain = 1.0 + 0.3 * jax.random.normal(k[2], (D,), jnp.float32)
  return (gate_up * gain[:, None]).astype(dtype), down.astype(dtype), k[3]


def _reference(h, gate_up, down):
  """qwen2's folded decode MLP, op by op (_normed, _mlp_in, _dense, the residual add)."""
  lp = {"gate_up": gate_up, "down": down}
  c = lambda w: w
  scale = qwen2.rms_scale(h, EPS)
  act = qwen2._mlp_in(h, lp, c, scale)
  return h + qwen2._dense(act, lp, "down", c)


def test_slice_layout_regroups_gate_and_up_columns():
  gate_up = jnp.arange(4 * 8).reshape(4, 8)          # D = 4, F = 4: gate cols 0-3, up 4-7
  w1 = decode_mlp.slice_layout(gate_up, bf=2)
  assert w1.shape == (4, 2, 4)
  np.testing.assert_array_equal(w1[0], [[0, 1, 4, 5], [2, 3, 6, 7]])
  with pytest.raises(ValueError, match="does not divide"):
    decode_mlp.slice_layout(gate_up, bf=3)


@pytest.mark.parametrize("m", [1, 2, 8])
def test_kernel_equals_folded_xla_float32(m):
  gate_up, down, key = _weights(jnp.float32)
  h = jax.random.normal(key, (m, D), jnp.float32) * 3.0
  w1 = decode_mlp.slice_layout(gate_up, bf=16)
  got = decode_mlp.mlp_block(h, w1, down, eps=EPS, block_k=16, block_n=32)
  np.testing.assert_allclose(got, _reference(h[:, None], gate_up, down)[:, 0], rtol=2e-5,
                             atol=2e-5)
  # The XLA form of the same layout (prefill, splices) is the same function.
  act = decode_mlp.mlp_act_xla(h * qwen2.rms_scale(h, EPS), w1)
  np.testing.assert_allclose(h + act @ down, got, rtol=2e-5, atol=2e-5)


def test_kernel_bf16_within_rounding():
  gate_up, down, key = _weights(jnp.bfloat16, key=1)
  h = (jax.random.normal(key, (2, D), jnp.float32) * 3.0).astype(jnp.bfloat16)
  w1 = decode_mlp.slice_layout(gate_up, bf=32)
  got = decode_mlp.mlp_block(h, w1, down, eps=EPS).astype(jnp.float32)
  want = _reference(h[:, None], gate_up, down)[:, 0].astype(jnp.float32)
  exact = _reference(h[:, None].astype(jnp.float32), gate_up.astype(jnp.float32),
                     down.astype(jnp.float32))[:, 0]
  scale = float(jnp.max(jnp.abs(exact)))
  # Same rounding points as XLA: as close to it as XLA is to the float32 model.
  assert float(jnp.max(jnp.abs(got - want))) <= 2 * float(jnp.max(jnp.abs(want - exact))) + 1e-3 * scale


def test_partials_are_per_slice():
  gate_up, down, key = _weights(jnp.float32, key=2)
  h = jax.random.normal(key, (2, D), jnp.float32)
  w1 = decode_mlp.slice_layout(gate_up, bf=16)
  parts = decode_mlp.mlp_partials(h, w1, down, eps=EPS, block_k=32, block_n=32)
  assert parts.shape == (F // 16, 2, D)
  act = decode_mlp.mlp_act_xla(h * qwen2.rms_scale(h, EPS), w1)         # [2, F]
  for p in range(F // 16):
    sl = slice(16 * p, 16 * (p + 1))
    np.testing.assert_allclose(parts[p], act[:, sl] @ down[sl], rtol=2e-5, atol=2e-5)


def test_unsupported_shapes_are_refused():
  gate_up, down, _ = _weights(jnp.float32)
  w1 = decode_mlp.slice_layout(gate_up, bf=16)
  with pytest.raises(ValueError, match="unsupported"):
    decode_mlp.mlp_partials(jnp.zeros((9, D)), w1, down, eps=EPS)      # rows > MAX_ROWS
  with pytest.raises(ValueError, match="unsupported"):
    decode_mlp.mlp_partials(jnp.zeros((2, D)), w1, down[:32], eps=EPS)
  assert not decode_mlp.supported(2, D, decode_mlp.slice_layout(gate_up, bf=8).shape)


# ---- in the model and the sampler (decode_layout "xla_mlp") ------------------------------------

@pytest.mark.parametrize("name,b", [("tiny", 2), ("tiny_untied", 1), ("tiny", 9)])  # 9: XLA form
def test_model_decode_matches_full_forward(name, b):
  from masksearch_jax.model import config as mcfg, kv_cache
  cfg = mcfg.get_config(name)
  params = qwen2.init_params(cfg, jax.random.PRNGKey(1))
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (b, 8))
  full = np.asarray(qwen2.apply(params, cfg, jnp.asarray(tokens), compute_dtype=jnp.float32)[0])
  dp = qwen2.decode_layout(params, cfg, jnp.float32, linear_impl="xla_mlp")
  assert "gate_up_sl" in dp["layers"][0] and "post_norm" not in dp["layers"][0]
  cache = kv_cache.init_cache(cfg, b, 16, jnp.float32, per_layer=True)
  step = jax.jit(lambda p, t, c: qwen2.apply(p, cfg, t, cache=c, compute_dtype=jnp.float32,
                                             scan_layers=False))
  logits, cache = step(dp, jnp.asarray(tokens[:, :4]), cache)          # prefill: the XLA form
  np.testing.assert_allclose(np.asarray(logits), full[:, :4], atol=2e-5, rtol=0)
  for i in range(4, 8):                                                # one-token: the kernel
    logits, cache = step(dp, jnp.asarray(tokens[:, i:i + 1]), cache)
    np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, i], atol=2e-5, rtol=0)


def test_decode_step_runs_one_kernel_per_layer():
  """Up to MAX_ROWS rows each one-token MLP block is the kernel; above, and in prefill, XLA."""
  from masksearch_jax.model import config as mcfg, kv_cache
  cfg = mcfg.get_config("tiny")
  params = qwen2.init_params(cfg, jax.random.PRNGKey(1))
  dp = qwen2.decode_layout(params, cfg, jnp.bfloat16, linear_impl="xla_mlp")

  def kernels(b, t):
    cache = kv_cache.init_cache(cfg, b, 16, jnp.bfloat16, per_layer=True)
    step = lambda p, tok, c: qwen2.apply(p, cfg, tok, cache=c, scan_layers=False)[0]
    jaxpr = str(jax.make_jaxpr(step)(dp, jnp.zeros((b, t), jnp.int32), cache))
    return jaxpr.count("name=mlp_partials")     # the jitted kernel wrapper, per call
  assert kernels(2, 1) == cfg.num_layers
  assert kernels(9, 1) == 0 and kernels(2, 4) == 0


def test_sampler_tokens_equal_folded_path():
  from benchmarks.common import SyntheticTokenizer
  from masksearch_jax.model import config as mcfg
  from masksearch_jax.protocol import DEFAULT
  from masksearch_jax.rollout import sampler as sampler_lib, types as T
  cfg = mcfg.get_config("tiny")
  params = qwen2.init_params(cfg, jax.random.PRNGKey(3))
  tok = SyntheticTokenizer(cfg.vocab_size, DEFAULT)
  rng = np.random.default_rng(2)
  prompts = [list(rng.integers(16, cfg.vocab_size, n)) for n in (5, 9)]
  rcfg = T.RolloutConfig(max_len=32, max_new_tokens=12, prompt_buckets=(16,), chunk_steps=8,
                         use_tools=False)
  outs = {}
  for impl in ("xla_folded", "xla_mlp"):
    s = sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=0.0), rcfg,
                            compute_dtype=jnp.float32, cache_dtype=jnp.float32, scan_layers=False,
                            linear_impl=impl)
    outs[impl] = s.generate(params, prompts)
  np.testing.assert_array_equal(outs["xla_mlp"].tokens, outs["xla_folded"].tokens)
  np.testing.assert_allclose(outs["xla_mlp"].logprobs, outs["xla_folded"].logprobs, atol=1e-5)
  with pytest.raises(ValueError, match="scan_layers=False"):
    sampler_lib.Sampler(cfg, tok, rollout_cfg=rcfg, linear_impl="xla_mlp")


def test_tuning_spec():
  assert decode_mlp.parse_tuning("slice=32 bk=64 w=8") == (
      32, {**decode_mlp.TUNING, "block_k": 64, "num_warps": 8})
  with pytest.raises(ValueError, match="unknown 'x'"):
    decode_mlp.parse_tuning("x=1")
