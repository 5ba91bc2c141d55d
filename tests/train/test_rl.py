"""DAPO trainer: the update moves log-probs the way the advantages say, old log-probs come from the
trainer, config errors name fields, and the loop runs, logs, checkpoints and stops cleanly."""
from __future__ import annotations

import dataclasses
import functools
import json
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from masksearch_jax.model import config as model_config
from masksearch_jax.rl import batch as batch_lib
from masksearch_jax.rl import collect, dynamic_sampling
from masksearch_jax.rollout.types import Rollout
from masksearch_jax.train import optim, rl, trainer

PROMPT = [5, 6, 7]
GOOD = [20, 21, 22, 23, 24]
BAD = [30, 31, 32, 33, 34]
S = 12


def _cfg(**kw) -> rl.RLConfig:
  base = dict(model="tiny", compute_dtype="float32", sampler_dtype="float32",
              mesh="data=1,fsdp=1,tensor=1",
              batch_size=4, group_size=4, token_chunk=64, export_hf_at_end=False,
              optim=optim.OptimConfig(learning_rate=3e-3, schedule="constant", weight_decay=0.0,
                                      max_grad_norm=None))
  base.update(kw)
  return rl.RLConfig(**base)


def _rows(responses, sampler_shift: float = 0.0):
  """Hand-made rollout rows: prompt + response (all policy tokens), right-padded to S."""
  n = len(responses)
  tokens = np.zeros((n, S), np.int32)
  mask = np.zeros((n, S), np.int32)
  for i, r in enumerate(responses):
    seq = PROMPT + r
    tokens[i, :len(seq)] = seq
    mask[i, len(PROMPT):len(seq)] = 1
  lens = np.full(n, len(PROMPT) + len(responses[0]))
  ro = Rollout(tokens=tokens, loss_mask=mask, logprobs=np.zeros((n, S), np.float32),
               prompt_lengths=np.full(n, len(PROMPT)), lengths=lens, num_searches=np.zeros(n),
               num_tool_errors=np.zeros(n), queries=[[]] * n, finish_reason=["answer"] * n,
               texts=[""] * n)
  return batch_lib.from_rollout(ro)


@functools.lru_cache(maxsize=None)
def _compiled(cfg):
  """(init state, step_fn, logp_fn, batch sharding), built once per config for the module."""
  mcfg = model_config.get_config("tiny")
  mesh, param_sh, batch_sh = trainer.build_mesh_and_shardings(cfg, mcfg, jax.devices()[:1])
  tx = optim.make_optimizer(cfg.optim)
  shapes = trainer.param_shapes(mcfg)
  rng = np.random.default_rng(0)   # host init: no compile for the random initialiser
  params = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)
  params = jax.device_put(params, param_sh)
  state_sh = trainer.state_shardings(tx, shapes, param_sh, mesh)
  state = trainer.TrainState.create(params, tx.init(params), jax.random.PRNGKey(1))
  state = jax.device_put(state, state_sh)   # committed like the step's outputs: one compile
  step_fn = trainer.make_train_step(rl.make_loss_fn(mcfg, cfg), tx, cfg.micro_batches, state_sh,
                                    batch_sh)
  logp_fn = rl.make_logp_fn(mcfg, cfg, param_sh, batch_sh)
  return state, step_fn, logp_fn, batch_sh


def _setup(cfg):
  state, step_fn, logp_fn, batch_sh = _compiled(dataclasses.replace(cfg, mini_batches=1))
  return jax.tree.map(lambda x: x.copy(), state), step_fn, logp_fn, batch_sh   # step donates


def _logp(logp_fn, params, rows, batch_sh):
  """Trainer log-probs [N, S] of the rows, 4 rows per call (one compiled shape)."""
  out = []
  for i in range(0, len(rows["inputs"]), 4):
    g = trainer.to_global_batch({k: rows[k][i:i + 4] for k in ("inputs", "targets")}, 1, batch_sh)
    out.append(np.asarray(logp_fn(params, g["inputs"], g["targets"]))[0])
  return np.concatenate(out)


def test_update_raises_logp_of_high_advantage_responses():
  cfg = _cfg(mini_batches=2)   # 2 updates per step: the second one sees ratio != 1
  state, step_fn, logp_fn, batch_sh = _setup(cfg)
  rows = _rows([GOOD, BAD] * 4)
  rows["advantages"] = collect.assemble([{**rows, "reward": np.array([1., 0.] * 4)}],
                                        cfg.group_size)["advantages"]
  np.testing.assert_allclose(rows["advantages"], [1, -1] * 4, atol=1e-5)
  seq = lambda lp: (lp * rows["loss_mask"]).sum(axis=1)                    # [N]
  before = seq(_logp(logp_fn, state.params, rows, batch_sh))
  for _ in range(3):
    # The sampler's log-probs are off by exactly 0.25 per token: only the mismatch metric sees it.
    true_lp = _logp(logp_fn, state.params, rows, batch_sh)
    rows["sampler_logp"] = ((true_lp + 0.25) * rows["loss_mask"]).astype(np.float32)
    state, m = rl.rl_update(state, rows, cfg=cfg, step_fn=step_fn, logp_fn=logp_fn,
                            batch_sh=batch_sh)
    assert m["num_tokens"] == 40
    np.testing.assert_allclose(m["mismatch_mean_abs"], 0.25, atol=1e-4)
    assert m["mismatch_max_abs"] == pytest.approx(0.25, abs=1e-4)
  gain = seq(_logp(logp_fn, state.params, rows, batch_sh)) - before
  # Measured: +1.32 nats for GOOD, -1.86 for BAD after 3 steps (6 Adam updates at 3e-3).
  assert (gain[0::2] > 0.3).all() and (gain[1::2] < -0.3).all(), gain
  assert int(state.step) == 6


def test_first_update_is_on_policy():
  """old_logp comes from the trainer's forward: with one update per step the ratio is exactly 1,
  nothing is clipped and the DAPO loss is the token mean of -A."""
  cfg = _cfg(mini_batches=1)
  state, step_fn, logp_fn, batch_sh = _setup(cfg)
  rows = _rows([GOOD, BAD, GOOD, GOOD])
  rows["advantages"] = np.array([0.5, -1.5, 0.5, 0.5], np.float32)
  state, m = rl.rl_update(state, rows, cfg=cfg, step_fn=step_fn, logp_fn=logp_fn,
                          batch_sh=batch_sh)
  assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
  assert m["clip_frac"] == 0.0 and m["approx_kl"] == pytest.approx(0.0, abs=1e-7)
  # 5 loss tokens per row: loss = -(0.5 * 15 - 1.5 * 5) / 20 = 0
  assert m["loss"] == pytest.approx(0.0, abs=1e-6)
  rows["advantages"] = np.array([1.0, 1.0, 1.0, -1.0], np.float32)   # -(15 - 5) / 20
  _, m = rl.rl_update(state, rows, cfg=cfg, step_fn=step_fn, logp_fn=logp_fn, batch_sh=batch_sh)
  assert m["loss"] == pytest.approx(-0.5, abs=1e-6) and m["ratio_mean"] == pytest.approx(1.0)


def test_validate_names_fields():
  with pytest.raises(ValueError) as e:
    rl.validate(_cfg(batch_size=6, group_size=4, mini_batches=4, sampler_dtype="fp8"), 1)
  msg = str(e.value)
  for needle in ("batch_size=6 is not a multiple of group_size=4", "mini_batches x micro_batches",
                 "sampler_dtype='fp8'"):
    assert needle in msg, msg
  with pytest.raises(ValueError, match="group_size=1"):
    rl.validate(_cfg(group_size=1), 1)
  rl.validate(_cfg(), 1)
  with pytest.raises(ValueError, match="sampler_attn_impl='flash'"):
    rl.validate(_cfg(sampler_attn_impl="flash"), 1)
  with pytest.raises(ValueError, match=r"min_informative_frac=0.0 must be in \(0, 1\]"):
    rl.validate(_cfg(min_informative_frac=0.0), 1)
  with pytest.raises(ValueError, match="sampler_linear_impl='cuda'"):
    rl.validate(_cfg(sampler_linear_impl="cuda"), 1)
  with pytest.raises(ValueError, match="needs sampler_scan_layers=False"):
    rl.validate(_cfg(sampler_linear_impl="pallas", sampler_scan_layers=True), 1)


def test_rollout_attention_has_its_own_field():
  """Rollouts follow the trainer's attention unless told otherwise — except that a cuDNN trainer
  samples with "pallas" (cuDNN chunks + the Pallas decode kernel, measured faster on a GPU)."""
  from benchmarks.common import SyntheticTokenizer
  mcfg = model_config.get_config("tiny")
  tok = SyntheticTokenizer(mcfg.vocab_size)
  for attn, field, want in (("cudnn", "", "pallas"), ("cudnn", "cudnn", "cudnn"),
                            ("cudnn", "pallas", "pallas"), ("xla", "", "xla"),
                            ("jax", "", "jax"), ("xla", "pallas", "pallas")):
    cfg = _cfg(attn_impl=attn, sampler_attn_impl=field)
    assert rl.sampler_attention(cfg) == want
    rl.validate(cfg, 1)
    s = rl.make_sampler(mcfg, tok, cfg, types.SimpleNamespace(search=lambda q, k: []), None)
    assert s.engine.attn_impl == want
  cfg = _cfg(sampler_linear_impl="pallas", sampler_scan_layers=False)
  rl.validate(cfg, 1)
  s = rl.make_sampler(mcfg, tok, cfg, types.SimpleNamespace(search=lambda q, k: []), None)
  assert s.engine.linear_impl == "pallas"


# ------------------------------------------------------------------------------ the loop

def _loop_cfg(tmp_path, **kw):
  base = dict(chat_template=False, group_size=2, batch_size=4, seq_len=48, max_new_tokens=16,
              prompt_buckets=(16,), chunk_steps=8, max_turns=1, max_tool_tokens=12, top_k_docs=1,
              steps=1, save_every=1, workdir=str(tmp_path / "rl"))
  return _cfg(**{**base, **kw})


def _examples(n=4):
  return [{"id": f"e{i}", "prompt": f"who wrote the book {i} ?",
           "gold": {"gold_answers": ["paris"]}, "mask_num": 0, "source": "qa"} for i in range(n)]


def test_loop_logs_and_checkpoints(tmp_path):
  from tests.rollout import fixtures as fx
  cfg = _loop_cfg(tmp_path, dynamic_sampling=False)
  out = rl.run(cfg, tokenizer=fx.tokenizer(), retriever=fx.FakeRetriever(), examples=_examples(),
               devices=jax.devices()[:1])
  assert out["rl_step"] == 1
  rows = [json.loads(l) for l in (Path(cfg.workdir) / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1]
  for key in ("loss", "reward/format", "reward/answer", "reward/total", "accuracy", "response_len",
              "searches_per_rollout", "clip_frac", "clip_frac_high", "clip_frac_low",
              "mismatch_mean_abs", "tokens_per_s/rollout", "time/rollout_s", "time/reward_s",
              "time/update_s", "grad_norm", "groups_kept_frac"):
    assert key in rows[0], key
  # random tiny model: 16 new tokens max, never a valid answer
  assert rows[0]["response_len"] <= 16 and rows[0]["reward/format"] == 0.0
  assert 0 < rows[0]["num_tokens"] <= 4 * 16
  # Sampler and trainer both f32: their log-probs of the sampled tokens agree once the batch is
  # shifted right (a misaligned shift would give differences of several nats).
  assert rows[0]["mismatch_mean_abs"] < 1e-3 and rows[0]["ratio_mean"] == pytest.approx(1.0)
  assert (Path(cfg.workdir) / "checkpoints" / "1").is_dir()
  assert list(Path(cfg.workdir).glob("events.out.tfevents.*"))
  # what `train_rl --export_step=latest` runs: the saved RL state -> a HF directory (restored
  # onto all 8 test devices, FSDP, where the run used one)
  from masksearch_jax.checkpoint import hf
  from masksearch_jax.train import entry
  on_all = cfg.replace(mesh="data=1,fsdp=-1,tensor=1", batch_size=8)
  out_dir = Path(entry.export_saved(on_all, "latest", str(tmp_path / "hf")))
  _, exported = hf.load_hf(out_dir, dtype=np.float32)
  saved = jax.device_get(out["state"].params)
  assert jax.tree.structure(exported) == jax.tree.structure(saved)
  for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(saved)):   # bf16 export of f32
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-2, atol=1e-2)


RIGHT = "<think>t</think>\n<answer> paris </answer>"
WRONG = "<think>t</think>\n<answer> rome </answer>"


class _ScriptedSampler:
  """Stands in for rollout.Sampler: each generate() call returns the next scripted texts."""
  rcfg = types.SimpleNamespace(pad_id=0)

  def __init__(self, script):
    self.script, self.calls = iter(script), 0

  def generate(self, params, prompts, seed=0):
    texts = next(self.script)
    n = len(prompts)
    assert len(texts) == n
    self.calls += 1
    tokens = np.zeros((n, S), np.int32)
    tokens[:, :5] = [1, 2, 3, 4, 5]
    mask = np.zeros((n, S), np.int32)
    mask[:, 2:5] = 1
    return Rollout(tokens=tokens, loss_mask=mask, logprobs=-mask.astype(np.float32),
                   prompt_lengths=np.full(n, 2), lengths=np.full(n, 5),
                   num_searches=np.ones(n, np.int32), num_tool_errors=np.zeros(n, np.int32),
                   queries=[["q"]] * n, finish_reason=["answer"] * n, texts=texts)


def _generator(script, **kw):
  from masksearch_jax.rl import prompts
  cfg = _cfg(group_size=2, batch_size=4, chat_template=False, seq_len=S, **kw)
  gen = collect.Generator(_ScriptedSampler(script), tokenizer=None, cfg=cfg)
  return gen, prompts.PromptStream(_examples(), "mixed", seed=0), cfg


def test_dynamic_sampling_keeps_informative_groups():
  gen, stream, cfg = _generator([[RIGHT, RIGHT, RIGHT, WRONG], [WRONG, WRONG, WRONG, RIGHT]])
  groups, stats = dynamic_sampling.fill_batch(lambda i: gen(stream, i), cfg.groups_per_step, 5)
  assert (stats.rounds, stats.groups_generated, stats.groups_kept) == (2, 4, 2)
  batch = collect.assemble(groups, cfg.group_size)
  # kept: [RIGHT, WRONG] (rewards 2, 1) and [WRONG, RIGHT]; (R - mean) / std = +-1
  np.testing.assert_allclose(batch["advantages"], [1, -1, -1, 1], atol=1e-5)
  assert batch["inputs"].shape == (4, S) and batch["loss_mask"].sum() == 4 * 3
  m = collect.rollout_metrics(gen.log)        # over all 8 rollouts, dropped ones included
  assert m["accuracy"] == 0.5 and m["reward/format"] == 1.0
  assert m["reward/total"] == pytest.approx(1.5) and m["searches_per_rollout"] == 1.0
  assert stream.position == 4


def test_dynamic_sampling_cap_raises():
  gen, stream, cfg = _generator([[WRONG] * 4] * 3)
  with pytest.raises(dynamic_sampling.DynamicSamplingError, match="after 3 generation rounds"):
    dynamic_sampling.fill_batch(lambda i: gen(stream, i), cfg.groups_per_step, 3)


def test_eval_also_measures_training_prompts(tmp_path, monkeypatch):
  """eval_train_limit runs the held-out eval's greedy check on the first N training prompts too
  and logs it beside the held-out figure (eval_train/ vs eval/)."""
  from tests.rollout import fixtures as fx
  seen = []

  def fake_eval(sampler, params, tok, examples, protocol, chat_template=True, batch_size=32):
    seen.append([e["id"] for e in examples])
    return {"accuracy": 0.25 * len(seen), "format": 1.0, "searches": 0.0, "n": len(examples)}
  monkeypatch.setattr(collect, "evaluate_accuracy", fake_eval)
  held = [{**e, "id": f"h{i}"} for i, e in enumerate(_examples(2))]
  cfg = _loop_cfg(tmp_path, dynamic_sampling=False, eval_every=1, eval_train_limit=3)
  rl.run(cfg, tokenizer=fx.tokenizer(), retriever=fx.FakeRetriever(), examples=_examples(),
         eval_examples=held, devices=jax.devices()[:1])
  assert seen == [["h0", "h1"], ["e0", "e1", "e2"]]
  row = json.loads((Path(cfg.workdir) / "metrics.jsonl").read_text().splitlines()[0])
  assert row["eval/accuracy"] == 0.25 and row["eval_train/accuracy"] == 0.5
  with pytest.raises(ValueError, match="eval_train_limit=3 must be >= 0 and needs eval_every"):
    rl.validate(_cfg(eval_train_limit=3), 1)


def test_dynamic_sampling_stop_keeps_the_last_completed_step(tmp_path, monkeypatch):
  """A run that dynamic sampling stops at step 2 leaves step 1's state and prompt position on
  disk (save_every is far away), so nothing trained is lost."""
  from masksearch_jax.checkpoint import state as ckpt_state
  from tests.rollout import fixtures as fx
  calls = []

  def scripted(gen_round, num_groups, max_rounds, need):
    calls.append(need)
    if len(calls) == 2:
      raise dynamic_sampling.DynamicSamplingError("scripted: no informative groups")
    rnd = gen_round(0)                                 # step 1: train on whatever came
    return list(rnd.groups)[:num_groups], dynamic_sampling.FillStats(1, len(rnd.groups),
                                                                     num_groups)
  monkeypatch.setattr(dynamic_sampling, "fill_batch", scripted)
  cfg = _loop_cfg(tmp_path, dynamic_sampling=True, steps=3, save_every=100,
                  min_informative_frac=0.5)
  with pytest.raises(dynamic_sampling.DynamicSamplingError, match="scripted"):
    rl.run(cfg, tokenizer=fx.tokenizer(), retriever=fx.FakeRetriever(), examples=_examples(),
           devices=jax.devices()[:1])
  assert calls == [1, 1]                               # ceil(0.5 * 2 groups)
  assert sorted(p.name for p in (Path(cfg.workdir) / "checkpoints").iterdir()
                if p.name.isdigit()) == ["1"]
  rows = [json.loads(l) for l in (Path(cfg.workdir) / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1]


def test_dapo_learns_what_the_reward_asks(tmp_path):
  """The whole loop learns (sampler -> rewards -> dynamic sampling -> DAPO update): with only the
  overlong shaping as reward (0 up to 4 model tokens, down to -1 at 14), a random tiny policy that
  writes ~15 tokens learns to stop early. Measured on CPU, 14 steps of 16 rollouts at lr 1e-2,
  seeds 0/1/2: first-3-step reward -0.88/-0.92/-0.94 -> last-2 -0.12/-0.09/-0.30, response length
  ~15 -> 4.0/4.0/6.3 tokens (~25 s). Without dynamic sampling seed 2 collapsed to all-16-token
  rollouts (identical rewards, no gradient) — which is what dynamic sampling is for."""
  from masksearch_jax.rl import rewards
  from tests.rollout import fixtures as fx
  reward = rewards.RewardConfig(overlong_max_tokens=14, overlong_buffer=10)
  cfg = _loop_cfg(tmp_path, dynamic_sampling=True, max_gen_rounds=32, reward=reward, steps=14,
                  temperature=1.0, group_size=4, batch_size=16, save_every=1000, seed=0,
                  optim=optim.OptimConfig(learning_rate=1e-2, schedule="constant",
                                          weight_decay=0.0))
  rl.run(cfg, tokenizer=fx.tokenizer(), retriever=fx.FakeRetriever(), examples=_examples(8),
         devices=jax.devices()[:1])
  rows = [json.loads(l) for l in (Path(cfg.workdir) / "metrics.jsonl").read_text().splitlines()]
  first = np.mean([r["reward/total"] for r in rows[:3]])
  last = np.mean([r["reward/total"] for r in rows[-2:]])
  length = np.mean([r["response_len"] for r in rows[-2:]])
  assert first < -0.75 and last > -0.5 and last > first + 0.4, (first, last)
  assert length < 9, length


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_run(tmp_path):
  """2 steps straight == 1 step, restart from the checkpoint, 1 more step (same losses, same
  rollouts). The overlong penalty makes rewards depend on response length, so the random model
  gets non-zero advantages and real updates."""
  from masksearch_jax.rl import rewards
  from tests.rollout import fixtures as fx
  reward = rewards.RewardConfig(overlong_max_tokens=14, overlong_buffer=10)
  kw = dict(dynamic_sampling=False, reward=reward, steps=2, temperature=1.5, group_size=4,
            batch_size=16,
            optim=optim.OptimConfig(learning_rate=1e-2, schedule="constant", weight_decay=0.0))
  logs = []
  for name, stops in (("straight", (2,)), ("resumed", (1, 2))):
    for steps in stops:
      cfg = dataclasses.replace(_loop_cfg(tmp_path / name, **kw), steps=steps)
      rl.run(cfg, tokenizer=fx.tokenizer(), retriever=fx.FakeRetriever(), examples=_examples(),
             devices=jax.devices()[:1])
    logs.append([json.loads(l) for l in (Path(cfg.workdir) / "metrics.jsonl").read_text()
                 .splitlines()])
  straight, resumed = logs
  assert [r["step"] for r in resumed] == [1, 2]
  assert any(r["adv_abs_mean"] > 0 for r in straight)
  assert all(r["mismatch_mean_abs"] < 1e-3 for r in straight)   # temperature-scaled trainer logp
  for a, b in zip(straight, resumed):
    for key in ("loss", "reward/total", "response_len", "grad_norm", "num_tokens"):
      assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["step"], key)
