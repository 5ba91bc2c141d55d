"""Trainer machinery: FLOP counts by hand, exact gradient accumulation against a direct
computation, sharded donated updates, resume from a checkpoint, and HF export that transformers
loads with equal logits."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from masksearch_jax.model.config import get_config
from masksearch_jax.parallel import mesh as mesh_lib
from masksearch_jax.train import config as config_lib
from masksearch_jax.train import flops, optim, trainer


# ------------------------------------------------------------------------------ FLOPs
def test_flops_by_hand():
  cfg = get_config("tiny")     # V=512, D=64, L=2, H=4 (Dh=16), K=2, F=128, tied
  # embed 512*64 + 2 layers * (q 64*64+64, k/v 2*(64*32+32), o 64*64, mlp 3*64*128, norms 2*64)
  # + final norm 64
  assert flops.matmul_params(cfg) == 32768 + 2 * (4160 + 4160 + 4096 + 24576 + 128) + 64
  # 6 * 107072 + attention 3 fwd/bwd x 2 matmuls x 2 flops x 64 keys x 4 heads x 16 dims x 2 layers
  assert flops.train_flops_per_token(cfg, 128) == 6 * 107072 + 3 * 2 * 2 * 64 * 4 * 16 * 2
  untied = get_config("tiny_untied")
  assert flops.matmul_params(untied) == untied.num_params() - 512 * 64   # lookup not counted
  big = get_config("1.5b")                        # 1.544B params, tied: 6N + attention
  assert flops.train_flops_per_token(big, 2048) == pytest.approx(
      6 * 1_543_714_304 + 3 * 2 * 2 * 1024 * 12 * 128 * 28)
  assert flops.mfu(cfg, 128, 1e6, 2, device=type("D", (), {"device_kind": "NVIDIA H100 80GB HBM3"})) \
      == pytest.approx(flops.train_flops_per_token(cfg, 128) * 1e6 / (2 * 989e12))


# ------------------------------------------------------------------------------ the update step
def _toy_loss(params, mb):
  """Softmax regression; sums over weighted rows, like the SFT loss."""
  logits = mb["x"] @ params["w"]                                              # [b, V]
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, mb["y"][:, None], axis=1)[:, 0]
  hit = (jnp.argmax(logits, -1) == mb["y"]) * mb["m"]
  return jnp.sum(nll * mb["m"]), jnp.sum(mb["m"]), {"accuracy": jnp.sum(hit)}


def _toy(mesh, rows=8, d=8, v=5, seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": jnp.asarray(rng.normal(size=(d, v)), jnp.float32)}
  # Very uneven loss-token counts: micro-batch means would weigh rows very differently.
  m = np.array([1, 1, 1, 0, 1, 0, 1, 0] if rows == 8 else [1] * rows, np.float32)
  batch = {"x": rng.normal(size=(rows, d)).astype(np.float32),
           "y": rng.integers(0, v, rows).astype(np.int32), "m": m}
  param_sh = {"w": NamedSharding(mesh, P("fsdp", None))}
  return params, batch, param_sh


def _run_step(mesh, params, param_sh, batch, micro, tx):
  state_sh = trainer.state_shardings(tx, params, param_sh, mesh)
  state = trainer.TrainState.create(params, tx.init(params), jax.random.key(0))
  state = jax.device_put(state, state_sh)
  batch_sh = {k: NamedSharding(mesh, P(None, ("data", "fsdp"), *[None] * (v.ndim - 1)))
              for k, v in batch.items()}
  step = trainer.make_train_step(_toy_loss, tx, micro, state_sh, batch_sh,
                                 optim.make_schedule(optim.OptimConfig(learning_rate=0.1,
                                                                       schedule="constant")))
  local = {k: v for k, v in batch.items()}
  # to_global_batch expects [rows, ...] leaves; a 1-D leaf becomes [M, rows/M].
  g = {k: jax.make_array_from_process_local_data(
      batch_sh[k], np.ascontiguousarray(v.reshape(v.shape[0] // micro, micro, *v.shape[1:])
                                        .swapaxes(0, 1))) for k, v in local.items()}
  old = state.params["w"]
  new, metrics = step(state, g)
  return old, new, jax.device_get(metrics)


def test_accumulation_is_the_token_mean_of_the_whole_batch():
  mesh = mesh_lib.make_mesh("data=2,fsdp=2,tensor=1", jax.devices()[:4])
  params, batch, param_sh = _toy(mesh)
  tx = optim.make_optimizer(optim.OptimConfig(learning_rate=0.1, schedule="constant",
                                              max_grad_norm=None, weight_decay=0.0))
  # Direct reference: the mean over the 5 weighted rows, one gradient, one AdamW update.
  def mean_loss(p):
    s, n, _ = _toy_loss(p, {k: jnp.asarray(v) for k, v in batch.items()})
    return s / n
  want_loss, g = jax.value_and_grad(mean_loss)(params)
  upd, _ = tx.update(g, tx.init(params), params)
  want_w = np.asarray(optax.apply_updates(params, upd)["w"])
  for micro in (1, 2):
    old, new, m = _run_step(mesh, params, param_sh, batch, micro, tx)
    np.testing.assert_allclose(m["loss"], float(want_loss), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new.params["w"]), want_w, rtol=1e-5, atol=1e-6)
    assert m["num_tokens"] == 5 and 0 <= m["accuracy"] <= 1
    assert m["learning_rate"] == pytest.approx(0.1) and m["grad_norm"] > 0
    assert int(new.step) == 1
    assert new.params["w"].sharding.spec == P("fsdp", None)          # sharding kept
    assert new.opt_state[0].mu["w"].sharding.spec == P("fsdp", None)  # moments follow params
    assert old.is_deleted()                                            # the state was donated
  # With 2 micro-batches (even rows: 4 loss tokens, odd rows: 1) a mean of micro-batch means
  # is a different number, so the check above can tell them apart.
  parts = [_toy_loss(params, {k: jnp.asarray(v[i::2]) for k, v in batch.items()}) for i in (0, 1)]
  mean_of_means = np.mean([float(s) / float(n) for s, n, _ in parts])
  assert abs(mean_of_means - float(want_loss)) > 1e-3


def test_to_global_batch_interleaves_rows():
  mesh = mesh_lib.make_mesh("data=2,fsdp=1,tensor=1", jax.devices()[:2])
  sh = NamedSharding(mesh, P(None, ("data", "fsdp"), None))
  rows = np.arange(8 * 3).reshape(8, 3)
  g = trainer.to_global_batch({"tokens": rows}, 2, sh)["tokens"]
  assert g.shape == (2, 4, 3)
  np.testing.assert_array_equal(np.asarray(g)[1, :, 0], rows[1::2, 0])   # micro-batch 1: odd rows
  with pytest.raises(ValueError, match="not divisible by micro_batches=3"):
    trainer.to_global_batch({"tokens": rows}, 3, sh)


# ------------------------------------------------------------------------------ state, resume, export
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  from masksearch_jax import tokenizer as tok_lib
  d = tmp_path_factory.mktemp("tok")
  texts = ["Alpha Beta was born in Gamma Town in 1901.", "The Delta River runs past Gamma Town."] * 5
  return tok_lib.train_bpe(texts, d, vocab_size=300)


def test_init_resume_and_export_loads_in_transformers(tmp_path, tokenizer_dir):
  import torch
  import transformers
  cfg = config_lib.TrainConfig(model="tiny", mesh="data=1,fsdp=-1,tensor=1", batch_size=8,
                               workdir=str(tmp_path / "run"), save_every=1,
                               async_checkpoint=False)
  mcfg = get_config("tiny")
  mesh, param_sh, _ = trainer.build_mesh_and_shardings(cfg, mcfg, jax.devices()[:2])
  tx = optim.make_optimizer(cfg.optim)
  state, mgr, data_state = trainer.init_or_restore(cfg, mcfg, tx, mesh, param_sh)
  assert data_state is None and int(state.step) == 0
  assert state.params["layers"]["q"].sharding.spec == P(None, "fsdp", "tensor", None)  # D=64 over 2
  with mgr:
    assert mgr.save(1, state.replace(step=jnp.int32(1)), {"iterator": {"x": 1}})
  state2, mgr2, data_state2 = trainer.init_or_restore(cfg, mcfg, tx, mesh, param_sh)
  mgr2.close()
  assert int(state2.step) == 1 and data_state2 == {"iterator": {"x": 1}}
  assert state2.params["layers"]["q"].sharding == state.params["layers"]["q"].sharding
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(state2.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Export (float32) -> transformers gives our logits; the tokenizer is copied alongside.
  out = trainer.export_hf(state2, mcfg, tmp_path / "hf", tokenizer_dir, dtype="float32")
  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok.convert_tokens_to_ids("<search>") != tok.unk_token_id
  # The weights transformers loaded are ours (HF layout: embed_tokens [V, D], q_proj [H*Dh, D]);
  # a forward pass runs (logit equality per layer is tests/checkpoint/test_hf.py's job).
  sd = model.state_dict()
  params = jax.device_get(state2.params)
  np.testing.assert_array_equal(sd["model.embed_tokens.weight"].numpy(), params["embed"])
  q0 = params["layers"]["q"][1].reshape(mcfg.hidden_size, -1).T                 # layer 1
  np.testing.assert_array_equal(sd["model.layers.1.self_attn.q_proj.weight"].numpy(), q0)
  with torch.no_grad():
    logits = model(torch.tensor([[1, 2, 3]])).logits.numpy()
  assert logits.shape == (1, 3, mcfg.vocab_size) and np.isfinite(logits).all()
  # load_params reads a run's export back (what evaluation does with --checkpoint=WORKDIR).
  loaded = trainer.load_params(str(out), mcfg, param_sh)
  np.testing.assert_array_equal(np.asarray(loaded["embed"]), np.asarray(state2.params["embed"]))
  with pytest.raises(ValueError, match="num_layers"):
    trainer.load_params(str(out), mcfg.replace(num_layers=3), param_sh)
