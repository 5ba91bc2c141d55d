"""Sharded forward == single-device forward on 8 virtual CPU devices; clear errors on bad meshes."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from masksearch_jax.model import config as mcfg, qwen2
from masksearch_jax.parallel import mesh as pmesh, rules

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (virtual) devices")


@pytest.fixture(scope="module")
def setup():
  cfg = mcfg.PRESETS["tiny"]
  params = qwen2.init_params(cfg, jax.random.PRNGKey(0), jnp.float32, std=0.1)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 16)))
  ref, _ = qwen2.apply(params, cfg, tokens, compute_dtype=jnp.float32)
  return cfg, params, tokens, np.asarray(ref)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (1, 2, 4), (2, 2, 2)])
def test_sharded_forward_matches_single_device(setup, shape):
  cfg, params, tokens, ref = setup
  mesh = pmesh.make_mesh(shape)
  shardings = rules.param_shardings(params, cfg, mesh)
  sp = jax.device_put(params, shardings)
  st = jax.device_put(tokens, rules.batch_sharding(mesh))
  fwd = jax.jit(lambda p, t: qwen2.apply(p, cfg, t, compute_dtype=jnp.float32)[0],
                out_shardings=rules.batch_sharding(mesh, ndim=3))
  out = fwd(sp, st)
  np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, rtol=0)
  if shape[2] > 1:   # tensor axis really splits the heads
    assert sp["layers"]["q"].sharding.spec[2] == "tensor"
  if shape[1] > 1:
    assert sp["layers"]["gate"].sharding.spec[1] == "fsdp"


def test_fill_axis_and_spec_string():
  assert pmesh.resolve_shape("data=2,fsdp=-1,tensor=2", 8) == (2, 2, 2)
  assert pmesh.resolve_shape((-1, 1, 1), 8) == (8, 1, 1)


def test_mesh_not_dividing_devices_is_a_clear_error():
  with pytest.raises(ValueError, match="needs 12 devices but 8"):
    pmesh.resolve_shape((3, 4, 1), 8)
  with pytest.raises(ValueError, match="multiply to 3, which does not divide the 8"):
    pmesh.resolve_shape("data=3,fsdp=-1", 8)
  with pytest.raises(ValueError, match="unknown axis"):
    pmesh.parse_mesh_spec("model=2")


def test_tensor_axis_not_dividing_heads_is_a_clear_error():
  cfg = mcfg.PRESETS["tiny"].replace(num_heads=6, num_kv_heads=2, hidden_size=96)
  params = jax.eval_shape(lambda: qwen2.init_params(cfg, jax.random.PRNGKey(0)))
  mesh = pmesh.make_mesh((2, 1, 4))
  with pytest.raises(ValueError, match="tensor-parallel size 4 does not divide num_heads=6"):
    rules.param_shardings(params, cfg, mesh)


def test_batch_check_names_fields():
  mesh = pmesh.make_mesh((2, 2, 2))
  with pytest.raises(ValueError, match="batch_size=6 is not divisible by the data-parallel size 4"):
    rules.check_batch(6, mesh)


def test_optimizer_state_follows_param_shardings(setup):
  cfg, params, _, _ = setup
  mesh = pmesh.make_mesh((1, 2, 4))
  ps = rules.param_shardings(params, cfg, mesh)
  tx = optax.adamw(1e-3)
  state_shape = jax.eval_shape(tx.init, params)
  ss = rules.tree_shardings_like(state_shape, ps, mesh)
  mu = ss[0].mu
  assert mu["layers"]["q"] == ps["layers"]["q"]
  assert ss[0].count.spec == jax.sharding.PartitionSpec()


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_fused_attention_runs_per_shard_under_the_mesh(setup, shape):
  """attn_impl="jax" (the fused-kernel path) under a context mesh runs inside shard_map; forward
  and gradients must equal the one-device XLA reference (packed rows: a real mask)."""
  cfg, params, tokens, _ = setup
  seg = jnp.asarray(np.repeat([[1] * 10 + [2] * 6], 8, axis=0))
  pos = jnp.asarray(np.repeat([list(range(10)) + list(range(6))], 8, axis=0))

  def loss(p, impl):
    logits, _ = qwen2.apply(p, cfg, tokens, pos, seg, attn_impl=impl, compute_dtype=jnp.float32)
    return jnp.mean(jax.nn.logsumexp(logits, -1)), logits
  (ref_l, ref_logits), ref_g = jax.value_and_grad(loss, has_aux=True)(params, "xla")
  mesh = pmesh.make_mesh(shape)
  sp = jax.device_put(params, rules.param_shardings(params, cfg, mesh))
  fn = pmesh.under_mesh(jax.jit(jax.value_and_grad(lambda p: loss(p, "jax"), has_aux=True)), mesh)
  lowered = jax.jit(lambda p: loss(p, "jax")[0])
  with jax.set_mesh(mesh):
    assert "shard_map" in str(jax.make_jaxpr(lowered)(sp)) or "shmap" in str(
        jax.make_jaxpr(lowered)(sp))
  (l, logits), g = fn(sp)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=2e-5, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6,
                                                       rtol=1e-4), g, ref_g)


def test_attention_shard_specs():
  from masksearch_jax.model import attention
  mesh = pmesh.make_mesh((2, 2, 2))
  qkv, m = attention.shard_specs(mesh, batch=8, heads=4, kv_heads=2)
  assert qkv == P(("data", "fsdp"), None, "tensor", None) and m == P(("data", "fsdp"), None, None)
  # rows that the batch axes don't divide stay whole; heads still split
  assert attention.shard_specs(mesh, batch=3, heads=4, kv_heads=2)[0] == P(None, None, "tensor", None)
  assert attention.shard_specs(pmesh.make_mesh((1, 1, 1), jax.devices()[:1]), 8, 4, 2) is None
  assert attention.shard_specs(None, 8, 4, 2) is None
