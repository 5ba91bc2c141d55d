"""Schedules, decay mask, clipping and exact gradient accumulation, against hand-worked values."""
import dataclasses
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from masksearch_jax.train import optim


def test_cosine_and_constant_schedules_hand_worked():
  cfg = optim.OptimConfig(learning_rate=1.0, warmup_steps=2, total_steps=10, min_lr_ratio=0.1)
  lr = optim.make_schedule(cfg)
  # warmup (s + 1) / 2; then progress (s - 2) / 8 -> 0.1 + 0.9 * 0.5 * (1 + cos(pi p))
  want = {0: 0.5, 1: 1.0, 2: 1.0, 6: 0.55, 10: 0.1, 50: 0.1}
  for s, v in want.items():
    np.testing.assert_allclose(lr(s), v, rtol=1e-6, err_msg=f"step {s}")
  np.testing.assert_allclose(lr(4), 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi / 4)), rtol=1e-6)
  const = optim.make_schedule(optim.OptimConfig(learning_rate=2.0, schedule="constant",
                                                warmup_steps=4))
  np.testing.assert_allclose([const(s) for s in (0, 3, 100)], [0.5, 2.0, 2.0])
  nowarm = optim.make_schedule(optim.OptimConfig(learning_rate=3.0, total_steps=4))
  np.testing.assert_allclose([nowarm(0), nowarm(2), nowarm(4)], [3.0, 1.5, 0.0], atol=1e-6)


def test_config_errors_name_fields():
  with pytest.raises(ValueError, match=r"schedule='linear'.*learning_rate=0"):
    optim.OptimConfig(schedule="linear", learning_rate=0)
  with pytest.raises(ValueError, match="total_steps=5 must exceed warmup_steps=5"):
    optim.OptimConfig(warmup_steps=5, total_steps=5)
  with pytest.raises(ValueError, match="mu_dtype='float16'"):
    optim.OptimConfig(mu_dtype="float16")


PARAMS = {
    "embed": jnp.ones((6, 4)),
    "layers_0": {"attn": {"q": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones((4,))}},
                 "input_norm": {"scale": jnp.ones((4,))}},
    "final_norm": jnp.ones((4,)),
    "lm_head": jnp.ones((4, 6)),
}


def test_decay_mask():
  m = optim.decay_mask(PARAMS)
  assert m["embed"] and m["lm_head"] and m["layers_0"]["attn"]["q"]["kernel"]
  assert not m["layers_0"]["attn"]["q"]["bias"]
  assert not m["layers_0"]["input_norm"]["scale"] and not m["final_norm"]
  # a 2-D leaf whose path names a norm is exempt too
  assert not optim.decay_mask({"norm_stack": jnp.ones((2, 4))})["norm_stack"]


def test_adamw_update_hand_worked():
  # zero gradient: Adam's step is 0/(0 + eps) = 0, so only decoupled decay moves the params:
  # p <- p - lr * wd * p on decayed leaves, untouched elsewhere. lr at step 0 = 0.1 * 1/2.
  cfg = optim.OptimConfig(learning_rate=0.1, warmup_steps=2, total_steps=10, weight_decay=0.5)
  tx = optim.make_optimizer(cfg)

  @jax.jit
  def step(params):
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    return optax.apply_updates(params, updates)

  new = step(PARAMS)
  np.testing.assert_allclose(new["layers_0"]["attn"]["q"]["kernel"], 1 - 0.05 * 0.5)
  np.testing.assert_allclose(new["embed"], 1 - 0.05 * 0.5)
  np.testing.assert_allclose(new["layers_0"]["attn"]["q"]["bias"], 1.0)
  np.testing.assert_allclose(new["final_norm"], 1.0)


def test_bf16_first_moment():
  """mu_dtype=bfloat16: Adam's first moment is stored in bf16 (the second stays f32) and the
  step matches the f32-moment step up to bf16 rounding of the moment."""
  cfg = optim.OptimConfig(learning_rate=0.1, total_steps=10, weight_decay=0.0)
  g = jax.tree.map(lambda p: 0.37 * jnp.ones_like(p), PARAMS)
  out = {}
  for dt in ("auto", "bfloat16"):                    # auto: the params' dtype (f32 here)
    tx = optim.make_optimizer(dataclasses.replace(cfg, mu_dtype=dt))
    state = tx.init(PARAMS)
    for _ in range(3):
      updates, state = tx.update(g, state, PARAMS)
    out[dt] = (updates, {str(x.dtype) for x in jax.tree.leaves(state) if jnp.ndim(x) >= 1})
  assert out["bfloat16"][1] == {"bfloat16", "float32"} and out["auto"][1] == {"float32"}
  for a, b in zip(jax.tree.leaves(out["bfloat16"][0]), jax.tree.leaves(out["auto"][0])):
    np.testing.assert_allclose(a, b, rtol=1e-2)


def test_global_norm_clipping():
  # huge eps makes Adam's step ~ lr * g / eps, so the (clipped) gradient shows through
  params = {"w": jnp.zeros((3, 4))}
  g = {"w": jnp.full((3, 4), 10.0)}                      # global norm sqrt(12) * 10
  for max_norm, want_norm in ((1.0, 1.0), (None, np.sqrt(12) * 10)):
    cfg = optim.OptimConfig(learning_rate=1.0, schedule="constant", eps=1e8, b1=0.0, b2=0.0,
                            weight_decay=0.0, max_grad_norm=max_norm)
    tx = optim.make_optimizer(cfg)
    upd, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(g, params)
    np.testing.assert_allclose(np.linalg.norm(upd["w"]) * 1e8, want_norm, rtol=1e-4)


def _loss_fn(params, batch):
  """Per-token squared error of a linear model; SUM over loss tokens + the token count."""
  pred = batch["x"] @ params["w"] + params["b"]                  # [b, t]
  err = (pred - batch["y"]) ** 2 * batch["mask"]
  return jnp.sum(err), {"num_tokens": jnp.sum(batch["mask"]), "err_sum": jnp.sum(err)}


def test_accumulation_equals_big_batch_and_differs_from_mean_of_means():
  rng = np.random.default_rng(0)
  m, b, t, d = 3, 2, 5, 4
  x = rng.normal(size=(m * b, t, d)).astype(np.float32)
  y = rng.normal(size=(m * b, t)).astype(np.float32)
  mask = np.ones((m * b, t), np.float32)
  mask[:b, 1:] = 0            # micro-batch 0 has only 2 loss tokens, the others 10
  params = {"w": jnp.asarray(rng.normal(size=(d,)), jnp.float32), "b": jnp.float32(0.3)}
  full = {"x": x, "y": y, "mask": mask}

  def mean_loss(p, batch):
    s, aux = _loss_fn(p, batch)
    return s / aux["num_tokens"]

  want_loss, want_grad = jax.jit(jax.value_and_grad(mean_loss))(params, full)
  micro = jax.tree.map(lambda a: a.reshape(m, b, *a.shape[1:]), full)
  loss, grads, aux = jax.jit(optim.accumulate_gradients, static_argnums=0)(_loss_fn, params,
                                                                            micro)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  np.testing.assert_allclose(grads["w"], want_grad["w"], rtol=1e-5)
  np.testing.assert_allclose(grads["b"], want_grad["b"], rtol=1e-5)
  assert float(aux["num_tokens"]) == mask.sum() == 22
  np.testing.assert_allclose(aux["err_sum"] / aux["num_tokens"], want_loss, rtol=1e-6)
  # the naive mean of micro-batch means is measurably different here (so this test can fail)
  naive = np.mean([jax.jit(mean_loss)(params, jax.tree.map(lambda a: a[i], micro))
                   for i in range(m)])
  assert abs(naive - want_loss) > 1e-3


def test_accumulation_requires_num_tokens():
  with pytest.raises(ValueError, match="num_tokens"):
    optim.accumulate_gradients(lambda p, b: (jnp.sum(p * b), {}), jnp.ones(2), jnp.ones((2, 2)))


def test_one_micro_batch_and_the_compute_dtype_copy():
  """One micro-batch takes the no-scan path (same result as the big-batch gradient); with
  compute_dtype the gradient is taken at the params cast once: the same as casting inside the
  loss (what the model does with f32 params), returned in f32."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 4, 5, 3)).astype(np.float32)
  batch = {"x": x, "y": rng.normal(size=(1, 4, 5)).astype(np.float32),
           "mask": np.ones((1, 4, 5), np.float32)}
  params = {"w": jnp.asarray(rng.normal(size=(3,)), jnp.float32), "b": jnp.float32(0.3)}

  def cast_inside(p, mb):                               # f32 params, bf16 compute, f32 loss
    q = {"w": p["w"].astype(jnp.bfloat16), "b": p["b"].astype(jnp.bfloat16)}
    pred = (mb["x"].astype(jnp.bfloat16) @ q["w"] + q["b"]).astype(jnp.float32)
    err = (pred - mb["y"]) ** 2 * mb["mask"]
    return jnp.sum(err), {"num_tokens": jnp.sum(mb["mask"])}

  acc = jax.jit(optim.accumulate_gradients, static_argnums=(0, 3))
  loss, grads, _ = acc(_loss_fn, params, batch, None)
  want_loss, want = jax.value_and_grad(lambda p: _loss_fn(p, jax.tree.map(lambda a: a[0], batch))[0]
                                       / 20.0)(params)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  np.testing.assert_allclose(grads["w"], want["w"], rtol=1e-5)
  l32, g32, _ = acc(cast_inside, params, batch, None)
  l16, g16, _ = acc(cast_inside, params, batch, jnp.bfloat16)
  assert g16["w"].dtype == g16["b"].dtype == jnp.float32
  np.testing.assert_allclose(l16, l32, rtol=1e-6)
  np.testing.assert_allclose(g16["w"], g32["w"], rtol=1e-2)
  np.testing.assert_allclose(g16["b"], g32["b"], rtol=1e-2)
