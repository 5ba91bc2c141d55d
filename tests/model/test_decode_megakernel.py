"""model/decode_megakernel.py: one kernel for a whole decode step equals qwen2.apply's decode
step (CPU interpret mode, one program: every barrier passes at once), and lowers for CUDA."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.model import config, decode_megakernel as mk, kv_cache, qwen2
from tests.cuda_lowering import triton_kernels


def _prefilled(cfg, params, b=2, slots=128, seed=0):
  """A stacked cache after prompts of different lengths, and each row's next token."""
  rng = np.random.default_rng(seed)
  lens = np.array([5, 11][:b])
  p = int(lens.max())
  toks = jnp.asarray(rng.integers(1, cfg.vocab_size, (b, p)), jnp.int32)
  seg = jnp.asarray(np.arange(p)[None] < lens[:, None], jnp.int32)
  cache = kv_cache.init_cache(cfg, b, slots, jnp.float32)
  _, cache = qwen2.apply(params, cfg, toks, segment_ids=seg, cache=cache,
                         compute_dtype=jnp.float32)
  nxt = jnp.asarray(rng.integers(1, cfg.vocab_size, (b,)), jnp.int32)
  return cache, nxt


@pytest.mark.parametrize("name,plan_programs", [("tiny", None), ("tiny_untied", None),
                                                ("small", 132)])
def test_one_step_equals_the_model(name, plan_programs):
  """One program runs every item; plan_programs=132 splits the work as for an H200 (small:
  q/k/v, gate/up K-splits 2, key splits 4, o 8, down 6), so every partial sum is exercised."""
  cfg = config.get_config(name)
  params = qwen2.init_params(cfg, jax.random.PRNGKey(1), jnp.float32, std=0.1)
  params["layers"]["input_norm"] = 1 + 0.1 * jax.random.normal(jax.random.PRNGKey(2),
                                                               params["layers"]["input_norm"].shape)
  params["final_norm"] = 1 + 0.1 * jax.random.normal(jax.random.PRNGKey(3), (cfg.hidden_size,))
  cache, nxt = _prefilled(cfg, params, slots=256)
  ref, ref_cache = qwen2.apply(params, cfg, nxt[:, None], cache=cache, compute_dtype=jnp.float32)
  mp = mk.layout(params, cfg, jnp.float32)
  h = params["embed"][nxt]
  logits, kc, vc = mk.decode_step(mp, cfg, h, cache["end"], cache["k"], cache["v"], cache["end"],
                                  programs=1, plan_programs=plan_programs, interpret=True)
  if plan_programs:
    pn = mk.plan(cfg, 2, 256, plan_programs)
    assert min(pn.sq, pn.sa, pn.so, pn.sg, pn.sd) > 1, pn
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref[:, 0]), rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(np.asarray(kc), np.asarray(ref_cache["k"]), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(vc), np.asarray(ref_cache["v"]), rtol=1e-4, atol=1e-5)


def test_plan_fills_an_h200():
  """1.5B at 2 rows on 132 programs: q/k/v 32 tiles x 4 = 128 items, o 24 x 4, gate/up
  140 x 4 = 560 (5 rounds), down 24 x 5 = 120, attention 2 x 2 x 12 key splits (768 slots)."""
  assert mk.plan(config.get_config("1.5b"), 2, 768, 132) == mk.Plan(
      programs=132, bq=64, sq=4, sa=12, so=4, sg=4, sd=5)


def test_unsupported_shapes_are_refused():
  cfg = config.get_config("tiny")
  assert mk.supported(cfg, 2, 128) and not mk.supported(cfg, 17, 128)
  params = qwen2.init_params(cfg, jax.random.PRNGKey(1), jnp.float32)
  cache = kv_cache.init_cache(cfg, 17, 128, jnp.float32)
  with pytest.raises(ValueError, match="does not tile"):
    mk.decode_step(mk.layout(params, cfg, jnp.float32), cfg, jnp.zeros((17, cfg.hidden_size)),
                   cache["end"], cache["k"], cache["v"], cache["end"], programs=1)


def test_lowers_for_cuda_as_one_kernel():
  cfg = config.get_config("1.5b")
  sds = jax.ShapeDtypeStruct
  L, D, K, Dh = cfg.num_layers, cfg.hidden_size, cfg.num_kv_heads, cfg.dim_per_head
  mp = jax.eval_shape(lambda p: mk.layout(p, cfg, jnp.bfloat16),
                      jax.eval_shape(lambda: qwen2.init_params(cfg, jax.random.PRNGKey(0),
                                                               jnp.bfloat16)))
  cache = sds((L, 2, 768, K, Dh), jnp.bfloat16)
  rows = sds((2,), jnp.int32)
  fn = lambda mp, h, pos, kc, vc, end: mk.decode_step(mp, cfg, h, pos, kc, vc, end, programs=132)
  assert triton_kernels(fn, mp, sds((2, D), jnp.bfloat16), rows, cache, cache, rows) == 1
