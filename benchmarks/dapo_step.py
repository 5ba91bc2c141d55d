"""One DAPO step of train/rl.py timed part by part: rollout, reward, old log-probs + update.

Used by benchmarks/train_step.py (`--modes=dapo`); no flags here, so tests can import it.

The step is built from the library's own pieces, as `rl.run` wires them: `trainer.setup` (f32
master params, the jitted donated DAPO update of `rl.make_loss_fn`), `rl.make_logp_fn`, a
`collect.Generator` over the sampler of `rl.make_sampler` (bf16), `collect.assemble` (group
advantages) and `rl.rl_update`. Only the inputs are synthetic, so no tokenizer, prompt file or
index is needed: random-token prompts, a word-level tokenizer, a retriever stub with a fixed
latency, and a logits hook that makes the random-weight policy write a well-formed trace

  (<think> free tokens </think> <search> q q q </search> [<information> spliced] )^turns
  <think> free tokens </think> <answer> a </answer>

so every rollout makes `turns` searches, fills about `new_tokens`, and passes the format check;
half of each group answers the gold, so advantages are +-1 and the update has a real gradient.
Dynamic sampling is off (one generation round per step). Everything is timed after one warm-up
step that compiles every program.
"""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from masksearch_jax.protocol import DEFAULT, Protocol
from masksearch_jax.rl import collect, prompts as prompts_lib
from masksearch_jax.rollout import hooks, sampler as sampler_lib
from masksearch_jax.train import config as config_lib, flops, rl, trainer

__all__ = ["SyntheticTokenizer", "StubRetriever", "DapoBench", "turn_period", "forced_script",
           "shares", "bench_dapo"]

from benchmarks.common import (ANSWER_IDS, EOS_ID, PAD_ID, RESERVED_IDS, StubRetriever,  # noqa: E402,F401
                               SyntheticTokenizer)


@dataclasses.dataclass(frozen=True)
class DapoBench:
  """What one DAPO benchmark row runs (train_step.py's flags)."""
  prompts_per_step: int = 8
  group_size: int = 8
  prompt_len: int = 256
  new_tokens: int = 512
  search_turns: int = 2
  obs_tokens: int = 128
  latency_s: float = 0.0
  mini_batches: int = 1
  micro_batches: int = 4
  steps: int = 2
  chunk_steps: int = 64
  attn_impl: str = "cudnn"
  sampler_attn_impl: str = ""          # RLConfig.sampler_attn_impl ("": rl.sampler_attention)
  scan_layers: bool = True
  remat: str = "dots_no_batch"
  loss_impl: str = "chunked"
  token_chunk: int = 4096
  vocab_chunk: int = 0
  param_dtype: str = "float32"
  mesh: str = "data=1,fsdp=-1,tensor=1"


def turn_period(new_tokens: int, turns: int, obs_tokens: int) -> int:
  """Policy tokens per segment so that (turns + 1) segments + turns observations fit in
  new_tokens. A segment needs at least 8 (think tags, search or answer block, one free token)."""
  period = (new_tokens - turns * obs_tokens) // (turns + 1)
  if period < 8:
    raise ValueError(f"new_tokens={new_tokens} leaves {period} policy tokens per segment with "
                     f"search_turns={turns} x obs_tokens={obs_tokens}; need >= 8")
  return period


def forced_script(rows: int, group_size: int, period: int, turns: int,
                  tag_id: dict[str, int], protocol: Protocol = DEFAULT) -> np.ndarray:
  """[rows, (turns + 1) * period] forced policy tokens (-1 = the model's own choice); see the
  module docstring for the trace. Row r answers ANSWER_IDS[(r % group_size) % 2]."""
  t = lambda s: tag_id[s]
  script = np.full((rows, (turns + 1) * period), -1, np.int64)
  for k in range(turns + 1):
    seg = script[:, k * period:(k + 1) * period]
    seg[:, 0] = t(protocol.think_open)
    if k < turns:
      seg[:, period - 5:] = [t(protocol.think_close), t(protocol.search_open), 100 + k, 200 + k,
                             t(protocol.search_close)]
    else:
      seg[:, period - 4:] = [t(protocol.think_close), t(protocol.answer_open), -1,
                             t(protocol.answer_close)]
      seg[:, period - 2] = [ANSWER_IDS[(r % group_size) % 2] for r in range(rows)]
  return script


def shares(parts: dict[str, float]) -> dict[str, float]:
  """{name: seconds} -> {name: percent of their sum}."""
  total = sum(parts.values())
  return {k: 100.0 * v / total if total > 0 else 0.0 for k, v in parts.items()}


def _hook(script: np.ndarray):
  forced = hooks.forced_tokens(script)

  def hook(logits, tokens, mask, length):        # free tokens never write a tag, pad or eos
    return forced(logits.at[:, :RESERVED_IDS].set(-1e9), tokens, mask, length)
  return hook


class _Recording:
  """The sampler, keeping each Rollout's host/device timing stats (Generator drops them)."""

  def __init__(self, sampler):
    self.inner, self.rcfg, self.stats = sampler, sampler.rcfg, []

  def generate(self, params, prompts, seed=0):
    ro = self.inner.generate(params, prompts, seed=seed)
    self.stats.append(dict(ro.stats))
    return ro


def rl_config(name: str, b: DapoBench, workdir: str) -> rl.RLConfig:
  g, p = b.group_size, b.prompts_per_step
  return config_lib.load_config(
      "", cls=rl.RLConfig, model=name, workdir=workdir, batch_size=g * p, group_size=g,
      gen_groups_per_round=p, dynamic_sampling=False, chat_template=False,
      seq_len=b.prompt_len + b.new_tokens, max_new_tokens=b.new_tokens,
      prompt_buckets=(b.prompt_len,), chunk_steps=b.chunk_steps, max_turns=b.search_turns,
      max_tool_tokens=b.obs_tokens, top_k_docs=3, mini_batches=b.mini_batches,
      micro_batches=b.micro_batches, attn_impl=b.attn_impl, scan_layers=b.scan_layers,
      remat=b.remat, loss_impl=b.loss_impl, token_chunk=b.token_chunk,
      vocab_chunk=b.vocab_chunk, param_dtype=b.param_dtype, compute_dtype="bfloat16",
      sampler_dtype="bfloat16", sampler_attn_impl=b.sampler_attn_impl, mesh=b.mesh,
      learning_rate=1e-6, warmup_steps=0, steps=1000,
      reward=dict(answer_metric="recall"))


def _median_dict(ds: list[dict]) -> dict[str, float]:
  return {k: statistics.median(d[k] for d in ds) for k in ds[0]}


def bench_dapo(name: str, b: DapoBench) -> dict[str, Any]:
  """Warm-up step + b.steps timed steps of model `name`; one row of medians."""
  turn_period(b.new_tokens, b.search_turns, b.obs_tokens)      # bad shapes fail before set-up
  with tempfile.TemporaryDirectory() as workdir:
    cfg = rl_config(name, b, workdir)
    n_dev = len(jax.devices())
    rl.validate(cfg, n_dev)
    mcfg = config_lib.model_config(cfg)
    level = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)        # orbax logs every step of the unused manager
    try:
      run = trainer.setup(cfg, mcfg, rl.make_loss_fn(mcfg, cfg))
      run.mgr.close()
    finally:
      logging.set_verbosity(level)
    return _bench(name, b, cfg, mcfg, run, n_dev)


def _bench(name, b, cfg, mcfg, run, n_dev) -> dict[str, Any]:
  tok = SyntheticTokenizer(mcfg.vocab_size, cfg.reward.protocol)
  retriever = StubRetriever(b.latency_s)
  period = turn_period(b.new_tokens, b.search_turns, b.obs_tokens)
  script = forced_script(cfg.batch_size, b.group_size, period, b.search_turns, tok.tag_id,
                         cfg.reward.protocol)
  base = rl.make_sampler(mcfg, tok, cfg, retriever, run.mesh)   # the run's sampler configs
  dt = trainer.DTYPES[cfg.sampler_dtype]
  sampler = sampler_lib.Sampler(
      mcfg, tok, base.scfg, base.rcfg, retriever=retriever, protocol=cfg.reward.protocol,
      compute_dtype=dt, cache_dtype=dt,
      attn_impl=rl.sampler_attention(cfg), scan_layers=cfg.sampler_scan_layers,
      logits_hook=_hook(script), mesh=run.mesh)
  rec = _Recording(sampler)
  gen = collect.Generator(rec, tok, cfg)
  rng = np.random.default_rng(0)
  gold = f"w{ANSWER_IDS[0]}"
  examples = [{"prompt": [int(x) for x in rng.integers(RESERVED_IDS, mcfg.vocab_size,
                                                       b.prompt_len)], "gold": [gold]}
              for _ in range(4 * b.prompts_per_step)]
  stream = prompts_lib.PromptStream(examples, "mixed", 0)
  logp_fn = rl.make_logp_fn(mcfg, cfg, run.param_sh, run.batch_sh)
  holder = {"state": run.state}

  def step(i: int) -> tuple[dict, dict, dict]:
    t0 = time.perf_counter()
    gen.params, gen.log, rec.stats = holder["state"].params, [], []
    gen.seed_base = 1000 * (i + 1)
    groups = list(gen(stream, 0).groups)[:cfg.groups_per_step]
    batch = collect.assemble(groups, cfg.group_size, cfg.adv_eps, cfg.adv_ddof)
    t1 = time.perf_counter()
    holder["state"], um = rl.rl_update(holder["state"], batch, cfg=cfg, step_fn=run.step_fn,
                                       logp_fn=logp_fn, batch_sh=run.batch_sh)
    t2 = time.perf_counter()
    log, st = gen.log[0], rec.stats[0]
    times = {"rollout": log["rollout_s"], "reward": log["reward_s"],
             "other": (t1 - t0) - log["rollout_s"] - log["reward_s"], "update": t2 - t1}
    ro = {k: st[k] for k in ("prefill_s", "decode_s", "retrieve_s", "splice_s")}
    ro["host_s"] = st["total_s"] - sum(ro.values())
    ro.update(policy_tokens=float(log["response_len"].sum()),
              new_tokens=float(log["new_tokens"].sum()), searches=float(log["searches"].mean()),
              reward=float(log["parts"]["total"].mean()), rounds=float(st["rounds"]),
              outside_decode=float(st["outside_decode_share"]))
    return times, ro, {"finish": sorted(set(log["finish"])), "metrics": um, "batch": batch}

  step(0)                                                       # compiles everything
  runs = [step(i + 1) for i in range(b.steps)]
  times, ro = _median_dict([r[0] for r in runs]), _median_dict([r[1] for r in runs])
  last = runs[-1][2]
  if not np.isfinite(last["metrics"]["loss"]):
    raise FloatingPointError(f"{name}: non-finite DAPO loss {last['metrics']['loss']}")
  logp_s = _time_old_logp(last["batch"], cfg, logp_fn, holder["state"].params, run.batch_sh)
  return _row(name, b, cfg, mcfg, times, ro, logp_s, last, n_dev)


def _time_old_logp(batch, cfg, logp_fn, params, batch_sh) -> float:
  """The old-log-prob forward alone (part of `update`): one mini-batch, x mini_batches."""
  n = batch["inputs"].shape[0] // cfg.mini_batches
  g = trainer.to_global_batch({k: batch[k][:n] for k in ("inputs", "targets")},
                              cfg.micro_batches, batch_sh)
  jax.block_until_ready(logp_fn(params, g["inputs"], g["targets"]))
  t = time.perf_counter()
  jax.block_until_ready(logp_fn(params, g["inputs"], g["targets"]))
  return (time.perf_counter() - t) * cfg.mini_batches


def _row(name, b, cfg, mcfg, times, ro, logp_s, last, n_dev) -> dict[str, Any]:
  rows, seq = last["batch"]["inputs"].shape
  total = sum(times.values())
  pct = shares(times)
  upd_tps = rows * seq / times["update"]
  train_tok = flops.train_flops_per_token(mcfg, seq)
  # train-token equivalents per update token: fwd+bwd (1) + the old-logp forward (1/3) per
  # mini-batch pass (+ 1/3 for a reference forward when the KL term is on).
  equiv = 1.0 + (1.0 + (cfg.dapo.kl_coef > 0)) / 3.0
  mem = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0)
  return {
      "model": name, "rollouts": f"{b.prompts_per_step}x{b.group_size}", "prompt": b.prompt_len,
      "new": b.new_tokens, "seq": seq, "turns": b.search_turns, "mini": cfg.mini_batches,
      "micro": cfg.micro_batches,
      "rollout_s": f"{times['rollout']:.3f}", "reward_s": f"{times['reward']:.3f}",
      "other_s": f"{times['other']:.3f}", "update_s": f"{times['update']:.3f}",
      "old_logp_s": f"{logp_s:.3f}", "total_s": f"{total:.3f}",
      "rollout%": f"{pct['rollout']:.1f}", "reward%": f"{pct['reward']:.1f}",
      "other%": f"{pct['other']:.1f}", "update%": f"{pct['update']:.1f}",
      "rollout_tok_s": f"{ro['policy_tokens'] / times['rollout']:,.0f}",
      "decode_tok_s": f"{ro['policy_tokens'] / max(ro['decode_s'], 1e-9):,.0f}",
      "update_tok_s": f"{upd_tps:,.0f}",
      "update_tflops": f"{train_tok * upd_tps * equiv / n_dev / 1e12:.1f}",
      "update_mfu": f"{100 * flops.mfu(mcfg, seq, upd_tps * equiv, n_dev):.1f}%",
      "peak_mem_gb": f"{mem / 1e9:.1f}",
      # rollout breakdown (Sampler stats): device work is prefill + decode (+ the splice's
      # device part); retrieve = the stub's latency; host = the tool loop, detokenisation.
      "prefill_s": f"{ro['prefill_s']:.3f}", "decode_s": f"{ro['decode_s']:.3f}",
      "retrieve_s": f"{ro['retrieve_s']:.3f}", "splice_s": f"{ro['splice_s']:.3f}",
      "host_s": f"{ro['host_s']:.3f}", "outside_decode%": f"{100 * ro['outside_decode']:.1f}",
      "rounds": f"{ro['rounds']:.0f}",
      "policy_tokens": f"{ro['policy_tokens']:.0f}", "new_tokens": f"{ro['new_tokens']:.0f}",
      "searches": f"{ro['searches']:.2f}", "reward": f"{ro['reward']:.2f}",
      "finish": ",".join(last["finish"]),
  }
