"""DAPO loss and gradient vs a direct NumPy transcription (gradient derived by hand)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masksearch_jax.rl import dapo


def _np_loss_and_grad(logp, old, adv, mask, n, eps_low, eps_high, c, kl_coef, ref):
  """Per token: r = e^(logp-old); pg = max(-A r, -A clip(r)); A<0: min(pg, -A c); + k3 KL.

  d/dlogp: the unclipped branch is active (pg = -A r) unless clipping won, i.e. r is outside
  [1-eps_low, 1+eps_high] on the side where -A clip(r) > -A r; there d(-A r)/dlogp = -A r.
  Clipped or dual-clipped tokens have zero gradient. k3 = e^(ref-logp) - (ref-logp) - 1 has
  derivative 1 - e^(ref-logp).
  """
  r = np.exp(logp - old)
  pg1 = -adv * r
  pg2 = -adv * np.clip(r, 1 - eps_low, 1 + eps_high)
  pg = np.maximum(pg1, pg2)
  grad = np.where(pg1 >= pg2, -adv * r, 0.0)
  if c is not None:
    dual = (adv < 0) & (pg > -adv * c)
    pg = np.where(dual, -adv * c, pg)
    grad = np.where(dual, 0.0, grad)
  per_tok = pg
  if kl_coef:
    d = ref - logp
    per_tok = per_tok + kl_coef * (np.exp(d) - d - 1)
    grad = grad + kl_coef * (1 - np.exp(d))
  return (per_tok * mask).sum() / n, grad * mask / n


def _inputs(seed, b=4, t=7):
  rng = np.random.default_rng(seed)
  old = rng.normal(-2.0, 1.0, (b, t)).astype(np.float32)
  logp = (old + rng.normal(0, 0.4, (b, t))).astype(np.float32)  # ratios spread across the clips
  adv = rng.normal(0, 1.0, (b,)).astype(np.float32)
  mask = (rng.random((b, t)) < 0.7).astype(np.float32)
  ref = (old + rng.normal(0, 0.3, (b, t))).astype(np.float32)
  return logp, old, adv, mask, ref


@pytest.mark.parametrize("c, kl_coef", [(None, 0.0), (3.0, 0.0), (1.5, 0.1)])
def test_loss_and_grad_match_numpy(c, kl_coef):
  logp, old, adv, mask, ref = _inputs(0)
  n = mask.sum() + 5.0  # a "global" count larger than this shard's
  cfg = dapo.DapoConfig(dual_clip_c=c, kl_coef=kl_coef)
  adv_bt = np.broadcast_to(adv[:, None], logp.shape)
  want_loss, want_grad = _np_loss_and_grad(logp.astype(np.float64), old, adv_bt, mask, n,
                                           0.2, 0.28, c, kl_coef, ref)
  fn = jax.jit(functools.partial(dapo.dapo_loss, cfg=cfg))
  loss, metrics = fn(logp, old, adv, mask, n, ref_logp=ref if kl_coef else None)
  grad = jax.grad(lambda lp: fn(lp, old, adv, mask, n, ref_logp=ref if kl_coef else None)[0])(
      jnp.asarray(logp))
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
  # the random inputs do exercise every branch
  r = np.exp(logp - old)
  assert ((r > 1.28) & (adv_bt > 0) & (mask > 0)).any() and ((r < 0.8) & (adv_bt < 0)).any()
  if c == 1.5:
    assert metrics["dual_clip_frac"] > 0
  # clip fractions, by hand
  low = ((adv_bt < 0) & (r < 0.8) & (mask > 0)).sum() / n
  high = ((adv_bt > 0) & (r > 1.28) & (mask > 0)).sum() / n
  np.testing.assert_allclose(metrics["clip_frac_low"], low, rtol=1e-6)
  np.testing.assert_allclose(metrics["clip_frac_high"], high, rtol=1e-6)
  np.testing.assert_allclose(metrics["clip_frac"], low + high, rtol=1e-6)
  k3 = ((r - 1 - np.log(r)) * mask).sum() / n
  np.testing.assert_allclose(metrics["approx_kl"], k3, rtol=1e-4)


def test_masked_tokens_get_exactly_zero_gradient():
  logp, old, adv, mask, ref = _inputs(1)
  logp[mask == 0] = 1e4    # absurd values where masked: must not leak (exp would overflow)
  old[mask == 0] = -1e4
  cfg = dapo.DapoConfig(dual_clip_c=3.0, kl_coef=0.5)
  g = jax.jit(jax.grad(lambda lp: dapo.dapo_loss(lp, old, adv, mask, mask.sum(), cfg, ref)[0]))(
      jnp.asarray(logp))
  g = np.asarray(g)
  assert np.all(g[mask == 0] == 0.0)
  assert np.all(np.isfinite(g)) and np.any(g[mask == 1] != 0.0)
  loss, metrics = dapo.dapo_loss(logp, old, adv, mask, mask.sum(), cfg, ref)
  assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())


def test_microbatch_sum_equals_full_batch():
  logp, old, adv, mask, _ = _inputs(2, b=8, t=5)
  n = mask.sum()
  cfg = dapo.DapoConfig()
  vg = jax.jit(jax.value_and_grad(
      lambda lp, o, a, m: dapo.dapo_loss(lp, o, a, m, n, cfg), has_aux=True))
  (full, full_m), g_full = vg(logp, old, adv, mask)
  parts, grads, clip = 0.0, [], 0.0
  for s in (slice(0, 3), slice(3, 8)):   # uneven micro-batches
    (l, m), g = vg(logp[s], old[s], adv[s], mask[s])
    parts += l
    clip += m["clip_frac"]
    grads.append(g)
  np.testing.assert_allclose(parts, full, rtol=1e-6)
  np.testing.assert_allclose(np.concatenate(grads), g_full, rtol=1e-6)
  np.testing.assert_allclose(clip, full_m["clip_frac"], rtol=1e-6)


def test_on_policy_loss_is_minus_mean_advantage():
  # at logp == old_logp: ratio 1, loss = -sum(A mask) / N (hand-worked)
  logp = np.zeros((2, 3), np.float32)
  adv = np.array([1.0, -2.0], np.float32)
  mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  loss, m = dapo.dapo_loss(logp, logp, adv, mask, 3.0)
  np.testing.assert_allclose(loss, -(1 + 1 - 2) / 3, atol=1e-7)
  assert float(m["clip_frac"]) == 0.0 and float(m["approx_kl"]) == 0.0


def test_overlong_penalty_and_mismatch():
  out = dapo.overlong_penalty(np.array([0, 16, 17, 20, 24, 25]), max_tokens=24, buffer=8)
  np.testing.assert_allclose(out, [0, 0, -1 / 8, -0.5, -1.0, -1.0])
  np.testing.assert_allclose(dapo.overlong_penalty(np.array([24, 25]), 24, 0), [0.0, -1.0])
  t = np.array([[-1.0, -2.0, -3.0]], np.float32)
  s = np.array([[-1.5, -2.0, -9.0]], np.float32)
  m = dapo.logprob_mismatch(t, s, np.array([[1, 1, 0]]), 2.0)
  np.testing.assert_allclose(m["mismatch_mean_abs"], 0.25)
  np.testing.assert_allclose(m["mismatch_max_abs"], 0.5)
  np.testing.assert_allclose(m["mismatch_k3"], (np.exp(0.5) - 1 - 0.5) / 2, rtol=1e-6)


def test_config_validation():
  with pytest.raises(ValueError, match="dual_clip_c"):
    dapo.DapoConfig(dual_clip_c=0.9)
  with pytest.raises(ValueError, match="ref_logp"):
    dapo.dapo_loss(np.zeros((1, 2)), np.zeros((1, 2)), np.ones(1), np.ones((1, 2)), 2.0,
                   dapo.DapoConfig(kl_coef=0.1))


def test_dapo_through_gradient_accumulation_equals_full_batch():
  """A tiny policy (logits = feats @ W): accumulated micro-batches == one full mini-batch."""
  from masksearch_jax.train import losses, optim
  rng = np.random.default_rng(3)
  m, b, t, d, v = 2, 3, 4, 5, 11
  feats = rng.normal(size=(m * b, t, d)).astype(np.float32)
  tgt = rng.integers(0, v, (m * b, t)).astype(np.int32)
  mask = (rng.random((m * b, t)) < 0.6).astype(np.float32)
  mask[:b] = 0
  mask[0, 0] = 1                                  # micro-batch 0: a single loss token
  adv = rng.normal(size=(m * b,)).astype(np.float32)
  w0 = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
  old = np.asarray(losses.token_logprobs(feats @ np.asarray(w0), tgt))
  params = w0 + 0.3 * jnp.asarray(rng.normal(size=(d, v)), jnp.float32)  # off-policy: clips act
  batch = {"f": feats, "t": tgt, "m": mask, "a": adv, "o": old}
  cfg = dapo.DapoConfig(dual_clip_c=3.0)

  def full_loss(w, bt, n):
    logp = losses.token_logprobs(bt["f"] @ w, bt["t"])
    return dapo.dapo_loss(logp, bt["o"], bt["a"], bt["m"], n, cfg)[0]

  want_loss, want_grad = jax.jit(jax.value_and_grad(full_loss))(params, batch, mask.sum())

  def sum_loss(w, bt):   # num_tokens=1: a pure sum; accumulate_gradients divides once
    return full_loss(w, bt, 1.0), {"num_tokens": jnp.sum(bt["m"])}

  micro = jax.tree.map(lambda a: a.reshape(m, b, *a.shape[1:]), batch)
  loss, grad, aux = jax.jit(optim.accumulate_gradients, static_argnums=0)(sum_loss, params, micro)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
  assert float(aux["num_tokens"]) == mask.sum()


def test_data_parallel_sharded_batch_matches_single_device():
  """Rows sharded over a 'data' mesh axis: the global-count loss and gradient are unchanged."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  devices = jax.devices()
  ndev = max(k for k in (1, 2, 4, 8) if k <= len(devices))
  logp, old, adv, mask, _ = _inputs(4, b=8, t=3)
  cfg = dapo.DapoConfig()
  vg = jax.jit(jax.value_and_grad(
      lambda lp, o, a, m: dapo.dapo_loss(lp, o, a, m, jnp.sum(m), cfg)[0]))
  want_loss, want_grad = vg(logp, old, adv, mask)
  mesh = Mesh(np.array(devices[:ndev]), ("data",))
  rows = NamedSharding(mesh, P("data"))
  args = [jax.device_put(x, rows) for x in (logp, old, adv, mask)]
  loss, grad = vg(*args)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-6)
