"""The fused one-token projection kernels (model/decode_linear.py) alone: weight-streaming bandwidth
per projection of a model, per kernel configuration, beside XLA's plain matmul of the same weights.

  python benchmarks/decode_linear.py --model=1.5b --rows=1,64
  python benchmarks/decode_linear.py --model=tiny --rows=1 --platform=cpu --repeats=1  # smoke

Each timing is one jitted call of `layers` independent projections, each with its own weights (as
in a decode step: nothing stays in L2 between layers), best of `repeats`. GB/s counts the weight
bytes once; `of copy` divides by the device-copy bandwidth (torch, CUDA events) measured here.
The XLA column is the bare product (`einsum`, the one-row fix of model/matmul.py applied); the
Pallas columns also do the norm, bias, RoPE / SwiGLU and residual of that projection.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout, uninstalled

flags.DEFINE_string("model", "1.5b", "preset (model/config.py)")
flags.DEFINE_list("rows", ["1", "64"], "rows (decode batch sizes)")
flags.DEFINE_integer("layers", 28, "independent weight copies per timed call (0: the model's)")
flags.DEFINE_list("configs", ["default", "w8", "n2", "s3", "k2", "w8n2"],
                  "kernel configs: default, or any of wN (num_warps N), sN (num_stages N), uN "
                  "(N K tiles per loop trip), d1 (one row through tl.dot), "
                  "n2 / k2 (double block_n / block_k), n4 / h2 (4x block_n / half block_k)")
flags.DEFINE_integer("repeats", 5, "timed repeats (best reported)")
flags.DEFINE_integer("loop_trips", 10, "trips of the on-device loop per timed call")
flags.DEFINE_string("platform", "", "force a JAX platform (cpu for smoke tests)")
FLAGS = flags.FLAGS


def _config(name: str, m: int, k: int, cols: int) -> dict:
  from masksearch_jax.model import decode_linear as dl
  bk, bn = dl.blocks(m, k, cols)
  kw = {}
  for part in ([] if name == "default" else [name[i:i + 2] for i in range(0, len(name), 2)]):
    if part[0] == "w":
      kw["num_warps"] = int(part[1])
    elif part[0] == "s":
      kw["num_stages"] = int(part[1])
    elif part[0] == "u":
      kw["unroll"] = int(part[1])
    elif part == "d1":                            # M = 1 through tl.dot (16-column blocks)
      kw["one_row_dot"] = True
      kw["block_n"] = max(kw.get("block_n", bn), 16)
    elif part == "n2":
      kw["block_n"] = bn * 2
    elif part == "n4":
      kw["block_n"] = bn * 4
    elif part == "k2":
      kw["block_k"] = bk * 2
    elif part == "h2":
      kw["block_k"] = bk // 2
  return kw


def _reference(x, w, mode, extra, cfg):
  """The projection in float32 from the same bf16 inputs (qwen2's own norm and RoPE)."""
  import jax
  import jax.numpy as jnp
  from masksearch_jax.model import qwen2
  xf = x.astype(jnp.float32)
  if "norm_scale" in extra:
    xf = qwen2.rms_norm(xf, extra["norm_scale"].astype(jnp.float32), cfg.rms_norm_eps)
  y = jnp.dot(xf, w.astype(jnp.float32).T, precision=jax.lax.Precision.HIGHEST)
  if "bias" in extra:
    y = y + extra["bias"].astype(jnp.float32)
  if mode == "swiglu":
    f = y.shape[1] // 2
    return jax.nn.silu(y[:, :f]) * y[:, f:]
  if mode == "rope":
    m, dh, r = y.shape[0], extra["head_dim"], extra["rotary_heads"]
    yh = y.reshape(1, m, -1, dh)
    rot = qwen2.rope(yh[:, :, :r], extra["positions"][None], extra["theta"])
    return jnp.concatenate([rot, yh[:, :, r:]], axis=2).reshape(m, -1)
  if "residual" in extra:
    y = y + extra["residual"].astype(jnp.float32)
  return y


def _looped(one, reps: int):
  """jit(x, ws): `reps` trips of a loop, each running `one(x, w)` for every w. A trip adds one
  column of every output to x (times 0: XLA keeps the products, one tiny fusion per trip), so
  the calls cannot be hoisted or dropped and one dispatch covers reps * len(ws) projections."""
  import jax

  def run(x, ws):
    def body(_, x):
      ys = [one(x, w) for w in ws]
      return x + sum(y[:, :1].astype(x.dtype) for y in ys) * 0
    return jax.lax.fori_loop(0, reps, body, x)
  return jax.jit(run)


def _time(f, args, repeats):
  import jax
  jax.block_until_ready(f(*args))
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    best = min(best, time.perf_counter() - t)
  return best


def main(argv):
  del argv
  if FLAGS.platform:
    os.environ["JAX_PLATFORMS"] = FLAGS.platform
  import jax
  import jax.numpy as jnp
  import numpy as np
  from masksearch_jax.model import config, decode_linear as dl
  from masksearch_jax.model.matmul import rows_einsum
  from benchmarks.common import measure_copy_torch
  cfg = config.get_config(FLAGS.model)
  L = FLAGS.layers or cfg.num_layers
  D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
  bf = jnp.bfloat16
  copy = measure_copy_torch() if jax.default_backend() == "gpu" else None
  # name, mode, K, N (rows of w_t), columns per block, copies, extra kwargs
  shapes = [("qkv+rope", "rope", D, (H + 2 * K) * Dh, Dh // 2, L),
            ("o+res", "plain", H * Dh, D, D, L),
            ("gate_up+swiglu", "swiglu", D, 2 * F, F, L),
            ("down+res", "plain", F, D, D, L),
            ("lm_head f32", "plain", D, V, V, 1)]
  print(f"device: {jax.devices()[0].device_kind}  model {FLAGS.model}  {L} weight copies"
        + (f"  device copy {copy:.2f} TB/s" if copy else ""))
  print(f"{'projection':>15} {'rows':>4} {'MB/layer':>8} {'config':>8} {'us/layer':>9} "
        f"{'GB/s':>7} {'of copy':>7} {'XLA GB/s':>8} {'rel err':>8}")
  key = (jax.random.fold_in(jax.random.PRNGKey(0), i) for i in range(10**6))
  reps = FLAGS.loop_trips
  for m in (int(r) for r in FLAGS.rows):
    for name, mode, k, n, cols, copies in shapes:
      if not dl.supported(m, k, n, mode, Dh):
        print(f"{name:>15} {m:>4}  unsupported")
        continue
      ws = [jax.random.normal(next(key), (n, k), bf) * 0.05 for _ in range(copies)]
      x = jax.random.normal(next(key), (m, k), bf)
      extra = {"plain": {}, "rope": dict(bias=jax.random.normal(next(key), (n,), bf) * 0.1,
                                         positions=jnp.arange(m) + 300,
                                         head_dim=Dh, rotary_heads=H + K, theta=cfg.rope_theta),
               "swiglu": dict(norm_scale=1 + 0.1 * jax.random.normal(next(key), (k,), bf))}[mode]
      if name.startswith(("o+", "down")):
        extra = dict(residual=jax.random.normal(next(key), (m, n), bf))
      if name.startswith("lm_head"):
        extra = dict(norm_scale=jnp.ones((k,), bf), out_dtype=jnp.float32)
      mb = n * k * 2 / 1e6
      wts = [w.T for w in ws]                  # XLA reads the [in, out] layout it gets in qwen2
      t_x = _time(_looped(lambda x, w: rows_einsum("btk,kn->btn", x[:, None], w)[:, 0], reps),
                  (x, wts), FLAGS.repeats) / copies / reps
      del wts
      for c in FLAGS.configs:
        kw = _config(c, m, k, cols)
        try:
          one = lambda x, w, kw=kw: dl.linear(x, w, mode=mode, **extra, **kw)
          t = _time(_looped(one, reps), (x, ws), FLAGS.repeats) / copies / reps
          want = _reference(x, ws[0], mode, extra, cfg)
          got = jax.jit(one)(x, ws[0]).astype(jnp.float32)
          err = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
        except Exception as e:                     # a config that does not tile or compile
          print(f"{name:>15} {m:>4} {mb:>8.1f} {c:>8}  failed: {type(e).__name__}: {str(e)[:80]}")
          continue
        gbs = mb / 1e3 / t
        of = f"{gbs / 1e3 / copy:>6.1%}" if copy else f"{'-':>7}"
        print(f"{name:>15} {m:>4} {mb:>8.1f} {c:>8} {t * 1e6:>9.1f} {gbs:>7.0f} {of} "
              f"{mb / 1e3 / t_x:>8.0f} {err:>8.1e}", flush=True)
      del ws


if __name__ == "__main__":
  app.run(main)
