"""Forward + backward step time and MFU of Qwen2.5 shapes (random weights, bf16 compute).

  python benchmarks/forward.py --models=0.5b,1.5b --seq=2048 \
      --variants=xla:none:4,cudnn:dots_no_batch:8,cudnn:full:8 --json_out=/tmp/fwd.json

A variant is attention:remat:batch[:loss[:layers]], loss in {full, chunked}, layers in
{scan, unrolled}; chunked loss (chunked never materialises
f32 logits). MFU = model FLOPs (6·N·tokens + causal attention) / time / datasheet peak.
"""
from __future__ import annotations

import functools
import platform

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from masksearch_jax.model import config as mcfg, qwen2
from masksearch_jax.train import losses

_MODELS = flags.DEFINE_string("models", "0.5b,1.5b", "comma-separated model presets")
_SEQ = flags.DEFINE_integer("seq", 2048, "sequence length")
_VARIANTS = flags.DEFINE_string("variants", "xla:none:4,cudnn:dots_no_batch:8,cudnn:full:8",
                                "attention:remat:batch[:loss] items")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "bfloat16", ["bfloat16", "float32"], "params")
_ITERS = flags.DEFINE_integer("iters", 10, "timed steps per variant")
_TOKEN_CHUNK = flags.DEFINE_integer("token_chunk", 4096, "chunked loss: tokens per chunk")
_LOGITS_DTYPE = flags.DEFINE_enum("logits_dtype", "float32", ["float32", "bfloat16"],
                                  "fused loss: the unembedding product's output dtype")
_VOCAB_CHUNK = flags.DEFINE_integer("vocab_chunk", 1 << 20, "chunked loss: vocab per chunk")
_JSON = flags.DEFINE_string("json_out", None, "write rows as JSON here")


def loss_fn(params, tokens, cfg, attn, remat, loss_kind, scan):
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  mask = jnp.ones_like(targets)
  kw = dict(attn_impl=attn, remat=remat, scan_layers=scan)
  if loss_kind in ("chunked", "fused"):
    h, _ = qwen2.apply(params, cfg, inputs, return_hidden=True, **kw)
    w = qwen2.unembedding(params, cfg).T.astype(h.dtype)       # [V, D]
    if loss_kind == "fused":
      s, n, _ = losses.fused_cross_entropy(h, w, targets, mask, token_chunk=_TOKEN_CHUNK.value,
                                           logits_dtype=jnp.dtype(_LOGITS_DTYPE.value))
    else:
      s, n = losses.chunked_cross_entropy(h, w, targets, mask, token_chunk=_TOKEN_CHUNK.value,
                                          vocab_chunk=_VOCAB_CHUNK.value)
  else:
    logits, _ = qwen2.apply(params, cfg, inputs, **kw)
    s, n = losses.masked_cross_entropy(logits, targets, mask)
  return s / n


def run_variant(cfg, seq, attn, remat, batch, loss_kind, scan, iters):
  dtype = jnp.bfloat16 if _PARAM_DTYPE.value == "bfloat16" else jnp.float32
  params = jax.jit(functools.partial(qwen2.init_params, cfg, dtype=dtype))(jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (batch, seq + 1), 0, cfg.vocab_size)
  step = jax.jit(jax.value_and_grad(functools.partial(
      loss_fn, cfg=cfg, attn=attn, remat=remat, loss_kind=loss_kind, scan=scan)))
  times = common.time_fn(lambda: step(params, tokens), warmup=2, iters=iters)
  loss = float(step(params, tokens)[0])
  if not np.isfinite(loss):
    raise FloatingPointError(f"non-finite loss {loss}")
  t = common.median(times)
  flops = common.train_flops_per_step(cfg, batch, seq)
  peak = common.PEAK_FLOPS.get(jax.default_backend(), 1e12)
  mem = jax.devices()[0].memory_stats() or {}
  del params, step
  return {"step_s": f"{t:.4f}", "tokens_per_s": f"{batch * seq / t:,.0f}",
          "tflops": f"{flops / t / 1e12:.1f}", "mfu": f"{100 * flops / t / peak:.1f}%",
          "peak_mem_gb": f"{mem.get('peak_bytes_in_use', 0) / 1e9:.1f}", "loss_val": f"{loss:.3f}"}


def main(argv):
  del argv
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
        f"python {platform.python_version()}, params {_PARAM_DTYPE.value}, compute bf16")
  rows = []
  for name in _MODELS.value.split(","):
    cfg = mcfg.get_config(name)
    for v in _VARIANTS.value.split(","):
      parts = v.split(":")
      attn, remat, batch = parts[0], parts[1], int(parts[2])
      loss_kind = parts[3] if len(parts) > 3 else "chunked"
      scan = (parts[4] if len(parts) > 4 else "scan") == "scan"
      row = {"model": name, "attn": attn, "remat": remat, "batch": batch, "seq": _SEQ.value,
             "loss": loss_kind, "layers": "scan" if scan else "unrolled"}
      try:
        row.update(run_variant(cfg, _SEQ.value, attn, remat, batch, loss_kind, scan, _ITERS.value))
      except Exception as e:  # OOM or an implementation missing on this backend: report, go on
        row["step_s"] = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
      rows.append(row)
      print(row, flush=True)
  print()
  common.print_table(rows, ["model", "attn", "remat", "batch", "seq", "loss", "layers", "step_s",
                            "tokens_per_s", "tflops", "mfu", "peak_mem_gb", "loss_val"])
  common.write_json(_JSON.value, {"device": dev.device_kind, "rows": rows})


if __name__ == "__main__":
  app.run(main)
