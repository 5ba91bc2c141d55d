"""The one-kernel Pallas decode attention (interpret mode here) equals XLA attention with the cache
mask; the model and the sampler give the same tokens with attn_impl="pallas" as with "xla"."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.model import attention, config as mcfg, decode_attention as da, qwen2
from masksearch_jax.parallel import mesh as pmesh


def _inputs(b, h, kh, dh, s, dtype, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=shape), dtype) for shape in
             ((b, 1, h, dh), (b, s, kh, dh), (b, s, kh, dh)))
  return q, k, v


@pytest.mark.parametrize("b,h,kh,dh,s,lengths,splits", [
    (3, 12, 2, 128, 768, [1, 300, 768], None),  # 1.5B head shape; first/middle/last key block
    (3, 12, 2, 128, 768, [1, 300, 768], 1),     # one program a row: online softmax, no merge
    (3, 12, 2, 128, 768, [1, 300, 768], 3),     # 4 key blocks a program, some wholly past n
    (2, 4, 2, 16, 64, [17, 64], None),          # tiny: 2 query heads per group, 16-key blocks
    (1, 14, 2, 64, 96, [33], None),             # 0.5B head shape, 96 = 3 blocks of 32
    (1, 14, 2, 64, 96, [33], 1),
    (2, 16, 1, 32, 48, [48, 5], None),          # 16 query heads per kv head (no padding rows)
])
def test_kernel_matches_xla_attention(b, h, kh, dh, s, lengths, splits):
  q, k, v = _inputs(b, h, kh, dh, s, jnp.float32)
  n = jnp.asarray(lengths, jnp.int32)
  mask = jnp.arange(s)[None, None, :] < n[:, None, None]
  want = attention.attend_xla(q, k, v, mask)
  got = da.decode_attend(q, k, v, n, interpret=True, splits=splits)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-6, rtol=0)
  # keys past a row's length never matter (the kernel skips or masks them), not even NaNs
  k2 = jnp.where(jnp.arange(s)[None, :, None, None] < n[:, None, None, None], k, jnp.nan)
  np.testing.assert_allclose(
      np.asarray(da.decode_attend(q, k2, v, n, interpret=True, splits=splits)),
      np.asarray(got), atol=1e-6)


def test_key_splits():
  """Just enough programs per (row, kv head) to reach MIN_PROGRAMS; a forced count is rounded
  down to a divisor of the key blocks."""
  assert da.MIN_PROGRAMS == 256
  assert da.key_splits(1, 2, 12) == 12            # batch 1: every 64-key block its own program
  assert da.key_splits(64, 2, 12) == 2            # 128 rows x heads: two programs each
  assert da.key_splits(128, 2, 12) == 1           # one program a row and head: no merge
  assert da.key_splits(1, 2, 7) == 7
  old = da.KEY_SPLITS
  try:
    da.KEY_SPLITS = 5
    assert da.key_splits(64, 2, 12) == 4
  finally:
    da.KEY_SPLITS = old


def test_bfloat16_within_rounding():
  q, k, v = _inputs(2, 12, 2, 128, 256, jnp.bfloat16, seed=1)
  n = jnp.asarray([200, 7], jnp.int32)
  mask = jnp.arange(256)[None, None, :] < n[:, None, None]
  want = attention.attend_xla(q, k, v, mask).astype(jnp.float32)
  got = da.decode_attend(q, k, v, n, interpret=True).astype(jnp.float32)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-2)


def test_supported_shapes():
  assert da.supported((4, 1, 12, 128), (4, 768, 2, 128))
  assert not da.supported((4, 2, 12, 128), (4, 768, 2, 128))     # two new tokens: XLA path
  assert not da.supported((4, 1, 12, 128), (4, 770, 2, 128))     # length not a multiple of 16
  assert not da.supported((4, 1, 12, 96), (4, 768, 2, 96))       # head_dim not a power of two
  assert not da.supported((4, 1, 40, 128), (4, 768, 2, 128))     # > 16 query heads per kv head
  assert da.block_size(768) == 64 and da.block_size(48) == 16 and da.block_size(40) is None


def test_model_decode_step_pallas_equals_xla():
  """A prefill, then one-token steps with a per-layer cache: logits and caches agree."""
  from masksearch_jax.model import kv_cache
  cfg = mcfg.PRESETS["tiny"]
  params = qwen2.init_params(cfg, jax.random.PRNGKey(0), jnp.float32, std=0.1)
  dp = qwen2.decode_layout(params, cfg, jnp.float32)
  toks = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 8)))
  outs = {}
  for impl in ("xla", "pallas"):
    cache = kv_cache.init_cache(cfg, 2, 32, jnp.float32, per_layer=True)
    fwd = jax.jit(lambda p, t, c, s: qwen2.apply(p, cfg, t, segment_ids=s, cache=c, attn_impl=impl,
                                                 compute_dtype=jnp.float32, scan_layers=False))
    seg = jnp.asarray([[1] * 8, [1] * 5 + [0] * 3])            # rows of different lengths
    logits, cache = fwd(dp, toks, cache, seg)
    steps = []
    for i in range(3):
      nxt = jnp.argmax(logits[jnp.arange(2), cache["end"] - 1 if i == 0 else 0], -1)[:, None]
      logits, cache = fwd(dp, nxt, cache, jnp.ones((2, 1), jnp.int32))
      steps.append(np.asarray(logits))
    outs[impl] = steps, cache
  for a, b in zip(outs["xla"][0], outs["pallas"][0]):
    np.testing.assert_allclose(a, b, atol=2e-5)
  # the pallas steps appended k/v inside the attention kernel: the caches agree too
  for name in ("k", "v"):
    for a, b in zip(outs["xla"][1][name], outs["pallas"][1][name]):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
  np.testing.assert_array_equal(outs["xla"][1]["end"], outs["pallas"][1]["end"])


@pytest.mark.parametrize("s,ends,splits", [
    (768, [0, 63, 64, 700], None),     # block edges, 64-key blocks
    (768, [0, 63, 64, 700], 1),        # one program a row: the new slot inside its loop
    (768, [0, 255, 256, 700], 3),      # four blocks a program: the slot at a program's edges
    (48, [47, 48, 100, 5], None)])     # a full row: the token dropped
def test_write_kernel_equals_scatter_then_attend(s, ends, splits):
  b, h, kh, dh = 4, 12, 2, 32
  q, k, v = _inputs(b, h, kh, dh, s, jnp.float32, seed=3)
  kn, vn = (jnp.asarray(np.random.default_rng(4 + i).normal(size=(b, 1, kh, dh)), jnp.float32)
            for i in range(2))
  end = jnp.asarray(ends, jnp.int32)
  rows, slots = jnp.arange(b)[:, None], end[:, None]
  k2 = k.at[rows, slots].set(kn, mode="drop")                   # what the model did before
  v2 = v.at[rows, slots].set(vn, mode="drop")
  mask = jnp.arange(s)[None, None, :] < (end + 1)[:, None, None]
  want = attention.attend_xla(q, k2, v2, mask)
  out, kc, vc = da.decode_attend_write(q, kn, vn, k, v, end, interpret=True, splits=splits)
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=2e-6, rtol=0)
  np.testing.assert_array_equal(np.asarray(kc), np.asarray(k2))
  np.testing.assert_array_equal(np.asarray(vc), np.asarray(v2))


def test_decode_step_has_no_cache_scatter(monkeypatch):
  """attn_impl="pallas", one token: no XLA scatter into the cache in the step's jaxpr — the
  attention kernel appends (few rows, one dtype) or the append kernel does (model/cache_append.py);
  with that kernel switched off, more rows than WRITE_MAX_ROWS go back to the scatters."""
  from masksearch_jax.model import cache_append, kv_cache
  cfg = mcfg.PRESETS["tiny"]
  params = qwen2.decode_layout(qwen2.init_params(cfg, jax.random.PRNGKey(0), jnp.float32), cfg,
                               jnp.float32)
  cache = kv_cache.init_cache(cfg, 2, 32, jnp.float32, per_layer=True)
  step = lambda impl, dtype: str(jax.make_jaxpr(lambda c: qwen2.apply(
      params, cfg, jnp.ones((2, 1), jnp.int32), cache=c, attn_impl=impl, compute_dtype=dtype,
      scan_layers=False))(cache))
  assert "scatter" not in step("pallas", jnp.float32)
  assert "scatter" in step("xla", jnp.float32)
  mixed = step("pallas", jnp.bfloat16)                      # bf16 q, f32 cache: the append kernel
  assert "scatter" not in mixed and "kv_cache_append" in mixed
  big = kv_cache.init_cache(cfg, da.WRITE_MAX_ROWS * 2, 32, jnp.float32, per_layer=True)
  many = lambda: str(jax.make_jaxpr(lambda c: qwen2.apply(
      params, cfg, jnp.ones((da.WRITE_MAX_ROWS * 2, 1), jnp.int32), cache=c, attn_impl="pallas",
      compute_dtype=jnp.float32, scan_layers=False))(big))
  text = many()
  assert "scatter" not in text and "kv_cache_append" in text   # more rows: the append kernel
  monkeypatch.setattr(cache_append, "ENABLED", False)
  assert "scatter" in many()


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (virtual) devices")
def test_runs_per_shard_under_a_mesh():
  q, k, v = _inputs(4, 4, 2, 16, 64, jnp.float32)
  n = jnp.asarray([3, 64, 20, 41], jnp.int32)
  mask = jnp.arange(64)[None, None, :] < n[:, None, None]
  want = attention.attend_xla(q, k, v, mask)
  mesh = pmesh.make_mesh((2, 2, 2))
  fn = pmesh.under_mesh(jax.jit(lambda *a: attention.attend_decode(*a, impl="pallas")), mesh)
  np.testing.assert_allclose(np.asarray(fn(q, k, v, n, mask)), np.asarray(want), atol=2e-6)


def test_bad_split_counts_fail_clearly(monkeypatch):
  """A split count that does not divide the key blocks would leave keys unattended: an error."""
  q, k, v = _inputs(1, 4, 2, 16, 96, jnp.float32)                # 96 slots = 3 blocks of 32
  with pytest.raises(ValueError, match="must divide the 3 key blocks"):
    da.decode_attend(q, k, v, jnp.asarray([50], jnp.int32), interpret=True, splits=2)
  monkeypatch.setattr(da, "KEY_SPLITS", 0)
  with pytest.raises(ValueError, match="KEY_SPLITS=0"):
    da.key_splits(1, 2, 12)


@pytest.mark.parametrize("block,splits", [(128, None), (128, 2), (32, None), (32, 4)])
def test_other_key_blocks_match_xla(block, splits):
  """The tiling is a speed setting only: 128- and 32-key steps give XLA attention's result, for
  the attend and the append + attend kernels."""
  b, h, kh, dh, s = 3, 12, 2, 32, 768
  q, k, v = _inputs(b, h, kh, dh, s, jnp.float32, seed=5)
  n = jnp.asarray([1, 300, 768], jnp.int32)
  mask = jnp.arange(s)[None, None, :] < n[:, None, None]
  got = da.decode_attend(q, k, v, n, interpret=True, splits=splits, block=block, num_warps=8,
                         num_stages=3)
  np.testing.assert_allclose(np.asarray(got), np.asarray(attention.attend_xla(q, k, v, mask)),
                             atol=2e-6, rtol=0)
  kn, vn = k[:, :1], v[:, :1]
  end = jnp.asarray([0, 127, 128], jnp.int32)                 # 128-key block edges
  k2, v2 = (c.at[jnp.arange(b)[:, None], end[:, None]].set(x) for c, x in ((k, kn), (v, vn)))
  mask2 = jnp.arange(s)[None, None, :] < (end + 1)[:, None, None]
  out, kc, _ = da.decode_attend_write(q, kn, vn, k, v, end, interpret=True, splits=splits,
                                      block=block)
  np.testing.assert_allclose(np.asarray(out), np.asarray(attention.attend_xla(q, k2, v2, mask2)),
                             atol=2e-6, rtol=0)
  np.testing.assert_array_equal(np.asarray(kc), np.asarray(k2))


def test_set_tiling_and_block_size(monkeypatch):
  for name in ("BLOCK_KEYS", "NUM_WARPS", "NUM_STAGES"):
    monkeypatch.setattr(da, name, getattr(da, name))          # restored after the test
  da.set_tiling("b128 s3")
  assert (da.BLOCK_KEYS, da.NUM_WARPS, da.NUM_STAGES) == (128, None, 3)   # None: per kernel
  assert da.block_size(768) == 128 and da.block_size(96) == 32   # the largest dividing size
  assert da.block_size(768, 64) == 64
  da.set_tiling("")                                           # nothing asked, nothing changed
  assert (da.BLOCK_KEYS, da.NUM_WARPS, da.NUM_STAGES) == (128, None, 3)
  for bad in ("b128 x3", "w0", "s", "b-1"):
    with pytest.raises(ValueError, match="expected 'bN wN sN'"):
      da.set_tiling(bad)
  q, k, v = _inputs(1, 4, 2, 16, 40, jnp.float32)
  with pytest.raises(ValueError, match="no key block of 16..64 divides the 40-slot cache"):
    da.decode_attend(q, k, v, jnp.asarray([5], jnp.int32), interpret=True, block=64)


def test_launch_settings_per_kernel(monkeypatch):
  """Each kernel's measured (warps, stages) unless the module or the call says otherwise."""
  pytest.importorskip("jax.experimental.pallas.triton")
  get = lambda *a: (lambda p: (p.num_warps, p.num_stages))(da._compiler_params(False, *a)
                                                           ["compiler_params"])
  assert get("attend", None, None) == da._TILING["attend"] == (2, 3)
  assert get("write", None, None) == da._TILING["write"] == (4, 2)
  monkeypatch.setattr(da, "NUM_STAGES", 4)
  assert get("attend", None, None) == (2, 4) and get("write", 8, None) == (8, 4)
  assert da._compiler_params(True, "attend", 8, 4) == {}      # interpret mode: no launch


def test_write_kernel_reads_queries_and_new_kv_from_one_array():
  """The padded queries and the new k/v reach the appending kernel as one array (one XLA fusion
  computes them all): its three operands after the slots are the same value."""
  q, k, v = _inputs(2, 12, 2, 32, 128, jnp.float32)
  end = jnp.asarray([3, 70], jnp.int32)
  jaxpr = jax.make_jaxpr(lambda *a: da.decode_attend_write(*a, interpret=True))(
      q, k[:, :1], v[:, :1], k, v, end)
  calls = [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "pallas_call"]
  assert len(calls) == 1
  ops = calls[0].invars[1:4]
  assert ops[0] is ops[1] is ops[2] and ops[0].aval.shape == (2, 2 * 16 + 2 * 2, 32)


def _eqns(jaxpr):
  """Every equation of a jaxpr and of the jitted calls inside it (not kernel bodies)."""
  for e in jaxpr.eqns:
    yield e
    if e.primitive.name != "pallas_call" and "jaxpr" in e.params:
      yield from _eqns(getattr(e.params["jaxpr"], "jaxpr", e.params["jaxpr"]))


@pytest.mark.parametrize("splits", [None, 1, 2])
def test_lengths_past_the_cache_attend_every_slot(splits):
  """A row whose cache is full steps on with length S + 1 (its new token dropped, as the
  scatter's mode="drop" does): every slot is attended and nothing past the cache is read."""
  b, h, kh, dh, s = 3, 4, 2, 16, 64
  q, k, v = _inputs(b, h, kh, dh, s, jnp.float32, seed=7)
  n = jnp.asarray([s + 1, s + 40, 3], jnp.int32)
  mask = jnp.arange(s)[None, None, :] < jnp.minimum(n, s)[:, None, None]
  got = da.decode_attend(q, k, v, n, interpret=True, splits=splits, block=16)
  np.testing.assert_allclose(np.asarray(got), np.asarray(attention.attend_xla(q, k, v, mask)),
                             atol=2e-6, rtol=0)


@pytest.mark.parametrize("write", [False, True])
def test_one_split_writes_the_model_layout(write):
  """With one split a (row, kv head) the kernel stores the G real rows itself: its output is
  [B, H, Dh] (no XLA slice of the 16 padded rows after it), equal to XLA attention."""
  b, h, kh, dh, s = 3, 12, 2, 32, 128
  q, k, v = _inputs(b, h, kh, dh, s, jnp.float32, seed=7)
  n = jnp.asarray([1, 64, 128], jnp.int32)
  if write:
    kn, vn = k[:, :1], v[:, :1]
    fn = lambda q, k, v, n: da.decode_attend_write(q, kn, vn, k, v, n - 1, interpret=True,
                                                   splits=1)[0]
  else:
    fn = lambda q, k, v, n: da.decode_attend(q, k, v, n, interpret=True, splits=1)
  def pallas_calls(jaxpr):
    for e in jaxpr.eqns:
      if e.primitive.name == "pallas_call":
        yield e
      elif "jaxpr" in e.params:
        yield from pallas_calls(getattr(e.params["jaxpr"], "jaxpr", e.params["jaxpr"]))
  calls = list(pallas_calls(jax.make_jaxpr(fn)(q, k, v, n).jaxpr))
  assert [c.outvars[0].aval.shape for c in calls] == [(b, h, dh)]
  k2 = k.at[jnp.arange(b), n - 1].set(k[:, 0]) if write else k
  v2 = v.at[jnp.arange(b), n - 1].set(v[:, 0]) if write else v
  mask = jnp.arange(s)[None, None, :] < n[:, None, None]
  np.testing.assert_allclose(np.asarray(fn(q, k, v, n)),
                             np.asarray(attention.attend_xla(q, k2, v2, mask)), atol=2e-6)


def test_attend_rows_rejects_rows_that_cannot_hold_the_queries():
  q, k, v = _inputs(2, 4, 2, 16, 64, jnp.float32)
  n = jnp.asarray([5, 9], jnp.int32)
  rows = da.new_rows(q, k[:, :1], v[:, :1])
  np.testing.assert_allclose(
      np.asarray(da.decode_attend_rows(rows, k, v, n, num_heads=4, interpret=True)),
      np.asarray(da.decode_attend(q, k, v, n, interpret=True)), atol=1e-6)
  for bad_rows, heads in ((rows[:, :20], 4), (rows, 3), (rows, 40), (rows[:1], 4)):
    with pytest.raises(ValueError, match="decode_attend_rows: rows"):
      da.decode_attend_rows(bad_rows, k, v, n, num_heads=heads, interpret=True)
