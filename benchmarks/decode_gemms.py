"""XLA's decode-step products alone, weights cold in HBM: its own tiling beside a forced one.

  python benchmarks/decode_gemms.py --model=1.5b --rows=2,64 --layouts=io,oi      # XLA's choice
  python benchmarks/decode_gemms.py --model=1.5b --rows=2,64 --config="n32 k64 s8 st3 w4"
  python benchmarks/decode_gemms.py --model=tiny --rows=2 --platform=cpu           # smoke

Why: XLA's gemm autotuner times each candidate tiling on the same operands again and again, so a
weight that fits the GPU's 50 MB L2 (the 1.5B's o, q/k/v and down projections: 4.7, 6.3 and
27.5 MB) is timed from L2, while in a decode step every layer's weights stream from HBM once: the
tiling it keeps could be the wrong one. Here each product runs over `copies` weights of its shape
(> 4x the L2 together), one after another like the layers of a step ("cold"), and over one
buffer repeated as often ("hot", the autotuner's view), either as XLA compiles it or under one
forced Triton tiling (`xla_gpu_override_gemm_autotuner`; the autotuner may still prefer cuBLAS).
One forced tiling a process: XLA keeps its autotuning result per fusion for the life of the
process, so a second override of the same product would not be applied. What ran is read back
from the compiled HLO.

Measured on an H200 (benchmarks/RESULTS.md, session 20): at 2 rows XLA's own tiling was the
best or within noise of nine forced ones for every product; at 64 rows a few forced tilings were
10-19% faster alone (q/k/v, down, gate/up), ~30 us a step at most. The [out, in] layout that won
alone for gate/up (2 rows) and down (64 rows) lost in the sampler. Absolute times here include a
small per-trip kernel and are not the decode profile's: compare rows, not against the profile.

µs per product include its launch and any split-K reduction kernel, as in the decode loop.
"""
from __future__ import annotations

import math
import os
import re
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout, uninstalled

flags.DEFINE_string("model", "1.5b", "preset (model/config.py)")
flags.DEFINE_list("rows", ["2", "64"], "rows of the products (decode batch; batch 1 runs as 2)")
flags.DEFINE_list("products", ["qkv", "o", "gate_up", "down"], "which decode products")
flags.DEFINE_list("layouts", ["io"], "weight layouts: io ([in, out], the decode layout), "
                  "oi ([out, in], transposed)")
flags.DEFINE_string("config", "", "force one Triton tiling on every product: 'nN kK sS stT wW' "
                    "(block_m follows the rows: 16 up to 16 rows, else 64); empty: XLA's own")
flags.DEFINE_integer("l2_mb", 50, "L2 size (MB): copies of each weight fill 4x this")
flags.DEFINE_integer("loop_trips", 10, "trips of the on-device loop per timed call")
flags.DEFINE_integer("repeats", 3, "timed repeats (best reported)")
flags.DEFINE_string("dump_hlo", "", "write each compiled module's HLO text into this folder")
flags.DEFINE_string("platform", "", "force a JAX platform (cpu for smoke tests)")
FLAGS = flags.FLAGS

_FUSION = re.compile(r'"block_level_fusion_config":\{(.*?)\},"kind":"(__triton\w*)"')


def used_config(hlo_text: str) -> str:
  """What ran the products in a compiled module: cuBLAS and/or XLA's Triton gemm fusions (output
  tile, stages, warps; a leading tile dim is a split-K share) and other Triton fusions (e.g. the
  split-K reduction)."""
  found = set()
  for m in _FUSION.finditer(hlo_text):
    cfg, kind = m.groups()
    tiles = "x".join(re.findall(r'"(\d+)"', (re.search(r'"output_tiles":\[(.*?)\]', cfg)
                                              or re.search("()", "")).group(1)))
    st = re.search(r'"num_stages":"?(\d+)', cfg)
    w = re.search(r'"num_warps":"?(\d+)', cfg)
    what = "gemm" if "gemm" in kind else "fusion"
    found.add(f"{what} {tiles} st{st.group(1) if st else '?'} w{w.group(1) if w else '?'}")
  if "__cublas$gemm" in hlo_text or "__cublas$lt" in hlo_text:
    found.add("cublas")
  return " + ".join(sorted(found)) or "no gemm kernel"


def forced(config: str, rows: int) -> str:
  """'nN kK sS stT wW' -> the TritonGemmKey textproto of xla_gpu_override_gemm_autotuner."""
  f = dict(re.findall(r"(st|[nksw])(\d+)", config))
  bm = 16 if rows <= 16 else 64
  return (f"block_m: {bm} block_n: {f['n']} block_k: {f['k']} split_k: {f.get('s', 1)} "
          f"num_stages: {f.get('st', 3)} num_warps: {f.get('w', 4)} num_ctas: 1")


def main(argv):
  del argv
  if FLAGS.platform:
    os.environ["JAX_PLATFORMS"] = FLAGS.platform
  import jax
  import jax.numpy as jnp
  from masksearch_jax.model import config
  cfg = config.get_config(FLAGS.model)
  D, F, H, K, Dh = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                    cfg.dim_per_head)
  dims = {"qkv": (D, (H + 2 * K) * Dh), "o": (H * Dh, D), "gate_up": (D, 2 * F), "down": (F, D)}
  key = (jax.random.fold_in(jax.random.PRNGKey(0), i) for i in range(10**6))
  trips = FLAGS.loop_trips

  def timed(x, ws, layout, options, tag):
    """Seconds per product: `trips` loop trips over all weights in order, best of `repeats`.
    The products are chained (each waits for the previous one, as layers do) by an
    optimization barrier, which adds no kernel."""
    spec = "mk,kn->mn" if layout == "io" else "mk,nk->mn"

    def run(x, ws):
      def body(_, x):
        xs, ys = x, []
        for w in ws:
          y = jnp.einsum(spec, xs, w)
          y, xs = jax.lax.optimization_barrier((y, xs))
          ys.append(y[:, :1])
        return x + sum(ys).astype(x.dtype) * 0           # one small kernel a trip keeps them
      return jax.lax.fori_loop(0, trips, body, x)
    f = jax.jit(run).lower(x, ws).compile(compiler_options=options or None)
    if FLAGS.dump_hlo:
      os.makedirs(FLAGS.dump_hlo, exist_ok=True)
      Path(FLAGS.dump_hlo, f"{tag}.hlo.txt").write_text(f.as_text())
    jax.block_until_ready(f(x, ws))
    best = float("inf")
    for _ in range(FLAGS.repeats):
      t = time.perf_counter()
      jax.block_until_ready(f(x, ws))
      best = min(best, time.perf_counter() - t)
    return best / trips / len(ws), used_config(f.as_text())

  asked = FLAGS.config or "xla"
  print(f"device: {jax.devices()[0].device_kind}  model {FLAGS.model}  config {asked}")
  print(f"{'product':>8} {'rows':>4} {'lay':>3} {'MB':>6} {'config':>22} {'cold us':>8} "
        f"{'GB/s':>6} {'hot us':>7}  used")
  for m in map(int, FLAGS.rows):
    opts = {"xla_gpu_override_gemm_autotuner": forced(FLAGS.config, m)} if FLAGS.config else {}
    for name in FLAGS.products:
      k, n = dims[name]
      mb = k * n * 2 / 1e6
      copies = min(64, max(2, math.ceil(4 * FLAGS.l2_mb / mb)))
      for layout in FLAGS.layouts:
        shape = (k, n) if layout == "io" else (n, k)
        ws = [jax.random.normal(next(key), shape, jnp.bfloat16) for _ in range(copies)]
        x = jax.random.normal(next(key), (m, k), jnp.bfloat16)
        tag = f"{name}_{m}_{layout}_{asked.replace(' ', '')}"
        try:
          t, used = timed(x, ws, layout, opts, tag)
          # The autotuner's view: the same buffer every time, so it stays in L2.
          th, _ = timed(x, [ws[0]] * copies, layout, opts, tag + "_hot")
        except Exception as e:                         # a tiling XLA refuses
          print(f"{name:>8} {m:>4} {layout:>3} {mb:>6.1f} {asked:>22}  failed: "
                f"{type(e).__name__}: {str(e)[:100]}", flush=True)
          continue
        print(f"{name:>8} {m:>4} {layout:>3} {mb:>6.1f} {asked:>22} {t * 1e6:>8.2f} "
              f"{mb / 1e3 / t:>6.0f} {th * 1e6:>7.2f}  {used}", flush=True)
        del ws


if __name__ == "__main__":
  app.run(main)
