"""The one-kernel decode step (model/decode_megakernel.py) against XLA's decode step, same process.

  python benchmarks/decode_megakernel.py --model=1.5b --programs=132
  python benchmarks/decode_megakernel.py --model=tiny --programs=1 --platform=cpu --steps=2  # smoke
  python benchmarks/decode_megakernel.py --variants=w8s3,w4s3,w8s3-attn,w8s3-mlp+down  # sweep

Both run `steps` greedy steps of `rows` rows inside one jitted loop (each step feeds its argmax
back), from the same random bf16 weights and the same random cache filled to `context` slots:
  - "xla": qwen2.apply on the sampler's unrolled layout (linear_impl="xla_folded", Pallas decode
    attention), per-layer caches — what the sampler runs today;
  - "mega": decode_megakernel.decode_step, one kernel a step, stacked caches.
--variants times the kernel under Triton knobs "w<num_warps>s<num_stages>", optionally with stages
skipped ("-attn+o": their work is not done, the barriers are; the logits are then wrong) — the
cost of a stage is the full variant's time minus the skipping one's. Reports ms a step, tok/s,
the fraction of the HBM roofline (weights + the cache read a step over --bandwidth_tbs) and how
far the full variants' first-step logits are from XLA's (bf16 rounding expected).
"""
from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout, uninstalled

flags.DEFINE_string("model", "1.5b", "preset (model/config.py)")
flags.DEFINE_integer("rows", 2, "rows (batch 1 runs as 2 in the sampler)")
flags.DEFINE_integer("context", 512, "filled cache slots before the first step")
flags.DEFINE_integer("slots", 768, "cache slots")
flags.DEFINE_integer("steps", 64, "decode steps a timed call")
flags.DEFINE_integer("programs", 132, "the kernel's resident programs (<= SMs)")
flags.DEFINE_integer("repeats", 3, "timed calls (best reported)")
flags.DEFINE_float("bandwidth_tbs", 4.27, "copy roofline (TB/s; H200 measured, RESULTS.md)")
flags.DEFINE_list("variants", ["w8s2"], "kernel variants: w<warps>s<stages>[-stage+stage]")
flags.DEFINE_bool("xla", True, "also time XLA's step (the reference)")
flags.DEFINE_string("platform", "", "force a JAX platform (cpu for smoke tests)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.platform:
    os.environ["JAX_PLATFORMS"] = FLAGS.platform
  import jax
  import jax.numpy as jnp
  import numpy as np
  from masksearch_jax.model import config, decode_megakernel as mk, qwen2
  cfg = config.get_config(FLAGS.model)
  cpu = jax.default_backend() == "cpu"
  B, S, n0, T = FLAGS.rows, FLAGS.slots, FLAGS.context, FLAGS.steps
  L, K, Dh, D = cfg.num_layers, cfg.num_kv_heads, cfg.dim_per_head, cfg.hidden_size
  bf = jnp.bfloat16
  params = jax.jit(qwen2.init_params, static_argnums=(0,), static_argnames=("dtype",))(
      cfg, jax.random.PRNGKey(0), dtype=bf)
  kc = (0.5 * jax.random.normal(jax.random.PRNGKey(1), (L, B, S, K, Dh), jnp.float32)).astype(bf)
  vc = (0.5 * jax.random.normal(jax.random.PRNGKey(2), (L, B, S, K, Dh), jnp.float32)).astype(bf)
  tok0 = jnp.arange(1, B + 1, dtype=jnp.int32)
  end0 = jnp.full((B,), n0, jnp.int32)

  @jax.jit
  def xla_steps(params, kc, vc, tok, end):
    lay = qwen2.decode_layout(params, cfg, bf, "xla_folded")
    cache = {"k": [kc[i] for i in range(L)], "v": [vc[i] for i in range(L)], "end": end}

    def step(i, c):
      tok, cache, first = c
      logits, cache = qwen2.apply(lay, cfg, tok[:, None], cache=cache, attn_impl="pallas",
                                  compute_dtype=bf, scan_layers=False)
      first = jnp.where(i == 0, logits[:, 0], first)
      return jnp.argmax(logits[:, 0], -1).astype(jnp.int32), cache, first
    first = jnp.zeros((B, cfg.vocab_size), jnp.float32)
    tok, cache, first = jax.lax.fori_loop(0, T, step, (tok, cache, first))
    return tok, first

  def parse(v):                        # "w8s3-attn+o" -> (8, 3, ("attn", "o"))
    knobs, _, skip = v.partition("-")
    w, st = knobs[1:].split("s")
    return int(w), int(st), tuple(x for x in skip.split("+") if x)

  @functools.partial(jax.jit, static_argnums=(5,))
  def mega_steps(params, kc, vc, tok, end, variant):
    mp = mk.layout(params, cfg, bf)
    warps, nst, skip = parse(variant)

    def step(i, c):
      tok, kc, vc, end, first = c
      h = params["embed"][tok]
      logits, kc, vc = mk.decode_step(mp, cfg, h, end, kc, vc, end, programs=FLAGS.programs,
                                      interpret=cpu, num_warps=warps, num_stages=nst, skip=skip)
      first = jnp.where(i == 0, logits, first)
      return jnp.argmax(logits, -1).astype(jnp.int32), kc, vc, end + 1, first
    first = jnp.zeros((B, cfg.vocab_size), jnp.float32)
    tok, _, _, _, first = jax.lax.fori_loop(0, T, step, (tok, kc, vc, end, first))
    return tok, first

  wbytes = sum(x.size for x in jax.tree.leaves(params)) * 2
  kv_read = 2 * L * B * (n0 + T / 2) * K * Dh * 2            # the cache read, on average a step
  roof_ms = (wbytes + kv_read) / (FLAGS.bandwidth_tbs * 1e12) * 1e3
  print(f"device: {jax.devices()[0].device_kind}  model {FLAGS.model}  rows {B}  context {n0}  "
        f"steps {T}  programs {FLAGS.programs}  roofline {roof_ms:.3f} ms/step")
  print(f"{'impl':>16} {'ms/step':>9} {'tok/s':>9} {'of roofline':>11}")
  firsts = {}
  runs = [(f"mega {v}", functools.partial(mega_steps, variant=v)) for v in FLAGS.variants]
  for name, fn in runs + ([("xla", xla_steps)] if FLAGS.xla else []):
    jax.block_until_ready(fn(params, kc, vc, tok0, end0))          # compile + warm-up
    best = float("inf")
    for _ in range(FLAGS.repeats):
      t = time.perf_counter()
      _, first = jax.block_until_ready(fn(params, kc, vc, tok0, end0))
      best = min(best, time.perf_counter() - t)
    firsts[name] = np.asarray(first)
    ms = best / T * 1e3
    print(f"{name:>16} {ms:>9.3f} {B * T / best:>9.1f} {roof_ms / ms:>11.1%}", flush=True)
  if "xla" in firsts:
    ref = firsts["xla"]
    for name, first in firsts.items():
      if name != "xla" and "-" not in name:
        same = (first.argmax(-1) == ref.argmax(-1)).mean()
        print(f"{name}, first step: logits max |mega - xla| {np.abs(first - ref).max():.4g} "
              f"(logits std {ref.std():.3g}); same argmax {same:.0%}")


if __name__ == "__main__":
  app.run(main)
