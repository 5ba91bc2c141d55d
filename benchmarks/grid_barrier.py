"""Could one persistent kernel stream a decode step's weights, with grid barriers between stages?

  python benchmarks/grid_barrier.py --model=1.5b --programs=132
  python benchmarks/grid_barrier.py --model=tiny --programs=1 --platform=cpu     # smoke

Why: issue 4 (a decode step at >= 60% of the HBM roofline) is blocked by the ~12 dependent
kernels of a layer, each with a fixed cost of 1.5-4 us (benchmarks/RESULTS.md, sessions 14-24).
The remaining route is a persistent "megakernel": one launch for the whole step, its programs
meeting at a grid-wide barrier wherever a product needs all of the previous one's output. Before
building it, this measures its best case: P resident programs (one per SM) stream, stage after
stage, exactly the bytes of the model's decode products (q/k/v, o, gate/up, down per layer),
each program its equal share as a 16-row `dot` (the GEMV shape of a decode product, rows padded
as Triton needs), and meet at a barrier (an atomic counter, spun on with volatile loads) after
every stage. Variants of one kernel, in one process:
  - "stream": no barriers (the streaming rate of these tiles alone);
  - "barriers": a barrier after every stage's loop, as a megakernel would need;
  - "barriers only": no weights, the barriers alone (cost per barrier);
  - "flat stream" / "flat barriers" (--flat): one loop over every stage, the barrier inside it,
    so the loop's software pipeline has the next stage's blocks in flight during the wait.
TB/s counts the weight bytes streamed; the roofline is the copy rate (--bandwidth_tbs).

Measured on an H200 (benchmarks/RESULTS.md, session 25): 64x128 tiles, 8 warps, 4 stages, 132
programs stream the 2.72 GB at 4.13-4.25 TB/s (97-99.5% of the copy rate); a barrier alone costs
~1.1 us and adds 1.7 (flat) to 2.3 us to the stream: 0.834 ms for the 112 barriers and all the
bytes, against ~1.3 ms that XLA's kernels spend on the same products and what surrounds them.

The programs must all be resident at once (a barrier waits for every program): --programs at
most the SM count, one program per SM. The smoke run uses one program (interpret mode runs the
programs one after another, so more would wait forever).
"""
from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout, uninstalled

def _define_flags() -> None:
  """Flags are defined when run as a script only: tests import this module beside other
  benchmarks that define the same names (absl rejects a flag defined twice)."""
  flags.DEFINE_string("model", "1.5b", "preset (model/config.py): the stage sizes")
  flags.DEFINE_integer("programs", 132, "resident programs (<= SMs; H100/H200: 132)")
  flags.DEFINE_integer("layers", 0, "layers streamed (0: the model's)")
  flags.DEFINE_integer("block_n", 64, "columns of a program's tile")
  flags.DEFINE_integer("block_k", 128, "rows of weight per inner step")
  flags.DEFINE_integer("num_warps", 8, "Triton warps a program")
  flags.DEFINE_integer("num_stages", 4, "software-pipeline stages of the inner loop")
  flags.DEFINE_integer("repeats", 5, "timed rounds (best reported)")
  flags.DEFINE_integer("calls", 10, "kernel calls a timed round")
  flags.DEFINE_bool("flat", True, "also the flat variants: one loop over all stages, the barrier "
                    "inside it (the pipeline prefetches across it)")
  flags.DEFINE_float("bandwidth_tbs", 4.27, "copy roofline (TB/s; H200 measured, RESULTS.md)")
  flags.DEFINE_string("platform", "", "force a JAX platform (cpu for smoke tests)")


FLAGS = flags.FLAGS

_ROWS = 16                                   # tl.dot's minimum rows: a decode GEMV's padded rows


def stage_rows(cfg, programs: int, block_n: int, block_k: int) -> list[int]:
  """Weight rows per program for each decode product of a layer (q/k/v, o, gate/up, down), so
  that programs x rows x block_n x 2 bytes is the product's size rounded up to whole block_k
  steps (at least one)."""
  d, f = cfg.hidden_size, cfg.intermediate_size
  qkv = d * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.dim_per_head
  o = cfg.num_heads * cfg.dim_per_head * d
  sizes = (qkv, o, d * 2 * f, f * d)                         # elements of each product
  per = lambda n: -(-n // (programs * block_n * block_k)) * block_k
  return [max(block_k, per(n)) for n in sizes]


def _kernel(x_ref, *refs, rows: tuple, layers: int, programs: int, block_k: int,
            barriers: bool, flat: bool):
  """x_ref [16, block_k] (the activation tile, reused); refs: one weight per stage
  [layers, programs, rows_s, block_n] (flat: one, the stages concatenated), then the counter in / out (aliased, [1] float32) and the
  output tile [16, block_n] f32 of this program (its sum: keeps the loads live)."""
  from jax.experimental.pallas import triton as plgpu
  from masksearch_jax.model.megakernel_stages import grid_barrier
  ws, cnt_ref, out_ref = refs[:len(rows)], refs[-2], refs[-1]
  p = pl.program_id(0)
  x = x_ref[...]
  acc0 = jnp.zeros(out_ref.shape, jnp.float32)

  barrier = lambda k, acc: grid_barrier(cnt_ref, k, programs, acc)

  def layer(l, acc):
    for s, (w, n) in enumerate(zip(ws, rows)):
      def step(i, a):
        blk = plgpu.load(w.at[l, p, pl.ds(i * block_k, block_k), :])        # [block_k, block_n]
        return a + jnp.dot(x, blk, preferred_element_type=jnp.float32)
      acc = jax.lax.fori_loop(0, n // block_k, step, acc)
      if barriers:
        acc = barrier(l * len(rows) + s, acc)
    return acc

  if not flat:
    out_ref[...] = jax.lax.fori_loop(0, layers, layer, acc0)
    return
  # flat: one loop over every block of every stage and layer (the stages of a layer concatenated
  # in ws[0] [layers, programs, sum(rows), block_n]); the barrier runs inside it at each stage's
  # last block, so the loop's software pipeline already has the next stage's first blocks in
  # flight while the program waits (weights never depend on the barrier).
  nb = sum(rows) // block_k
  ends = [sum(rows[:i + 1]) // block_k for i in range(len(rows))]

  def flat_step(i, carry):
    acc, k = carry
    l, j = jax.lax.div(i, jnp.int32(nb)), jax.lax.rem(i, jnp.int32(nb))   # i >= 0: no floor fix-up
    blk = plgpu.load(ws[0].at[l, p, pl.ds(j * block_k, block_k), :])
    acc = acc + jnp.dot(x, blk, preferred_element_type=jnp.float32)
    if not barriers:
      return acc, k
    end = functools.reduce(jnp.logical_or, [j + 1 == e for e in ends])
    return jax.lax.cond(end, lambda a, k: (barrier(k, a), k + 1), lambda a, k: (a, k), acc, k)

  acc, _ = jax.lax.fori_loop(0, layers * nb, flat_step, (acc0, jnp.int32(0)))
  out_ref[...] = acc


def _pallas_imports():
  global jax, jnp, pl
  import jax
  import jax.numpy as jnp
  from jax.experimental import pallas as pl


def build(rows, layers: int, programs: int, block_n: int, block_k: int, barriers: bool,
          num_warps: int, num_stages: int, interpret: bool = False, flat: bool = False):
  """The kernel as a jitted fn(x [16, block_k], weights...) -> (out, final counter); flat: one
  weight [layers, programs, sum(rows), block_n] and one loop over all of it."""
  _pallas_imports()
  from jax.experimental.pallas import triton as plgpu
  n = 1 if flat else len(rows)
  kernel = functools.partial(_kernel, rows=tuple(rows), layers=layers, programs=programs,
                             block_k=block_k, barriers=barriers, flat=flat)
  call = pl.pallas_call(
      kernel, grid=(programs,),
      out_shape=(jax.ShapeDtypeStruct((1,), jnp.float32),
                 jax.ShapeDtypeStruct((programs, _ROWS, block_n), jnp.float32)),
      out_specs=(pl.no_block_spec, pl.BlockSpec((None, _ROWS, block_n), lambda p: (p, 0, 0))),
      input_output_aliases={1 + n: 0},
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret)
  return jax.jit(lambda x, *w: call(x, *w, jnp.zeros((1,), jnp.float32))[::-1])


def main(argv):
  del argv
  if FLAGS.platform:
    os.environ["JAX_PLATFORMS"] = FLAGS.platform
  _pallas_imports()
  from masksearch_jax.model import config
  cfg = config.get_config(FLAGS.model)
  P, bn, bk = FLAGS.programs, FLAGS.block_n, FLAGS.block_k
  layers = FLAGS.layers or cfg.num_layers
  rows = stage_rows(cfg, P, bn, bk)
  interpret = jax.default_backend() == "cpu"
  key = jax.random.PRNGKey(0)
  ws = [0.02 * jax.random.normal(jax.random.fold_in(key, s), (layers, P, r, bn), jnp.bfloat16)
        for s, r in enumerate(rows)]
  x = jnp.ones((_ROWS, bk), jnp.bfloat16)
  gb = sum(w.size for w in ws) * 2 / 1e9
  print(f"device: {jax.devices()[0].device_kind}  model {FLAGS.model}  {layers} layers x "
        f"{len(rows)} stages  {P} programs  tile {bn} cols x {bk} rows  w{FLAGS.num_warps} "
        f"s{FLAGS.num_stages}  {gb:.3f} GB of weights")
  print(f"{'variant':>14} {'ms':>9} {'TB/s':>7} {'of roofline':>11} {'us/barrier':>10}")
  times = {}
  zeros = [jnp.zeros((1, P, bk, bn), jnp.bfloat16)] * len(rows)       # never read: 0 rows
  flat_w = [jnp.concatenate(ws, axis=2)] if FLAGS.flat else None
  variants = [("stream", False, rows, ws, False), ("barriers", True, rows, ws, False),
              ("barriers only", True, [0] * len(rows), zeros, False)]
  if FLAGS.flat:
    variants += [("flat stream", False, rows, flat_w, True),
                 ("flat barriers", True, rows, flat_w, True)]
  for name, barriers, r, w, flat in variants:
    fn = build(r, layers, P, bn, bk, barriers, FLAGS.num_warps, FLAGS.num_stages, interpret,
               flat=flat)
    out, cnt = jax.block_until_ready(fn(x, *w))                  # compile + warm-up
    best = float("inf")
    for _ in range(FLAGS.repeats):                # `calls` back to back: dispatch overlaps
      t = time.perf_counter()
      for _ in range(FLAGS.calls):
        out, cnt = fn(x, *w)
      jax.block_until_ready(out)
      best = min(best, (time.perf_counter() - t) / FLAGS.calls)
    want = layers * len(r) * P if barriers else 0
    assert int(cnt[0]) == want, (name, int(cnt[0]), want)
    times[name] = best
    tbs = gb / best / 1e3 if any(r) else float("nan")
    per_barrier = best / (layers * len(r)) * 1e6 if barriers else float("nan")
    print(f"{name:>14} {best * 1e3:>9.3f} {tbs:>7.3f} {tbs / FLAGS.bandwidth_tbs:>11.1%} "
          f"{per_barrier:>10.2f}", flush=True)
  for pre in ("", "flat ") if FLAGS.flat else ("",):
    extra = (times[pre + "barriers"] - times[pre + "stream"]) / (layers * len(rows)) * 1e6
    print(f"{pre}barriers add {extra:.2f} us each to the stream")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
