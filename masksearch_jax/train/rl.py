"""The DAPO loop: prompts -> G rollouts each (sampler + retriever) -> rewards -> dynamic sampling
-> group advantages -> trainer-side old log-probs -> DAPO updates -> metrics / checkpoint.

Reuses the shared trainer (train/trainer.py): mesh + shardings, init / resume, the jitted donated
update step whose loss function returns SUMS and a token count, so the DAPO token mean spans all
micro-batches and devices of a mini-batch exactly (dapo_loss is called with num_tokens=1).

One RL step = `batch_size` responses (= batch_size / group_size prompts) split into
`mini_batches` optimizer updates, each accumulated over `micro_batches`. `old_logp` comes from the
trainer's own forward pass over the whole step batch BEFORE the first update (so with
mini_batches = 1 the ratio is exactly 1: the on-policy DAPO gradient); the sampler's log-probs
only feed the mismatch metric. TrainState.step counts optimizer updates; the RL step is kept in
the checkpoint's data state with the prompt cursor.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from masksearch_jax import tokenizer as tok_lib
from masksearch_jax.model import attention, qwen2
from masksearch_jax.model.config import Qwen2Config
from masksearch_jax.parallel import mesh as mesh_lib
from masksearch_jax.rl import collect, dapo, dynamic_sampling, rewards
from masksearch_jax.rollout import sampler as sampler_lib
from masksearch_jax.rollout import types as rtypes
from masksearch_jax.train import losses, optim
from masksearch_jax.train.config import TrainConfig

__all__ = ["RLConfig", "validate", "make_loss_fn", "make_logp_fn", "rl_update", "make_sampler",
           "open_retriever", "run"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class RLConfig(TrainConfig):
  """TrainConfig (model, mesh, optim, checkpoints, ...) plus the RL fields. Reused fields:
  `data` = prompt files (QA / RAMP JSONL), `seq_len` = rollout buffer = training length,
  `batch_size` = responses per RL step, `curriculum` = mix | steps/loss (staged by mask_num)."""
  workdir: str = "runs/rl"
  # DAPO's token log-probs need a backward through the clipped ratio, which the fused SFT loss
  # does not give: "fused" here means the chunked log-probs (the default).
  loss_impl: str = "chunked"
  batch_size: int = 32
  log_every: int = 1
  save_every: int = 50
  optim: optim.OptimConfig = optim.OptimConfig(learning_rate=1e-6, schedule="constant",
                                               weight_decay=0.0)
  # prompts / retrieval
  retriever: str = ""                  # lexical:<corpus.jsonl> | http://host:port | index dir
  chat_template: bool = True           # wrap prompts in the tokenizer's chat template
  eval_data: tuple[str, ...] = ()      # held-out QA for eval_every (greedy accuracy)
  eval_limit: int = 64
  eval_every: int = 0
  eval_train_limit: int = 0            # greedy-eval the first N training prompts too (memorisation)
  # rollout
  group_size: int = 8                  # G responses per prompt
  gen_groups_per_round: int = 0        # prompts per generation round (0 = batch_size / G)
  dynamic_sampling: bool = True
  max_gen_rounds: int = 8
  # After max_gen_rounds, a batch with at least this share of informative groups is completed with
  # all-equal (zero-advantage) groups and trained on; below it the run stops (1.0: always stop).
  min_informative_frac: float = 1.0
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  max_new_tokens: int = 0              # 0 = up to seq_len
  prompt_buckets: tuple[int, ...] = (128, 256, 512, 1024, 2048)
  chunk_steps: int = 64
  max_turns: int = 4
  max_tool_tokens: int = 256
  top_k_docs: int = 3
  sampler_dtype: str = "bfloat16"      # rollout compute + KV cache
  sampler_scan_layers: bool = False    # unrolled decode (per-layer buffers) is ~2x faster on GPU
  sampler_attn_impl: str = ""          # rollout attention ("": sampler_attention's choice)
  sampler_linear_impl: str = "xla"     # xla_folded: norm gains in the weights; pallas: fused
                                       # one-token kernels (one device); both: unrolled only
  # update
  mini_batches: int = 1                # optimizer updates per RL step
  adv_eps: float = 1e-6
  adv_ddof: int = 0
  dapo: dapo.DapoConfig = dapo.DapoConfig()
  reward: rewards.RewardConfig = rewards.RewardConfig()

  @property
  def groups_per_step(self) -> int:
    return self.batch_size // self.group_size


def validate(cfg: RLConfig, num_devices: int) -> None:
  """TrainConfig checks + the RL combinations; one ValueError naming every bad field."""
  from masksearch_jax.parallel import mesh as mesh_lib
  from masksearch_jax.train import config as config_lib
  errors = []
  try:
    config_lib.validate(cfg, num_devices)
  except ValueError as e:
    errors.append(str(e))
  if cfg.group_size < 2:
    errors.append(f"group_size={cfg.group_size} must be >= 2 (group advantages)")
  elif cfg.batch_size % cfg.group_size:
    errors.append(f"batch_size={cfg.batch_size} is not a multiple of group_size={cfg.group_size}")
  per_update = cfg.mini_batches * cfg.micro_batches
  if cfg.mini_batches < 1 or cfg.batch_size % per_update:
    errors.append(f"batch_size={cfg.batch_size} not divisible by mini_batches x micro_batches = "
                  f"{cfg.mini_batches} x {cfg.micro_batches}")
  try:
    data, fsdp, _ = mesh_lib.resolve_shape(cfg.mesh, num_devices)
    if per_update and (cfg.batch_size // max(per_update, 1)) % (data * fsdp):
      errors.append(f"batch_size / (mini_batches x micro_batches) = {cfg.batch_size // per_update}"
                    f" rows per micro-batch not divisible by data x fsdp = {data * fsdp}")
    gen_rows = (cfg.gen_groups_per_round or max(cfg.groups_per_step, 1)) * cfg.group_size
    if gen_rows % data:
      errors.append(f"gen_groups_per_round x group_size = {gen_rows} rollout rows not divisible "
                    f"by the mesh data axis ({data})")
  except ValueError:
    pass                                          # already reported by config_lib.validate
  if cfg.gen_groups_per_round and not cfg.dynamic_sampling and \
      cfg.gen_groups_per_round < cfg.groups_per_step:
    errors.append(f"gen_groups_per_round={cfg.gen_groups_per_round} < batch_size / group_size = "
                  f"{cfg.groups_per_step} with dynamic_sampling off")
  if cfg.eval_train_limit < 0 or (cfg.eval_train_limit and not cfg.eval_every):
    errors.append(f"eval_train_limit={cfg.eval_train_limit} must be >= 0 and needs eval_every > 0")
  if cfg.max_gen_rounds < 1:
    errors.append(f"max_gen_rounds={cfg.max_gen_rounds} must be >= 1")
  if not 0.0 < cfg.min_informative_frac <= 1.0:
    errors.append(f"min_informative_frac={cfg.min_informative_frac} must be in (0, 1]")
  if cfg.sampler_dtype not in _DTYPES:
    errors.append(f"sampler_dtype={cfg.sampler_dtype!r} (one of {sorted(_DTYPES)})")
  if cfg.sampler_attn_impl and cfg.sampler_attn_impl not in attention.IMPLEMENTATIONS:
    errors.append(f"sampler_attn_impl={cfg.sampler_attn_impl!r} (one of "
                  f"{attention.IMPLEMENTATIONS}, or empty for attn_impl)")
  if cfg.sampler_linear_impl not in qwen2.LINEAR_IMPLS:
    errors.append(f"sampler_linear_impl={cfg.sampler_linear_impl!r} (one of {qwen2.LINEAR_IMPLS})")
  elif cfg.sampler_linear_impl != "xla" and cfg.sampler_scan_layers:
    errors.append(f"sampler_linear_impl={cfg.sampler_linear_impl!r} needs "
                  "sampler_scan_layers=False")
  if errors:
    raise ValueError("invalid RL config:\n  " + "\n  ".join(errors))


# ------------------------------------------------------------------------------ device functions

def _token_logprobs(params, model_cfg: Qwen2Config, cfg: RLConfig, inputs, targets, remat):
  """log p(targets) [B, S] f32 from the trainer's forward pass, under the sampling temperature
  (softmax(logits / T), the distribution the rollouts were drawn from; logits / T = (h / T) W, so
  the chunked path scales the hidden states). top-k / top-p renormalisation is not modelled: with
  those on, the mismatch metric shows the difference."""
  h, _ = qwen2.apply(params, model_cfg, inputs, compute_dtype=_DTYPES[cfg.compute_dtype],
                     remat=remat, attn_impl=cfg.attn_impl, scan_layers=cfg.scan_layers,
                     return_hidden=True)                                        # [B, S, D]
  if cfg.temperature > 0 and cfg.temperature != 1.0:
    h = h / jnp.asarray(cfg.temperature, h.dtype)
  if cfg.loss_impl == "full":
    return losses.token_logprobs(qwen2.logits_from_hidden(params, model_cfg, h), targets)
  unemb = qwen2.unembedding(params, model_cfg).T.astype(h.dtype)                # [V, D]
  return losses.chunked_token_logprobs(h, unemb, targets, token_chunk=cfg.token_chunk,
                                       vocab_chunk=cfg.vocab_chunk or model_cfg.vocab_size)


def make_loss_fn(model_cfg: Qwen2Config, cfg: RLConfig) -> Callable:
  """trainer.LossFn: (params, micro) -> (sum of DAPO token losses, loss tokens, metric sums)."""
  def loss_fn(params, mb):
    logp = _token_logprobs(params, model_cfg, cfg, mb["inputs"], mb["targets"], cfg.remat)
    loss, m = dapo.dapo_loss(logp, mb["old_logp"], mb["advantages"], mb["loss_mask"], 1.0,
                             cfg.dapo, ref_logp=mb.get("ref_logp"))
    mask = mb["loss_mask"].astype(jnp.float32)
    m = dict(m)
    m["neg_logp"] = -jnp.sum(jax.lax.stop_gradient(logp) * mask)   # mean = entropy estimate
    return loss, jnp.sum(mask), m
  return loss_fn


def make_logp_fn(model_cfg: Qwen2Config, cfg: RLConfig, param_sh, batch_sh) -> Callable:
  """Jitted (params, inputs, targets) [M, R, S] -> log-probs [M, R, S]; one micro-batch at a
  time (lax.map), so its memory is the training step's forward, never the whole step batch."""
  def fn(params, inputs, targets):
    one = lambda xy: _token_logprobs(params, model_cfg, cfg, xy[0], xy[1], "none")
    return jax.lax.map(one, (inputs, targets))
  return mesh_lib.under_mesh(jax.jit(fn, in_shardings=(param_sh, batch_sh, batch_sh),
                                  out_shardings=batch_sh), jax.tree.leaves(batch_sh)[0].mesh)


@jax.jit
def _mismatch(trainer_logp, sampler_logp, loss_mask):
  return dapo.logprob_mismatch(trainer_logp, sampler_logp, loss_mask, jnp.sum(loss_mask))


def rl_update(state, batch: dict, *, cfg: RLConfig, step_fn: Callable, logp_fn: Callable,
              batch_sh, ref_params=None) -> tuple[Any, dict]:
  """old_logp for every mini-batch from the current params, then one optimizer step each.

  batch: host rows {inputs, targets, loss_mask, sampler_logp [N, S], advantages [N]}.
  Returns (state, metrics): DAPO metrics averaged over the mini-batches + logprob mismatch."""
  from masksearch_jax.train import trainer
  n = batch["inputs"].shape[0]
  rows = dict(batch)
  rows["advantages"] = np.broadcast_to(np.asarray(batch["advantages"], np.float32)[:, None],
                                       batch["inputs"].shape) * (batch["loss_mask"] > 0)
  minis = []
  for i in range(cfg.mini_batches):              # all old_logp before any update
    sl = slice(i * n // cfg.mini_batches, (i + 1) * n // cfg.mini_batches)
    g = trainer.to_global_batch({k: v[sl] for k, v in rows.items()}, cfg.micro_batches, batch_sh)
    g["old_logp"] = logp_fn(state.params, g["inputs"], g["targets"])
    if cfg.dapo.kl_coef > 0:
      g["ref_logp"] = logp_fn(ref_params, g["inputs"], g["targets"])
    minis.append(g)
  mm = [_mismatch(g["old_logp"], g["sampler_logp"], g["loss_mask"]) for g in minis]
  per_update = []
  for g in minis:
    train = {k: v for k, v in g.items() if k != "sampler_logp"}
    state, m = step_fn(state, train)
    per_update.append(m)
  per_update, mm = jax.device_get((per_update, mm))
  metrics = {k: float(np.mean([m[k] for m in per_update])) for k in per_update[0]}
  metrics["num_tokens"] = float(sum(m["num_tokens"] for m in per_update))
  metrics["mismatch_mean_abs"] = float(np.mean([m["mismatch_mean_abs"] for m in mm]))
  metrics["mismatch_k3"] = float(np.mean([m["mismatch_k3"] for m in mm]))
  metrics["mismatch_max_abs"] = float(np.max([m["mismatch_max_abs"] for m in mm]))
  return state, metrics


# ------------------------------------------------------------------------------ setup

def open_retriever(spec: str):
  """`lexical:<corpus.jsonl>` (BM25 over a small corpus such as the world's) or anything
  retrieval.client.open_retriever takes (an http URL, a dense index directory)."""
  if not spec:
    raise ValueError("retriever is empty: give lexical:<corpus.jsonl>, an http URL or an index "
                     "directory (or pass a Retriever to run())")
  if spec.startswith("lexical:"):
    from masksearch_jax.data import world_search
    return world_search.LexicalRetriever.from_jsonl(spec[len("lexical:"):])
  from masksearch_jax.retrieval import client
  return client.open_retriever(spec)


def sampler_attention(cfg: RLConfig) -> str:
  """The rollouts' attention: `sampler_attn_impl` when set, else `attn_impl` — except that a
  cuDNN trainer (GPU) samples with "pallas", which is cuDNN for prefill and splices plus the
  Pallas one-token decode kernel. Measured on an H200 (1.5B DAPO step, 64 rollouts, alternating
  processes; benchmarks/RESULTS.md, session 23): rollouts 0.830-0.845 s vs 0.888-0.900 s, decode
  8.5% faster, splices and host time unchanged."""
  if cfg.sampler_attn_impl:
    return cfg.sampler_attn_impl
  return "pallas" if cfg.attn_impl == "cudnn" else cfg.attn_impl


def make_sampler(model_cfg, tok, cfg: RLConfig, retriever, mesh=None, *, greedy: bool = False,
                 use_tools: bool = True) -> sampler_lib.Sampler:
  scfg = rtypes.SamplingConfig(temperature=0.0 if greedy else cfg.temperature, top_k=cfg.top_k,
                               top_p=cfg.top_p)
  buckets = tuple(b for b in cfg.prompt_buckets if b < cfg.seq_len) or (cfg.seq_len // 2,)
  rcfg = rtypes.RolloutConfig(
      max_len=cfg.seq_len, max_new_tokens=cfg.max_new_tokens or None, prompt_buckets=buckets,
      chunk_steps=cfg.chunk_steps, eos_ids=tuple(tok_lib.stop_ids(tok)), use_tools=use_tools,
      max_turns=cfg.max_turns, max_tool_tokens=cfg.max_tool_tokens, top_k_docs=cfg.top_k_docs,
      pad_id=tok_lib.pad_id(tok))
  dt = _DTYPES[cfg.sampler_dtype]
  return sampler_lib.Sampler(model_cfg, tok, scfg, rcfg,
                             retriever=retriever if use_tools else None,
                             protocol=cfg.reward.protocol, compute_dtype=dt, cache_dtype=dt,
                             attn_impl=sampler_attention(cfg),
                             scan_layers=cfg.sampler_scan_layers, mesh=mesh,
                             linear_impl=cfg.sampler_linear_impl)


def _stream_curriculum(cfg: RLConfig) -> str:
  from masksearch_jax.train import config as config_lib
  return "mixed" if config_lib.curriculum_mode(cfg) == "mix" else "staged"


# ------------------------------------------------------------------------------ the loop

def run(cfg: RLConfig, *, tokenizer=None, retriever=None, examples=None, eval_examples=None,
        judge=None, devices=None) -> dict:
  """Trains (or resumes from cfg.workdir) to cfg.steps RL steps.

  tokenizer / retriever / examples default to cfg.tokenizer / cfg.retriever / cfg.data.
  Returns {"state", "model_config", "metrics" (last step), "eval" (last eval or None),
  "export" (HF dir or None), "rl_step"}."""
  from masksearch_jax.rl import prompts as prompts_lib
  from masksearch_jax.train import metrics as metrics_lib, sft, trainer
  devices = list(devices or jax.devices())
  validate(cfg, len(devices))
  tok_path = sft.tokenizer_dir(cfg)
  if tokenizer is None:
    if not tok_path:
      raise ValueError("tokenizer: no tokenizer directory (--tokenizer, or init_from with one)")
    tokenizer = tok_lib.load(tok_path)
  retriever = retriever if retriever is not None else open_retriever(cfg.retriever)
  proto = cfg.reward.protocol
  if examples is None:
    if not cfg.data:
      raise ValueError("data: no prompt files given (--data=questions.jsonl,ramp.jsonl)")
    examples = prompts_lib.load_examples(cfg.data, proto, cfg.max_examples or None)
  if eval_examples is None and cfg.eval_data:
    eval_examples = prompts_lib.load_examples(cfg.eval_data, proto, cfg.eval_limit)
  if cfg.eval_every and not eval_examples:
    raise ValueError(f"eval_every={cfg.eval_every} needs eval_data (held-out QA files)")
  # The same greedy eval on prompts the policy is rewarded on: a rising train / flat held-out
  # pair means DAPO is learning those prompts' answers, not the skill (benchmarks/RESULTS.md).
  train_eval = list(examples[:cfg.eval_train_limit]) if cfg.eval_train_limit else []
  mcfg = sft.resolve_model(cfg, tokenizer)
  mesh, param_sh, batch_sh, state, mgr, data_state, step_fn = trainer.setup(
      cfg, mcfg, make_loss_fn(mcfg, cfg), devices)
  logp_fn = make_logp_fn(mcfg, cfg, param_sh, batch_sh)
  ref_params = jax.tree.map(jnp.copy, state.params) if cfg.dapo.kl_coef > 0 else None
  stream = prompts_lib.PromptStream(examples, _stream_curriculum(cfg), cfg.seed)
  start = 0
  if data_state:
    start, stream.position = int(data_state["rl_step"]), int(data_state["position"])
  gen = collect.Generator(make_sampler(mcfg, tokenizer, cfg, retriever, mesh), tokenizer, cfg,
                          judge=judge)
  eval_sampler = (make_sampler(mcfg, tokenizer, cfg, retriever, mesh, greedy=True)
                  if eval_examples and cfg.eval_every else None)
  writer = metrics_lib.MetricsWriter(cfg.workdir, total_steps=cfg.steps,
                                     console_every=cfg.log_every,
                                     enabled=jax.process_index() == 0)
  row, last_eval, saved, step = {}, None, None, start
  try:
    while step < cfg.steps:
      step += 1
      t0 = time.perf_counter()
      stream_at_step_start = stream.state()
      gen.params, gen.log = state.params, []
      gen.seed_base = (cfg.seed * 1_000_003 + step) * 1000
      if cfg.dynamic_sampling:
        need = max(1, math.ceil(cfg.min_informative_frac * cfg.groups_per_step - 1e-9))
        try:
          groups, fs = dynamic_sampling.fill_batch(lambda i: gen(stream, i), cfg.groups_per_step,
                                                   cfg.max_gen_rounds, need)
        except dynamic_sampling.DynamicSamplingError:
          # The state is the last completed step's: keep it, and the prompt position at that
          # step's end, so a restart with other settings loses nothing.
          if step - 1 > start and saved != step - 1:
            mgr.save(step - 1, state, {"rl_step": step - 1, **stream_at_step_start}, force=True)
            saved = step - 1
            logging.error("dynamic sampling stopped the run at step %d; saved step %d", step,
                          step - 1)
          raise
        fill = {"gen_rounds": fs.rounds, "groups_kept_frac": fs.groups_kept / fs.groups_generated,
                "groups_padded": fs.groups_padded}
      else:
        groups = list(gen(stream, 0).groups)[:cfg.groups_per_step]
        fill = {"gen_rounds": 1, "groups_kept_frac": 1.0}
      batch = collect.assemble(groups, cfg.group_size, cfg.adv_eps, cfg.adv_ddof)
      t1 = time.perf_counter()
      state, um = rl_update(state, batch, cfg=cfg, step_fn=step_fn, logp_fn=logp_fn,
                            batch_sh=batch_sh, ref_params=ref_params)
      t2 = time.perf_counter()
      row = collect.rollout_metrics(gen.log)
      row.update(fill)
      row.update(um)
      row.update({"time/update_s": t2 - t1, "time/step_s": t2 - t0,
                  "time/host_other_s": (t1 - t0) - row["time/rollout_s"] - row["time/reward_s"],
                  "tokens_per_s/rollout": row["rollout_new_tokens"] / max(row["time/rollout_s"],
                                                                          1e-9),
                  "tokens_per_s/update": batch["inputs"].size / max(t2 - t1, 1e-9),
                  "adv_abs_mean": float(np.abs(batch["advantages"]).mean())})
      if eval_sampler is not None and step % cfg.eval_every == 0:
        for prefix, exs in (("eval", eval_examples), ("eval_train", train_eval)):
          if not exs:
            continue
          ev = collect.evaluate_accuracy(eval_sampler, state.params, tokenizer, exs, proto,
                                         cfg.chat_template)
          row.update({f"{prefix}/{k}": v for k, v in ev.items() if k != "n" and v is not None})
          if prefix == "eval":
            last_eval = ev
      writer.write(step, row)                     # raises on NaN/Inf before any save
      if mgr.save(step, state, {"rl_step": step, **stream.state()}, force=step == cfg.steps):
        saved = step
    if step > start and saved != step:
      mgr.save(step, state, {"rl_step": step, **stream.state()}, force=True)
  finally:
    writer.close()
    mgr.close()
  export = trainer.export_at_end(cfg, state, mcfg, tok_path, step > start)
  return {"state": state, "model_config": mcfg, "metrics": row, "eval": last_eval,
          "export": export, "rl_step": step}
