"""Are two identical `Sampler` calls identical? Stage by stage, per attention implementation.

  python benchmarks/sampler_determinism.py --model=1.5b --batch=64 --attn_impls=pallas,cudnn,xla
  python benchmarks/sampler_determinism.py --model=tiny --batch=4 --platform=cpu   # smoke

Why: on an H200 (session 24, benchmarks/RESULTS.md) two identical multi-turn rollouts of the
1.5B at 64 rows parted at the second generated token with attention "pallas" or "cudnn". For each
implementation this runs `repeats` identical greedy, tool-free generations and compares them with
the first at three stages: the prefill's last-position logits (`Engine.prefill`), the first
decode chunk's logits, and the whole rollout's tokens and log-probs. `--dtype=float32` keeps impl
"pallas"'s decode kernel but moves its prefill and splices from cuDNN to XLA. Session 25 found
the cause with it: cuDNN's one-token decode kernel (taken by "cudnn", and by "pallas" wherever
its own kernel did not fit the cache length) does not repeat; decode steps no longer use it
(attention.CUDNN_ONE_TOKEN, kv_cache.aligned_length), and `--cudnn_one_token` shows it again.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout, uninstalled

flags.DEFINE_string("model", "1.5b", "preset (model/config.py)")
flags.DEFINE_integer("batch", 64, "rows")
flags.DEFINE_integer("prompt_len", 256, "prompt tokens")
flags.DEFINE_integer("new_tokens", 256, "generated tokens")
flags.DEFINE_integer("chunk_steps", 64, "decode steps a chunk; with 1 the chunk-1 stage is one "
                     "decode step, so its logits compare across implementations too")
flags.DEFINE_list("attn_impls", ["pallas", "xla"], "attention implementations to check")
flags.DEFINE_integer("repeats", 3, "identical runs per implementation")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "compute and cache dtype; with "
                  "float32, impl 'pallas' runs prefill and splices through XLA (cuDNN's kernel "
                  "takes half precision only) and keeps the Pallas decode: a bisection")
flags.DEFINE_bool("cudnn_one_token", False, "impl cudnn: one-token decode steps through cuDNN "
                  "too (attention.CUDNN_ONE_TOKEN)")
flags.DEFINE_string("platform", "", "force a JAX platform (cpu for smoke tests)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.platform:
    os.environ["JAX_PLATFORMS"] = FLAGS.platform
  import jax
  import jax.numpy as jnp
  import numpy as np
  from benchmarks.common import SyntheticTokenizer, first_difference
  from masksearch_jax.model import attention, config, qwen2
  if FLAGS.repeats < 2:                     # checked before the model is built: nothing to compare
    raise app.UsageError(f"--repeats={FLAGS.repeats}: need at least 2 runs to compare")
  unknown = sorted(set(FLAGS.attn_impls) - set(attention.IMPLEMENTATIONS))
  if unknown or not FLAGS.attn_impls:
    raise app.UsageError(f"--attn_impls: {unknown or 'empty'} (choose from "
                         f"{', '.join(attention.IMPLEMENTATIONS)})")
  from masksearch_jax.protocol import DEFAULT
  from masksearch_jax.rollout import sampler as sampler_lib, types as T
  attention.CUDNN_ONE_TOKEN = FLAGS.cudnn_one_token
  cfg = config.get_config(FLAGS.model)
  dtype = jnp.bfloat16 if FLAGS.dtype == "bfloat16" else jnp.float32
  params = jax.jit(qwen2.init_params, static_argnums=(0,), static_argnames=("dtype",))(
      cfg, jax.random.PRNGKey(0), dtype=dtype)
  tok = SyntheticTokenizer(cfg.vocab_size, DEFAULT)
  rng = np.random.default_rng(1)
  b, p = FLAGS.batch, FLAGS.prompt_len
  prompts = [list(rng.integers(16, cfg.vocab_size, p)) for _ in range(b)]
  rcfg = T.RolloutConfig(max_len=p + FLAGS.new_tokens, prompt_buckets=(p,), chunk_steps=FLAGS.chunk_steps,
                         use_tools=False)
  print(f"device: {jax.devices()[0].device_kind}  model {FLAGS.model}  batch {b}  prompt {p}  "
        f"new {FLAGS.new_tokens}  {FLAGS.dtype} greedy, no tools")
  print(f"{'attn':>7} {'run':>3} {'prefill logits':>15} {'chunk-1 logits':>15} "
        f"{'rows unlike':>11} {'first offset':>12} {'lp drift before':>15} "
        f"{'chunk-1 vs ' + FLAGS.attn_impls[0]:>17}")
  first_impl_chunk = None                    # run 0's chunk-1 logits of the first impl listed
  for impl in FLAGS.attn_impls:
    s = sampler_lib.Sampler(cfg, tok, T.SamplingConfig(temperature=0.0), rcfg,
                            compute_dtype=dtype, cache_dtype=dtype, attn_impl=impl,
                            scan_layers=False)
    stages = []
    for _ in range(FLAGS.repeats):
      state, _ = s.start(params, prompts)
      pre = np.asarray(state["logits"], np.float32)          # [B, V] after the prefill
      one = np.asarray(s.engine.decode(params, state)["logits"], np.float32)   # after a chunk
      stages.append((pre, one, s.generate(params, prompts)))
    ref = stages[0]
    if first_impl_chunk is None:
      first_impl_chunk = ref[1]
    # Across implementations only rounding should differ (with --chunk_steps=1, where both
    # decode the prefill's argmax); far more means one of them is wrong, not only unrepeatable.
    vs_first = np.abs(ref[1] - first_impl_chunk).max()
    for i, (pre, one, out) in enumerate(stages[1:], 1):
      d = first_difference(out, ref[2])
      unlike = int(np.sum(np.any(out.tokens != ref[2].tokens, axis=1)))
      print(f"{impl:>7} {i:>3} {np.abs(pre - ref[0]).max():>15.4g} "
            f"{np.abs(one - ref[1]).max():>15.4g} {unlike:>11} {d['first_diff_offset']:>12} "
            f"{d['max_logprob_diff_before']:>15.4g} {vs_first:>17.4g}", flush=True)


if __name__ == "__main__":
  app.run(main)
