"""Kernel-level breakdown of one training-step variant (GPU): where the step time goes.

  python -m benchmarks.profile_step --model=1.5b --variant=cudnn:dots_no_batch:8:chunked:scan

Traces a few steps with the JAX profiler (Perfetto JSON), then sums device-kernel time by
kernel name and by coarse class (gemm, attention, fusion/elementwise, copies, reductions), so
tuning targets what is measured rather than guessed.
"""
from __future__ import annotations


import jax
from absl import app, flags

from benchmarks import common, forward
from masksearch_jax.model import config as mcfg

_MODEL = flags.DEFINE_string("model", "1.5b", "model preset")
_VARIANT = flags.DEFINE_string("variant", "cudnn:dots_no_batch:8:chunked:scan", "see forward.py")
_STEPS = flags.DEFINE_integer("profile_steps", 3, "steps inside the trace")
_TOP = flags.DEFINE_integer("top", 25, "kernels to list")
_HLO_OUT = flags.DEFINE_string("hlo_out", None, "write the compiled step's HLO text here")


def main(argv):
  del argv
  parts = _VARIANT.value.split(":")
  attn, remat, batch = parts[0], parts[1], int(parts[2])
  loss_kind = parts[3] if len(parts) > 3 else "chunked"
  scan = (parts[4] if len(parts) > 4 else "scan") == "scan"
  cfg = mcfg.get_config(_MODEL.value)
  import functools
  import jax.numpy as jnp
  from masksearch_jax.model import qwen2
  params = jax.jit(functools.partial(qwen2.init_params, cfg, dtype=jnp.bfloat16))(jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (batch, forward._SEQ.value + 1), 0, cfg.vocab_size)
  step = jax.jit(jax.value_and_grad(functools.partial(
      forward.loss_fn, cfg=cfg, attn=attn, remat=remat, loss_kind=loss_kind, scan=scan)))
  step = step.lower(params, tokens).compile()      # one compile: timed, profiled, its HLO read
  t = common.median(common.time_fn(lambda: step(params, tokens), warmup=2, iters=5))
  per_kernel, per_class, _, kernel_ops = common.kernel_times(lambda: step(params, tokens), _STEPS.value)
  hlo = step.as_text()
  sources = common.hlo_sources(hlo)
  total = sum(per_class.values())
  flops = common.train_flops_per_step(cfg, batch, forward._SEQ.value)
  print(f"step {t * 1e3:.1f} ms wall, {total:.1f} ms kernel time, MFU {100 * flops / t / 989e12:.1f}%")
  common.print_kernels(per_class, per_kernel, _TOP.value, sources=sources, kernel_ops=kernel_ops)
  if _HLO_OUT.value:
    with open(_HLO_OUT.value, "w") as f:
      f.write(hlo)


if __name__ == "__main__":
  app.run(main)
