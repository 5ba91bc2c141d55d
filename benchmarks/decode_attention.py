"""The Pallas decode-attention kernel alone, per tiling, caches cold in HBM, beside XLA attention.

  python benchmarks/decode_attention.py --rows=2,64 --blocks=32,64,128 --warps=2,4,8 --stages=1,2,3,4
  python benchmarks/decode_attention.py --model=tiny --rows=2 --layers=2 --platform=cpu   # smoke

Why: in the batch-64 decode profile (benchmarks/RESULTS.md, session 20) attention reads the live
cache at ~2 TB/s, under half the 4.27 TB/s copy rate, and its tiling (64 keys a step, 4 warps,
2 pipeline stages) was never swept. Here one call runs a layer chain like a decode step's: the
kernel over `layers` separate caches in turn (together far past the 50 MB L2), each layer's output
the next one's query, inside an on-device loop, as the model runs it — the k/v-appending kernel up
to decode_attention.WRITE_MAX_ROWS rows (caches donated, updated in place), the attend-only one
above, with the partials' merge and the query padding included. XLA's attention over the same
caches is the in-process reference (it reads every slot, filled or not).

Bytes = the k and v of the `live` filled slots of every row: what the kernel must read. Each
tiling's output is checked against XLA attention on the first layer (max |diff|).
"""
from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout, uninstalled

flags.DEFINE_string("model", "1.5b", "preset (model/config.py): the head shape and layer count")
flags.DEFINE_list("rows", ["2", "64"], "decode rows (batch 1 runs as 2)")
flags.DEFINE_integer("cache_len", 768, "cache slots (the sampler benchmark: prompt 256 + 512 new)")
flags.DEFINE_integer("live", 512, "filled slots of every row (the benchmark's mean context)")
flags.DEFINE_integer("layers", 0, "separate caches chained (0: the model's layer count)")
flags.DEFINE_list("blocks", ["64"], "keys per inner step (decode_attention.BLOCK_KEYS)")
flags.DEFINE_list("warps", ["0"], "Triton warps per program (NUM_WARPS; 0: the kernel's default)")
flags.DEFINE_list("stages", ["0"], "pipeline stages of the key loop (NUM_STAGES; 0: the kernel's "
                  "default)")
flags.DEFINE_list("splits", ["0"], "programs per (row, kv head) (0: key_splits' choice)")
flags.DEFINE_integer("loop_trips", 10, "trips of the layer chain per timed call")
flags.DEFINE_integer("repeats", 3, "timed repeats (best reported)")
flags.DEFINE_float("bandwidth_tbs", 4.27, "copy bandwidth for the roofline column (TB/s)")
flags.DEFINE_bool("xla", True, "also time XLA attention over the same caches")
flags.DEFINE_string("platform", "", "force a JAX platform (cpu for smoke tests)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.platform:
    os.environ["JAX_PLATFORMS"] = FLAGS.platform
  import jax
  import jax.numpy as jnp
  from masksearch_jax.model import attention, config, decode_attention as da
  cfg = config.get_config(FLAGS.model)
  H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
  L, S, live = FLAGS.layers or cfg.num_layers, FLAGS.cache_len, FLAGS.live
  if not 1 <= live < S:
    raise ValueError(f"--live={live} must be in [1, --cache_len={S})")
  interpret = jax.default_backend() == "cpu"
  trips = FLAGS.loop_trips
  print(f"device: {jax.devices()[0].device_kind}  model {FLAGS.model} (H {H}, K {K}, Dh {Dh})  "
        f"{L} layers  cache {S} slots, {live} live")
  print(f"{'rows':>4} {'kernel':>6} {'tiling':>16} {'splits':>6} {'us/layer':>9} {'TB/s':>6} "
        f"{'of roof':>7} {'vs XLA':>7} {'max|diff|':>9}")

  for b in map(int, FLAGS.rows):
    keys = iter(jax.random.split(jax.random.PRNGKey(b), 2 * L + 3))
    ks = [jax.random.normal(next(keys), (b, S, K, Dh), jnp.bfloat16) for _ in range(L)]
    vs = [jax.random.normal(next(keys), (b, S, K, Dh), jnp.bfloat16) for _ in range(L)]
    q0 = jax.random.normal(next(keys), (b, 1, H, Dh), jnp.bfloat16)
    kn, vn = (jax.random.normal(next(keys), (b, 1, K, Dh), jnp.bfloat16) for _ in range(2))
    n = jnp.full((b,), live, jnp.int32)           # slots < n attended (with the new one at n - 1)
    mask = (jnp.arange(S)[None, :] < n[:, None])[:, None, :]                  # [B, 1, S]
    write = b <= da.WRITE_MAX_ROWS
    nbytes = 2 * b * live * K * Dh * 2
    ref_write = attention.attend_xla(q0, ks[0].at[:, live - 1].set(kn[:, 0]),
                                     vs[0].at[:, live - 1].set(vn[:, 0]), mask)
    ref = attention.attend_xla(q0, ks[0], vs[0], mask)

    def chain(attend_one):
      """q, caches -> (q, caches): `trips` passes of the layer chain, each output the next query."""
      def trip(_, carry):
        q, kc, vc = carry
        kc, vc = list(kc), list(vc)
        for i in range(L):
          q, kc[i], vc[i] = attend_one(q, kc[i], vc[i])
        return q, tuple(kc), tuple(vc)
      return jax.jit(lambda q, kc, vc: jax.lax.fori_loop(0, trips, trip, (q, kc, vc)),
                     donate_argnums=(1, 2))

    def timed(attend_one):
      f = chain(attend_one)
      state = f(q0, tuple(ks), tuple(vs))           # compiles; the caches are donated from here
      jax.block_until_ready(state)
      best = float("inf")
      for _ in range(FLAGS.repeats):
        t = time.perf_counter()
        state = f(*state)
        jax.block_until_ready(state)
        best = min(best, time.perf_counter() - t)
      ks[:], vs[:] = state[1], state[2]             # the buffers the next run starts from
      return best / trips / L

    def row(kernel, tiling, splits, t, diff, t_xla):
      rate = nbytes / t / 1e12
      vs_xla = f"{t_xla / t:>6.2f}x" if t_xla else f"{'-':>7}"
      print(f"{b:>4} {kernel:>6} {tiling:>16} {splits:>6} {t * 1e6:>9.2f} {rate:>6.2f} "
            f"{rate / FLAGS.bandwidth_tbs:>7.1%} {vs_xla} {diff:>9.2e}", flush=True)

    t_xla = None
    if FLAGS.xla:
      t_xla = timed(lambda q, kc, vc: (attention.attend_xla(q, kc, vc, mask), kc, vc))
      row("xla", "-", "-", t_xla, 0.0, None)
    for blk, w, st, sp in itertools.product(*(map(int, x) for x in (
        FLAGS.blocks, FLAGS.warps, FLAGS.stages, FLAGS.splits))):
      dw, dst = da._TILING["write" if write else "attend"]
      w, st = w or dw, st or dst
      opts = dict(interpret=interpret, splits=sp or None, block=blk, num_warps=w, num_stages=st)
      tiling = f"b{blk} w{w} s{st}"
      try:
        if write:
          end = n - 1
          one = lambda q, kc, vc, o=opts: da.decode_attend_write(q, kn, vn, kc, vc, end, **o)
          got = one(q0, ks[0], vs[0])[0]            # not donated: ks[0] stays as it was
          want = ref_write
        else:
          one = lambda q, kc, vc, o=opts: (da.decode_attend(q, kc, vc, n, **o), kc, vc)
          got, want = one(q0, ks[0], vs[0])[0], ref
        diff = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32))))
        nb = S // da.block_size(S, blk)
        used = sp or da.key_splits(b, K, nb)
        row("write" if write else "attend", tiling, used, timed(one), diff, t_xla)
      except Exception as e:                        # a tiling Triton or the kernel refuses
        print(f"{b:>4} {'-':>6} {tiling:>16} {sp:>6}  failed: {type(e).__name__}: "
              f"{str(e)[:120]}", flush=True)


if __name__ == "__main__":
  app.run(main)
