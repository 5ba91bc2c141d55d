"""SFT update-step time and MFU, side by side with a bare forward+backward of the same loss.

  python benchmarks/train_step.py --models=0.5b,1.5b --batch=8 --seq=2048 --attn_impl=cudnn \
      --remat=dots_no_batch --json_out=/tmp/train_step.json
  python benchmarks/train_step.py --models=tiny --batch=2 --seq=64      # CPU smoke test

Rows per model:
  fwd+bwd   jit(value_and_grad) of the SFT loss (what benchmarks/forward.py measures)
  sft step  the trainer's jitted, donated update: accumulated grads + clip + AdamW + new state
The gap between them is the optimizer and state traffic. Inputs are packed-layout rows (segment
ids and positions given, so attention gets a mask as in real SFT), every token a loss token.
MFU = train_flops_per_token (train/flops.py) x tokens/s / device peak (H100/H200: 989 TFLOP/s).
"""
from __future__ import annotations

import functools
import platform
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from masksearch_jax.model import qwen2
from masksearch_jax.train import config as config_lib
from masksearch_jax.train import flops, optim, sft, trainer

_MODELS = flags.DEFINE_list("models", ["0.5b", "1.5b"], "Model presets / configs/models names.")
_BATCH = flags.DEFINE_integer("batch", 8, "Global rows per update.")
_SEQ = flags.DEFINE_integer("seq", 2048, "Row length.")
_MICRO = flags.DEFINE_integer("micro_batches", 1, "Gradient-accumulation micro-batches.")
_ATTN = flags.DEFINE_string("attn_impl", "cudnn", "xla | jax | cudnn (cudnn needs a GPU).")
_REMAT = flags.DEFINE_string("remat", "dots_no_batch", "none | full | dots | dots_no_batch.")
_LOSS = flags.DEFINE_enum("loss_impl", "chunked", ["chunked", "full"], "SFT loss implementation.")
_TOKEN_CHUNK = flags.DEFINE_integer("token_chunk", 4096, "Chunked loss: tokens per chunk.")
_VOCAB_CHUNK = flags.DEFINE_integer("vocab_chunk", 0, "Chunked loss: vocab per chunk (0: all).")
_ACCURACY = flags.DEFINE_bool("accuracy", False, "Also compute next-token accuracy (one more "
                              "forward pass of the unembedding).")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"],
                                 "Master weights / optimizer state dtype.")
_MESH = flags.DEFINE_string("mesh", "data=1,fsdp=-1,tensor=1", "Mesh over all local devices.")
_ITERS = flags.DEFINE_integer("iters", 10, "Timed steps.")
_JSON = flags.DEFINE_string("json_out", None, "Write the rows as JSON here.")


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
          "loss": cfg.loss_impl, "step_s": f"{seconds:.4f}", "tokens_per_s": f"{tps:,.0f}",
          "tflops": f"{flops.train_flops_per_token(mcfg, cfg.seq_len) * tps / n_dev / 1e12:.1f}",
          "mfu": f"{100 * flops.mfu(mcfg, cfg.seq_len, tps, n_dev):.1f}%",
          "peak_mem_gb": f"{mem / 1e9:.1f}"}


def bench_model(name: str) -> list[dict]:
  cfg = config_lib.load_config(
      "", model=name, batch_size=_BATCH.value, seq_len=_SEQ.value, micro_batches=_MICRO.value,
      attn_impl=_ATTN.value, remat=_REMAT.value, loss_impl=_LOSS.value,
      token_chunk=_TOKEN_CHUNK.value, vocab_chunk=_VOCAB_CHUNK.value, accuracy=_ACCURACY.value,
      param_dtype=_PARAM_DTYPE.value, compute_dtype="bfloat16", mesh=_MESH.value,
      learning_rate=1e-5, warmup_steps=0, steps=1000)
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
  grad = jax.jit(jax.value_and_grad(mean_loss))
  first = jax.tree.map(lambda x: x[0], batch)          # one micro-batch: the fwd+bwd unit
  sec = _time(lambda: grad(state.params, first), _ITERS.value) * cfg.micro_batches
  rows.append(_row(name, "fwd+bwd", cfg, mcfg, sec, n_dev))
  del grad
  step = trainer.make_train_step(loss_fn, tx, cfg.micro_batches, state_sh, batch_sh,
                                 optim.make_schedule(cfg.optim))
  holder = {"state": state}

  def run():
    holder["state"], m = step(holder["state"], batch)
    return m
  sec = _time(run, _ITERS.value)
  m = jax.device_get(run())
  if not np.isfinite(m["loss"]):
    raise FloatingPointError(f"{name}: non-finite loss {m['loss']}")
  rows.append(_row(name, "sft step", cfg, mcfg, sec, n_dev))
  return rows


def main(argv):
  del argv
  dev = jax.devices()[0]
  print(f"device: {len(jax.devices())} x {dev.device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}, python {platform.python_version()}, params "
        f"{_PARAM_DTYPE.value}, compute bfloat16")
  rows = []
  for name in _MODELS.value:
    try:
      rows += bench_model(name)
    except Exception as e:  # OOM or a backend without the kernel: report the row, go on
      rows.append({"model": name, "kind": "FAILED",
                   "step_s": f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"})
    print(rows[-1], flush=True)
  cols = ["model", "kind", "batch", "seq", "micro", "attn", "remat", "loss", "step_s",
          "tokens_per_s", "tflops", "mfu", "peak_mem_gb"]
  widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
  print()
  print(" | ".join(c.ljust(widths[c]) for c in cols))
  print("-|-".join("-" * widths[c] for c in cols))
  for r in rows:
    print(" | ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))
  if _JSON.value:
    import json
    with open(_JSON.value, "w") as f:
      json.dump({"device": dev.device_kind, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
