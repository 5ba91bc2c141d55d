"""Kernel-level breakdown of the sampler's decode loop (GPU): where a decode step's time goes.

  python benchmarks/profile_decode.py --models=1.5b --batch_sizes=1,64 --new_tokens=256 \
      --scan_layers=false

For each batch size: wall time of one jitted decode call of `new_tokens` steps, the device-kernel
time inside it (summed from a Perfetto trace), kernel launches per step and the top kernels, so
that the gap to the HBM roofline is split into kernel time (what the kernels read) and launch /
host time (the while loop's per-step overhead).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import sampler as sampler_bench   # noqa: E402  (its flags: models, batch_sizes, ...)

FLAGS = flags.FLAGS
_TOP = flags.DEFINE_integer("top", 15, "kernels to list")


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  from benchmarks import common
  roofline = sampler_bench.roofline
  from benchmarks.common import SyntheticTokenizer
  from masksearch_jax.model import config, qwen2
  from masksearch_jax.protocol import DEFAULT
  from masksearch_jax.rollout import sampler as sampler_lib, types as T
  sampler_bench.apply_decode_settings()     # --decode_split_k, --decode_key_splits, ...
  cfg = config.get_config(FLAGS.models[0])
  params = jax.jit(qwen2.init_params, static_argnums=(0,), static_argnames=("dtype",))(
      cfg, jax.random.PRNGKey(0), dtype=jnp.bfloat16)
  P, N = FLAGS.prompt_len, FLAGS.new_tokens
  tok = SyntheticTokenizer(cfg.vocab_size, DEFAULT)
  rng = np.random.default_rng(0)
  print(f"device {jax.devices()[0].device_kind}  model {FLAGS.models[0]}  prompt {P}  steps {N}  "
        f"scan {FLAGS.scan_layers}  attn {FLAGS.attn_impl}  linear {FLAGS.linear_impls[0]}")
  bw = FLAGS.bandwidth_tbs or common.roofline_bandwidth(jax.default_backend())["roofline_tbs"]
  for b in map(int, FLAGS.batch_sizes):
    prompts = [list(rng.integers(16, cfg.vocab_size, P)) for _ in range(b)]
    rcfg = T.RolloutConfig(max_len=P + N, max_new_tokens=N, prompt_buckets=(P,), chunk_steps=N,
                           use_tools=False)
    s = sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=0.0), rcfg,
                            compute_dtype=jnp.bfloat16, cache_dtype=jnp.bfloat16,
                            attn_impl=FLAGS.attn_impl, scan_layers=FLAGS.scan_layers == "true",
                            linear_impl=FLAGS.linear_impls[0])
    states = []

    def fresh():
      st, _ = s.start(params, prompts)
      jax.block_until_ready(st)
      states.append(st)

    fresh()
    # One compile, kept: it is timed and profiled, and its HLO names each fusion's source line.
    decode = s.engine.decode.lower(params, states[-1]).compile()
    jax.block_until_ready(decode(params, states.pop()))                   # warm-up
    fresh()
    t = time.perf_counter()
    jax.block_until_ready(decode(params, states.pop()))
    wall = (time.perf_counter() - t) / N * 1e3                            # ms per step
    for _ in range(2):
      fresh()
    per_kernel, per_class, launches, kernel_ops = common.kernel_times(
        lambda: decode(params, states.pop()), 2)
    sources = common.hlo_sources(decode.as_text())
    kern = sum(per_class.values()) / N
    roof = b / roofline(cfg, b, P + N // 2, 2, bw) * 1e3                   # ms per step
    print(f"\nbatch {b}: {wall:.3f} ms/step wall ({b / wall * 1e3:,.0f} tok/s), kernels "
          f"{kern:.3f} ms/step, {launches / N:.0f} launches/step, roofline {roof:.3f} ms/step "
          f"({100 * roof / wall:.0f}% of wall)")
    common.print_kernels(per_class, per_kernel, _TOP.value, scale=1e3 / N, unit="us/step",
                         sources=sources, kernel_ops=kernel_ops)


if __name__ == "__main__":
  app.run(main)
