"""Our Flax Qwen2 against transformers.Qwen2ForCausalLM on the same random weights (float32)."""
import contextlib
import io

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.model import config as mcfg, kv_cache, qwen2
from tests.model import hf_reference

TOL = 1e-4
CONFIGS = {
    "tied_gqa": mcfg.PRESETS["tiny"],
    "untied_mha": mcfg.PRESETS["tiny_untied"],
    "untied_gqa": mcfg.PRESETS["tiny"].replace(tie_embeddings=False, num_kv_heads=1,
                                               rms_norm_eps=1e-5, name="untied_gqa"),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
  cfg = CONFIGS[request.param]
  params = qwen2.init_params(cfg, jax.random.PRNGKey(0), jnp.float32, std=0.1)
  return cfg, params, hf_reference.hf_model(params, cfg)


def _fwd(params, cfg, tokens, **kw):
  logits, _ = qwen2.apply(params, cfg, jnp.asarray(tokens), compute_dtype=jnp.float32, **kw)
  return np.asarray(logits)


def test_padded_batch_matches_hf(model):
  cfg, params, ref = model
  rng = np.random.default_rng(0)
  lengths = [12, 7, 3]
  tokens = rng.integers(0, cfg.vocab_size, (3, 12))
  mask = (np.arange(12)[None] < np.array(lengths)[:, None]).astype(np.int32)
  ours = _fwd(params, cfg, tokens, segment_ids=jnp.asarray(mask))
  theirs = hf_reference.hf_logits(ref, tokens, attention_mask=mask)
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(ours[b, :n], theirs[b, :n], atol=TOL, rtol=0)


def test_left_padded_with_positions_matches_hf(model):
  cfg, params, ref = model
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, cfg.vocab_size, (2, 10))
  mask = np.ones((2, 10), np.int32)
  mask[1, :4] = 0
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
  ours = _fwd(params, cfg, tokens, positions=jnp.asarray(pos), segment_ids=jnp.asarray(mask))
  theirs = hf_reference.hf_logits(ref, tokens, attention_mask=mask, position_ids=pos)
  np.testing.assert_allclose(ours[0], theirs[0], atol=TOL, rtol=0)
  np.testing.assert_allclose(ours[1, 4:], theirs[1, 4:], atol=TOL, rtol=0)


def test_packed_segments_match_separate_hf_runs(model):
  cfg, params, ref = model
  rng = np.random.default_rng(2)
  seg_lens = [5, 8, 3]
  total = 20                                   # 4 padding slots at the end
  tokens = rng.integers(0, cfg.vocab_size, (1, total))
  seg = np.zeros((1, total), np.int32)
  pos = np.zeros((1, total), np.int32)
  start = 0
  for i, n in enumerate(seg_lens):
    seg[0, start:start + n] = i + 1
    pos[0, start:start + n] = np.arange(n)
    start += n
  ours = _fwd(params, cfg, tokens, positions=jnp.asarray(pos), segment_ids=jnp.asarray(seg))
  start = 0
  for n in seg_lens:
    theirs = hf_reference.hf_logits(ref, tokens[:, start:start + n])
    np.testing.assert_allclose(ours[0, start:start + n], theirs[0], atol=TOL, rtol=0)
    start += n


@pytest.mark.parametrize("decode_layout,split_k,split_names", [
    (False, 0, ()), ("xla", 0, ()), ("xla_folded", 0, ()),
    ("xla", 4, ("qkv", "o")), ("xla_folded", 2, ("qkv", "o", "down"))])
def test_kv_cache_decode_matches_full_forward(model, decode_layout, split_k, split_names,
                                              monkeypatch):
  """Stacked cache + stacked params (layer scan), and the sampler's unrolled form: per-layer
  cache buffers + qwen2.decode_layout params (fused q/k/v and gate/up; "xla_folded": the norm
  gains folded into them; split_k: q/k/v and o stored split along their input for
  matmul.split_k_einsum), against the full forward."""
  cfg, params, _ = model
  rng = np.random.default_rng(3)
  B, T, P = 3, 14, 6
  tokens = rng.integers(0, cfg.vocab_size, (B, T))
  full = _fwd(params, cfg, tokens)
  # Ragged prefill: rows hold P, P-2, P-4 real prompt tokens (tail padding), then decode the rest.
  plen = np.array([P, P - 2, P - 4])
  seg = (np.arange(P)[None] < plen[:, None]).astype(np.int32)
  cache = kv_cache.init_cache(cfg, B, 32, jnp.float32, per_layer=bool(decode_layout))
  if decode_layout:
    monkeypatch.setattr(qwen2, "DECODE_SPLIT_K", split_k)
    if split_names:
      monkeypatch.setattr(qwen2, "DECODE_SPLIT_K_WEIGHTS", split_names)
    params = qwen2.decode_layout(params, cfg, jnp.float32, linear_impl=decode_layout)
    assert isinstance(cache["k"], list)
    for name in ("qkv", "o", "down"):
      split, lp = name in split_names, params["layers"][0]
      assert (name + "_sk" in lp) == split and (name in lp) != split
      if split:
        assert lp[name + "_sk"].shape[0] == split_k
    assert ("input_norm" in params["layers"][0]) == (decode_layout == "xla")
  step = jax.jit(lambda p, t, s, c: qwen2.apply(p, cfg, t, segment_ids=s, cache=c,
                                                compute_dtype=jnp.float32,
                                                scan_layers=not decode_layout))
  logits, cache = step(params, jnp.asarray(tokens[:, :P]), jnp.asarray(seg), cache)
  np.testing.assert_array_equal(np.asarray(cache["end"]), plen)
  for b in range(B):
    np.testing.assert_allclose(np.asarray(logits)[b, :plen[b]], full[b, :plen[b]], atol=TOL, rtol=0)
  cur = plen.copy()
  for _ in range(T - P):
    nxt = tokens[np.arange(B), cur][:, None]
    logits, cache = step(params, jnp.asarray(nxt), jnp.ones((B, 1), jnp.int32), cache)
    for b in range(B):
      np.testing.assert_allclose(np.asarray(logits)[b, 0], full[b, cur[b]], atol=TOL, rtol=0)
    cur += 1
  np.testing.assert_array_equal(np.asarray(cache["end"]), cur)


def test_unrolled_and_remat_agree_with_scan():
  cfg = CONFIGS["tied_gqa"]
  params = qwen2.init_params(cfg, jax.random.PRNGKey(1), jnp.float32, std=0.1)
  tokens = jnp.asarray(np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 9)))
  ref = _fwd(params, cfg, tokens)
  np.testing.assert_allclose(_fwd(params, cfg, tokens, scan_layers=False), ref, atol=1e-5)
  loss = lambda p, **kw: jnp.mean(qwen2.apply(p, cfg, tokens, compute_dtype=jnp.float32, **kw)[0] ** 2)
  g_ref = jax.grad(loss)(params)
  for policy in ("full", "dots_attn", "dots_attn_norm", "dots_attn_acts"):
    g_remat = jax.grad(lambda p: loss(p, remat=policy))(params)
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_remat)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_unrolled_backward_concatenates_layer_gradients_once():
  """Unrolled layers take their parameters from one split of the stacked [L, ...] leaves, so the
  backward pass joins the per-layer gradients with one concatenate a leaf — not L zero-padded
  [L, ...] cotangents added up (what indexing x[i] layer by layer transposes to)."""
  cfg = CONFIGS["tied_gqa"]
  params = qwen2.init_params(cfg, jax.random.PRNGKey(1), jnp.float32, std=0.1)
  tokens = jnp.asarray(np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 9)))
  loss = lambda p, **kw: jnp.mean(qwen2.apply(p, cfg, tokens, compute_dtype=jnp.float32, **kw)[0] ** 2)
  g_scan, g_unrolled = jax.grad(loss)(params), jax.grad(lambda p: loss(p, scan_layers=False))(params)
  for a, b in zip(jax.tree.leaves(g_scan), jax.tree.leaves(g_unrolled)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  stacked = {tuple(x.shape) for x in jax.tree.leaves(params["layers"])}
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: loss(p, scan_layers=False)))(params).jaxpr
  big = [e.primitive.name for e in jaxpr.eqns
         if e.primitive.name in ("pad", "add_any", "dynamic_update_slice", "scatter-add")
         and any(tuple(v.aval.shape) in stacked for v in e.outvars)]
  assert not big, big
  joins = [e for e in jaxpr.eqns if e.primitive.name == "concatenate"
           and tuple(e.outvars[0].aval.shape) in stacked]
  assert len(joins) == len(jax.tree.leaves(params["layers"]))


def test_dots_attn_policy_saves_the_fused_attention_forward():
  """The backward of cuDNN attention needs its forward outputs; "dots_attn" keeps them (and the
  weight products) instead of re-running the forward, and still recomputes element-wise ops."""
  policy = qwen2.REMAT_POLICIES["dots_attn"]
  named = lambda n: type("Prim", (), {"name": n})()
  assert policy(named("dot_product_attention_fwd_wrapper"))
  assert not policy(named("exp")) and not policy(named("dot_product_attention_bwd_wrapper"))
  x = jnp.ones((4, 8))
  f = jax.checkpoint(lambda w: jnp.sin(x @ w) @ w, policy=policy)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(f, jnp.ones((8, 8)))
  assert "f32[4,8]" in out.getvalue() and "dot_general" in out.getvalue()    # x @ w is saved


def test_dots_attn_acts_saves_the_norm_and_swiglu_outputs():
  cfg = CONFIGS["tied_gqa"]
  params = qwen2.init_params(cfg, jax.random.PRNGKey(1), jnp.float32, std=0.1)
  tokens = jnp.asarray(np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 9)))

  def saved(policy):
    f = lambda p: jnp.sum(qwen2.apply(p, cfg, tokens, compute_dtype=jnp.float32,
                                      remat=policy, scan_layers=False)[0])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      jax.ad_checkpoint.print_saved_residuals(f, params)
    return out.getvalue()
  acts, attn, norm = saved("dots_attn_acts"), saved("dots_attn"), saved("dots_attn_norm")
  assert "named 'norm'" in acts and "named 'mlp_act'" in acts, acts
  assert "named 'norm'" in norm and "named 'mlp_act'" not in norm, norm
  assert "named 'norm'" not in attn


def test_bf16_compute_close_to_f32():
  cfg = CONFIGS["tied_gqa"]
  params = qwen2.init_params(cfg, jax.random.PRNGKey(2), jnp.float32, std=0.1)
  tokens = jnp.asarray(np.random.default_rng(5).integers(0, cfg.vocab_size, (2, 16)))
  f32 = _fwd(params, cfg, tokens)
  bf16, _ = qwen2.apply(params, cfg, tokens)                 # default compute dtype: bf16
  assert bf16.dtype == jnp.float32                           # logits stay f32
  rel = np.linalg.norm(np.asarray(bf16) - f32) / np.linalg.norm(f32)
  assert rel < 3e-2, rel
