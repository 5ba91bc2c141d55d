"""SFT update-step time and MFU (beside a bare forward+backward), and a DAPO step broken down
into rollout, reward and update.

  python benchmarks/train_step.py --models=0.5b,1.5b --modes=sft,dapo --iters=5 --dapo_steps=2 \
      --json_out=/tmp/train_step.json                                   # one H100, < 5 min
  python benchmarks/train_step.py --models=tiny --batch=2 --seq=64 --iters=2 --prompt_len=16 \
      --new_tokens=96 --obs_tokens=16 --group_size=2 --prompts_per_step=2 --micro_batches_rl=2
                                                          # CPU smoke test (~30 s on 2 cores)
  python benchmarks/train_step.py --models=1.5b --modes=sft --nopacked --noscan_layers \
      --sft_variants=remat=dots_attn_acts/batch_size=16,remat=dots_attn/batch_size=24 \
      --variant_rounds=2                                  # A B A B in one process, one machine

SFT rows per model (--modes=sft):
  fwd+bwd   jit(value_and_grad) of the SFT loss (what benchmarks/forward.py measures)
  sft step  the trainer's jitted, donated update: accumulated grads + clip + AdamW + new state
The gap between them is the optimizer and state traffic. Inputs are packed-layout rows (segment
ids and positions given, so attention gets a mask as in real SFT), every token a loss token;
--nopacked measures one example per row (pack_window=1: causal-only attention).
MFU = train_flops_per_token (train/flops.py) x tokens/s / device peak (H100/H200: 989 TFLOP/s).

DAPO rows (--modes=dapo, benchmarks/dapo_step.py): prompts_per_step x group_size rollouts of a
random-weight policy (bf16 sampler, f32 master params) forced to make --search_turns searches
against a retriever stub of --retriever_latency_ms, rewards.compute_rewards, group advantages,
then rl.rl_update (old log-probs forward + mini_batches DAPO updates); medians over --dapo_steps
steps after a warm-up step. rollout_tok_s: policy-sampled tokens per rollout second;
update_tok_s: padded rows x seq per update second (as rl.run logs it); update MFU counts the
old-logp forward as 1/3 of a training token.
A second table splits the rollout into prefill / decode (device) / retrieve / splice / host.
Any row that fails (out of memory, a missing kernel) prints as FAILED; the others still run.
"""
from __future__ import annotations

import functools
import gc
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout, uninstalled

from benchmarks import common, dapo_step  # noqa: E402
from masksearch_jax.model import qwen2
from masksearch_jax.parallel import distributed, mesh as mesh_lib
from masksearch_jax.train import config as config_lib
from masksearch_jax.train import flops, optim, sft, trainer

_MODELS = flags.DEFINE_list("models", ["0.5b", "1.5b"], "Model presets / configs/models names.")
_MODES = flags.DEFINE_list("modes", ["sft", "dapo"], "Which rows: sft (fwd+bwd, sft step), dapo.")
_BATCH = flags.DEFINE_integer("batch", 8, "Global rows per update.")
_SEQ = flags.DEFINE_integer("seq", 2048, "Row length.")
_MICRO = flags.DEFINE_integer("micro_batches", 1, "Gradient-accumulation micro-batches.")
_ATTN = flags.DEFINE_string("attn_impl", "auto", "xla | jax | cudnn | auto (cudnn on a GPU, "
                            "else xla).")
_REMAT = flags.DEFINE_string("remat", "dots_attn", "qwen2.REMAT_POLICIES: none | full | dots | "
                             "dots_no_batch | dots_attn | dots_attn_norm | dots_attn_acts.")
_LOSS = flags.DEFINE_enum("loss_impl", "fused", ["chunked", "fused", "full"],
                          "SFT loss implementation.")
_TOKEN_CHUNK = flags.DEFINE_integer("token_chunk", 4096, "Chunked loss: tokens per chunk.")
_LOGITS_DTYPE = flags.DEFINE_enum("logits_dtype", "float32", ["float32", "bfloat16"],
                                  "Fused loss: the unembedding product's output dtype.")
_VOCAB_CHUNK = flags.DEFINE_integer("vocab_chunk", 0, "Chunked loss: vocab per chunk (0: all).")
_ACCURACY = flags.DEFINE_bool("accuracy", False, "Also compute next-token accuracy (one more "
                              "forward pass of the unembedding).")
_PACKED = flags.DEFINE_bool("packed", True, "SFT rows as packed (explicit segment mask) or one "
                             "example per row (pack_window=1: causal-only attention).")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"],
                                 "Master weights / optimizer state dtype.")
_MESH = flags.DEFINE_string("mesh", "data=1,fsdp=-1,tensor=1", "Mesh over all local devices.")
_ITERS = flags.DEFINE_integer("iters", 10, "Timed steps.")
_MEM_FRACTION = flags.DEFINE_float("gpu_memory_fraction", 0.0, "Share of the GPU's memory JAX may "
                                   "take (TrainConfig.gpu_memory_fraction; 0: JAX's 0.75).")
_JSON = flags.DEFINE_string("json_out", None, "Write the rows as JSON here.")
_SCAN = flags.DEFINE_bool("scan_layers", True, "lax.scan over layers (trainer and DAPO sampler).")
_VARIANTS = flags.DEFINE_list(
    "sft_variants", [], "SFT configurations timed one after another in this process, each "
    "'field=value/field=value' (TrainConfig names) over the flags, e.g. "
    "remat=dots_attn_acts/batch_size=16,remat=dots_attn/batch_size=24: rows of one process "
    "compare on one machine (lent H200s differed by ~1 point of MFU for the same step).")
_ROUNDS = flags.DEFINE_integer("variant_rounds", 1, "Time --sft_variants this many times, "
                               "interleaved (A B A B), so that drift shows.")
# DAPO step
_PROMPTS = flags.DEFINE_integer("prompts_per_step", 8, "DAPO: prompts (groups) per step.")
_GROUP = flags.DEFINE_integer("group_size", 8, "DAPO: rollouts per prompt.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 256, "DAPO: random prompt tokens.")
_NEW = flags.DEFINE_integer("new_tokens", 512, "DAPO: tokens after the prompt (policy + "
                            "observations); training rows are prompt_len + new_tokens long.")
_TURNS = flags.DEFINE_integer("search_turns", 2, "DAPO: forced searches per rollout.")
_OBS = flags.DEFINE_integer("obs_tokens", 128, "DAPO: observation tokens per search.")
_LATENCY = flags.DEFINE_float("retriever_latency_ms", 0.0, "DAPO: retriever stub latency.")
_MINI = flags.DEFINE_integer("mini_batches", 1, "DAPO: optimizer updates per step.")
_MICRO_RL = flags.DEFINE_integer("micro_batches_rl", 4, "DAPO: micro-batches per update.")
_CHUNK = flags.DEFINE_integer("chunk_steps", 64, "DAPO: decode steps per host check.")
_SAMPLER_ATTN = flags.DEFINE_string("sampler_attn_impl", "", "DAPO sampler attention (empty: "
                                    "rl.sampler_attention's choice: pallas after cudnn, else "
                                    "--attn_impl).")
_DAPO_STEPS = flags.DEFINE_integer("dapo_steps", 2, "DAPO: timed steps after one warm-up step.")


def _time(fn, iters: int) -> float:
  for _ in range(2):
    jax.block_until_ready(fn())
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _row(name, kind, cfg, mcfg, seconds, n_dev):
  tps = cfg.batch_size * cfg.seq_len / seconds
  mem = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0)
  return {"model": name, "kind": kind, "batch": cfg.batch_size, "seq": cfg.seq_len,
          "micro": cfg.micro_batches, "attn": cfg.attn_impl, "remat": cfg.remat,
          "loss": cfg.loss_impl + ("/bf16" if cfg.logits_dtype == "bfloat16" else ""),
          "step_s": f"{seconds:.4f}", "tokens_per_s": f"{tps:,.0f}",
          "tflops": f"{flops.train_flops_per_token(mcfg, cfg.seq_len) * tps / n_dev / 1e12:.1f}",
          "mfu": f"{100 * flops.mfu(mcfg, cfg.seq_len, tps, n_dev):.1f}%",
          "peak_mem_gb": f"{mem / 1e9:.1f}"}


def _attn_impl() -> str:
  if _ATTN.value != "auto":
    return _ATTN.value
  return "cudnn" if jax.default_backend() == "gpu" else "xla"


def parse_variant(spec: str) -> dict[str, str]:
  """'remat=dots_attn/batch_size=16' -> {"remat": "dots_attn", "batch_size": "16"}."""
  out = {}
  for item in filter(None, spec.split("/")):
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise app.UsageError(f"--sft_variants: {item!r} in {spec!r} is not field=value")
    out[key.strip()] = value.strip()
  return out


def bench_model(name: str, variant: str = "") -> list[dict]:
  overrides = parse_variant(variant)
  kw = dict(
      model=name, batch_size=_BATCH.value, seq_len=_SEQ.value, micro_batches=_MICRO.value,
      attn_impl=_attn_impl(), remat=_REMAT.value, loss_impl=_LOSS.value, scan_layers=_SCAN.value,
      token_chunk=_TOKEN_CHUNK.value, vocab_chunk=_VOCAB_CHUNK.value, accuracy=_ACCURACY.value,
      logits_dtype=_LOGITS_DTYPE.value,
      param_dtype=_PARAM_DTYPE.value, compute_dtype="bfloat16", mesh=_MESH.value,
      learning_rate=1e-5, warmup_steps=0, steps=1000, pack_window=64 if _PACKED.value else 1)
  cfg = config_lib.load_config("", **{**kw, **overrides})
  n_dev = len(jax.devices())
  config_lib.validate(cfg, n_dev)
  mcfg = config_lib.model_config(cfg)
  mesh, param_sh, batch_sh = trainer.build_mesh_and_shardings(cfg, mcfg)
  tx = optim.make_optimizer(cfg.optim)
  params = jax.jit(functools.partial(qwen2.init_params, mcfg, dtype=trainer.DTYPES[cfg.param_dtype]),
                   out_shardings=param_sh)(jax.random.key(0, impl="rbg"))
  shapes = trainer.param_shapes(mcfg, cfg.param_dtype)
  state_sh = trainer.state_shardings(tx, shapes, param_sh, mesh)
  state = trainer.TrainState.create(params, jax.jit(tx.init, out_shardings=state_sh.opt_state)(params),
                                    jax.random.key(1))
  state = jax.device_put(state, state_sh)
  b, t = cfg.batch_size, cfg.seq_len
  rng = np.random.default_rng(0)
  local = {"tokens": rng.integers(0, mcfg.vocab_size, (b, t), dtype=np.int32),
           "loss_mask": np.ones((b, t), np.int32), "segment_ids": np.ones((b, t), np.int32),
           "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1))}
  batch = trainer.to_global_batch(local, cfg.micro_batches, batch_sh)
  loss_fn = sft.make_loss_fn(mcfg, cfg)
  rows = []

  def mean_loss(p, mb):
    s, n, _ = loss_fn(p, mb)
    return s / n
  compute = trainer.DTYPES[cfg.compute_dtype]
  grad = mesh_lib.under_mesh(jax.jit(          # as the trainer: at the params cast once
      lambda p, mb: jax.value_and_grad(mean_loss)(optim.cast_floating(p, compute), mb)), mesh)
  first = jax.tree.map(lambda x: x[0], batch)          # one micro-batch: the fwd+bwd unit
  sec = _time(lambda: grad(state.params, first), _ITERS.value) * cfg.micro_batches
  rows.append(_row(name, "fwd+bwd", cfg, mcfg, sec, n_dev))
  del grad
  step = trainer.make_train_step(loss_fn, tx, cfg.micro_batches, state_sh, batch_sh,
                                 optim.make_schedule(cfg.optim), compute_dtype=compute)
  holder = {"state": state}

  def run():
    holder["state"], m = step(holder["state"], batch)
    return m
  sec = _time(run, _ITERS.value)
  m = jax.device_get(run())
  if not np.isfinite(m["loss"]):
    raise FloatingPointError(f"{name}: non-finite loss {m['loss']}")
  rows.append(_row(name, "sft step", cfg, mcfg, sec, n_dev))
  for r in rows:
    r["variant"] = variant or "-"
  return rows


def bench_dapo(name: str) -> dict:
  return dapo_step.bench_dapo(name, dapo_step.DapoBench(
      prompts_per_step=_PROMPTS.value, group_size=_GROUP.value, prompt_len=_PROMPT_LEN.value,
      new_tokens=_NEW.value, search_turns=_TURNS.value, obs_tokens=_OBS.value,
      latency_s=_LATENCY.value / 1e3, mini_batches=_MINI.value, micro_batches=_MICRO_RL.value,
      steps=_DAPO_STEPS.value, chunk_steps=_CHUNK.value, attn_impl=_attn_impl(),
      sampler_attn_impl=_SAMPLER_ATTN.value, scan_layers=_SCAN.value, remat=_REMAT.value,
      loss_impl=_LOSS.value, token_chunk=_TOKEN_CHUNK.value, vocab_chunk=_VOCAB_CHUNK.value,
      param_dtype=_PARAM_DTYPE.value, mesh=_MESH.value))


def _failed(name: str, kind: str, e: Exception, col: str) -> dict:
  return {"model": name, "kind": "FAILED", col: f"{kind}: {type(e).__name__}: "
          f"{' '.join(str(e).split())[:160]}"}


SFT_COLS = ["model", "kind", "batch", "seq", "micro", "attn", "remat", "loss", "step_s",
            "tokens_per_s", "tflops", "mfu", "peak_mem_gb", "variant"]
DAPO_COLS = ["model", "rollouts", "seq", "turns", "mini", "micro", "rollout_s", "reward_s",
             "other_s", "update_s", "total_s", "rollout%", "reward%", "other%", "update%",
             "rollout_tok_s", "update_tok_s", "update_tflops", "update_mfu", "peak_mem_gb"]
ROLLOUT_COLS = ["model", "rollout_s", "prefill_s", "decode_s", "retrieve_s", "splice_s", "host_s",
                "outside_decode%", "rounds", "policy_tokens", "new_tokens", "decode_tok_s",
                "searches", "reward", "finish", "old_logp_s"]


def main(argv):
  del argv
  distributed.set_gpu_memory_fraction(_MEM_FRACTION.value)     # before the backend starts
  dev = jax.devices()[0]
  unknown = set(_MODES.value) - {"sft", "dapo"}
  if unknown:
    raise app.UsageError(f"--modes: unknown {sorted(unknown)} (sft, dapo)")
  print(f"device: {len(jax.devices())} x {dev.device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}, python {platform.python_version()}, params "
        f"{_PARAM_DTYPE.value}, compute bfloat16, attn {_attn_impl()}")
  rows, dapo_rows = [], []
  for name in _MODELS.value:
    if "sft" in _MODES.value:
      for variant in (_VARIANTS.value or [""]) * max(_ROUNDS.value, 1):
        try:
          rows += bench_model(name, variant)
        except app.UsageError:
          raise
        except Exception as e:  # OOM or a backend without the kernel: report the row, go on
          rows.append({**_failed(name, "sft", e, "step_s"), "variant": variant or "-"})
        print(rows[-1], flush=True)
        gc.collect()
        jax.clear_caches()                        # the next variant's buffers start from empty
    if "dapo" in _MODES.value:
      try:
        dapo_rows.append(bench_dapo(name))
      except Exception as e:  # same: one FAILED row, the other models still run
        dapo_rows.append(_failed(name, "dapo", e, "rollouts"))
      print(dapo_rows[-1], flush=True)
  if rows:
    print("\nSFT")
    common.print_table(rows, SFT_COLS)
  if dapo_rows:
    print(f"\nDAPO step: {_PROMPTS.value} prompts x {_GROUP.value} rollouts, prompt "
          f"{_PROMPT_LEN.value} + {_NEW.value} new tokens, {_TURNS.value} searches x "
          f"{_OBS.value} observation tokens, retriever {_LATENCY.value:g} ms; medians of "
          f"{_DAPO_STEPS.value} steps (update = old-logp forward + DAPO updates; other = "
          f"batch assembly)")
    common.print_table(dapo_rows, DAPO_COLS)
    ok = [r for r in dapo_rows if r.get("kind") != "FAILED"]
    if ok:
      print("\nDAPO rollout breakdown (Sampler stats; old_logp_s: the old-logp forward alone, "
            "part of update_s)")
      common.print_table(ok, ROLLOUT_COLS)
  if _JSON.value:
    import json
    with open(_JSON.value, "w") as f:
      json.dump({"device": dev.device_kind, "rows": rows, "dapo_rows": dapo_rows}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
