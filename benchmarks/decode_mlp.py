"""The one-kernel decode MLP block (model/decode_mlp.py) alone, against XLA's folded MLP block.

  python benchmarks/decode_mlp.py --model=1.5b --rows=2 --slices=32,64,128 --bks=64,128,256 \
      --warps=4,8 --stages=3,4 --bandwidth_tbs=4.27
  python benchmarks/decode_mlp.py --model=tiny --rows=2 --platform=cpu --layers=2   # smoke

Both sides run a chain of `layers` MLP blocks with separate weights (the 1.5B's 28 blocks are
2.3 GB, far past the L2), each block's output the next one's input, as in a decode step:
  XLA (qwen2's "xla_folded" decode path): norm statistic, gate/up gemm with the row scale,
    SwiGLU, down gemm, residual add;
  ours: one kernel + the XLA sum of its per-slice partials fused with the residual add.
µs a block, GB/s of MLP weights, the fraction of the copy roofline, and the largest difference
from XLA's output over the chain (bf16 rounding, compounded over the blocks).
"""
from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout, uninstalled

flags.DEFINE_string("model", "1.5b", "preset (model/config.py)")
flags.DEFINE_list("rows", ["2"], "rows of the block (decode batch; batch 1 runs as 2)")
flags.DEFINE_integer("layers", 0, "blocks in the chain (0: the model's layer count)")
flags.DEFINE_list("slices", ["64"], "hidden units a program (decode_mlp slice)")
flags.DEFINE_list("bks", ["128"], "K tile of the gate/up loop")
flags.DEFINE_list("bns", ["128"], "output tile of the down loop")
flags.DEFINE_list("warps", ["4"], "num_warps")
flags.DEFINE_list("stages", ["3"], "num_stages (Triton's software pipeline depth)")
flags.DEFINE_integer("loop_trips", 10, "trips of the on-device loop per timed call")
flags.DEFINE_integer("repeats", 3, "timed repeats (best reported)")
flags.DEFINE_float("bandwidth_tbs", 0.0, "HBM copy bandwidth for the roofline (TB/s); 0: none")
flags.DEFINE_string("platform", "", "force a JAX platform (cpu for smoke tests)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.platform:
    os.environ["JAX_PLATFORMS"] = FLAGS.platform
  import jax
  import jax.numpy as jnp
  from masksearch_jax.model import config, decode_mlp, qwen2
  cfg = config.get_config(FLAGS.model)
  D, F, eps = cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps
  n = FLAGS.layers or cfg.num_layers
  dt = jnp.bfloat16
  keys = iter(jax.random.split(jax.random.PRNGKey(0), 2 * n + 8))
  gate_up = [(jax.random.normal(next(keys), (D, 2 * F), jnp.float32) * 0.02).astype(dt)
             for _ in range(n)]
  down = [(jax.random.normal(next(keys), (F, D), jnp.float32) * 0.02).astype(dt)
          for _ in range(n)]
  mb = (gate_up[0].size + down[0].size) * 2 / 1e6
  trips = FLAGS.loop_trips

  def xla_block(h, gu, dn):
    lp, c = {"gate_up": gu, "down": dn}, lambda w: w
    act = qwen2._mlp_in(h[:, None], lp, c, qwen2.rms_scale(h[:, None], eps))
    return h + qwen2._dense(act, lp, "down", c)[:, 0]

  def timed(block, h, ws):
    def chain(h, ws):
      for w in ws:
        h = block(h, *w)
      return h

    def run(h, ws):
      return jax.lax.fori_loop(0, trips, lambda _, h: chain(h, ws), h)
    once = jax.jit(chain)(h, ws)
    f = jax.jit(run)
    jax.block_until_ready(f(h, ws))
    best = float("inf")
    for _ in range(FLAGS.repeats):
      t = time.perf_counter()
      jax.block_until_ready(f(h, ws))
      best = min(best, time.perf_counter() - t)
    return best / trips / n, once

  def line(name, rows, t, diff=""):
    roof = f"{mb / 1e6 / t / FLAGS.bandwidth_tbs:>6.1%}" if FLAGS.bandwidth_tbs else "   -"
    print(f"{rows:>4} {name:>30} {t * 1e6:>8.2f} {mb / 1e3 / t:>7.0f} {roof} {diff}", flush=True)

  print(f"device: {jax.devices()[0].device_kind}  model {FLAGS.model}  {n} blocks of "
        f"{mb:.1f} MB  roofline {FLAGS.bandwidth_tbs or '-'} TB/s")
  print(f"{'rows':>4} {'kernel':>30} {'us/block':>8} {'GB/s':>7} {'roof':>6} max|diff| vs XLA")
  grid = list(itertools.product(*(map(int, v) for v in (
      FLAGS.slices, FLAGS.bks, FLAGS.bns, FLAGS.warps, FLAGS.stages))))
  for m in map(int, FLAGS.rows):
    h = (jax.random.normal(next(keys), (m, D), jnp.float32)).astype(dt)
    t_xla, ref = timed(xla_block, h, list(zip(gate_up, down)))
    line("xla (folded)", m, t_xla)
    for bf in sorted({g[0] for g in grid}):
      w1 = [decode_mlp.slice_layout(g, bf) for g in gate_up]
      for _, bk, bn, w, st in (g for g in grid if g[0] == bf):
        name = f"slice={bf} bk={bk} bn={bn} w={w} st={st}"
        block = lambda h, a, b, bk=bk, bn=bn, w=w, st=st: decode_mlp.mlp_block(
            h, a, b, eps=eps, block_k=bk, block_n=bn, num_warps=w, num_stages=st)
        try:
          t, out = timed(block, h, list(zip(w1, down)))
        except Exception as e:                         # a tiling Triton refuses
          print(f"{m:>4} {name:>30}  failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
          continue
        diff = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32))))
        scale = float(jnp.max(jnp.abs(ref.astype(jnp.float32))))
        line(name, m, t, f"{diff:.3g} of {scale:.3g}  ({t_xla / t:.3f}x XLA)")
      del w1


if __name__ == "__main__":
  app.run(main)
