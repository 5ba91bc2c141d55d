"""Kernel-level breakdown of one training-step variant (GPU): where the step time goes.

  python -m benchmarks.profile_step --model=1.5b --variant=cudnn:dots_no_batch:8:chunked:scan

Traces a few steps with the JAX profiler (Perfetto JSON), then sums device-kernel time by
kernel name and by coarse class (gemm, attention, fusion/elementwise, copies, reductions), so
tuning targets what is measured rather than guessed.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import tempfile

import jax
from absl import app, flags

from benchmarks import common, forward
from masksearch_jax.model import config as mcfg

_MODEL = flags.DEFINE_string("model", "1.5b", "model preset")
_VARIANT = flags.DEFINE_string("variant", "cudnn:dots_no_batch:8:chunked:scan", "see forward.py")
_STEPS = flags.DEFINE_integer("profile_steps", 3, "steps inside the trace")
_TOP = flags.DEFINE_integer("top", 25, "kernels to list")


def classify(name: str) -> str:
  n = name.lower()
  if any(k in n for k in ("gemm", "cutlass", "matmul", "xmma", "sm90_", "nvjet", "cublas")):
    return "gemm"
  if any(k in n for k in ("fmha", "flash", "cudnn", "attention", "sdpa")):
    return "attention"
  if "memcpy" in n or "memset" in n or "copy" in n:
    return "copy"
  if "reduce" in n:
    return "reduction"
  if "fusion" in n or "loop" in n or "input" in n:
    return "fusion"
  return "other"


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
  t = common.median(common.time_fn(lambda: step(params, tokens), warmup=2, iters=5))
  d = tempfile.mkdtemp()
  jax.profiler.start_trace(d, create_perfetto_trace=True)
  for _ in range(_STEPS.value):
    jax.block_until_ready(step(params, tokens))
  jax.profiler.stop_trace()
  path = glob.glob(os.path.join(d, "**", "*perfetto_trace.json.gz"), recursive=True)[0]
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  # Device streams: keep complete events on GPU stream threads (pid names contain /device:GPU).
  pid_names = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  gpu_pids = {p for p, n in pid_names.items() if "gpu" in n.lower() and "host" not in n.lower()}
  per_kernel = collections.Counter()
  per_class = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("pid") in gpu_pids:
      dur = e.get("dur", 0) / 1e3 / _STEPS.value            # ms per step
      per_kernel[e["name"]] += dur
      per_class[classify(e["name"])] += dur
  total = sum(per_class.values())
  if not total:
    print("no device kernel events; processes in trace:", sorted(set(pid_names.values()))[:20])
  flops = common.train_flops_per_step(cfg, batch, forward._SEQ.value)
  print(f"step {t * 1e3:.1f} ms wall, {total:.1f} ms kernel time, MFU {100 * flops / t / 989e12:.1f}%")
  for k, v in per_class.most_common():
    print(f"  {k:10s} {v:8.1f} ms  {100 * v / max(total, 1e-9):5.1f}%")
  for k, v in per_kernel.most_common(_TOP.value):
    print(f"  {v:8.2f} ms  {k[:110]}")


if __name__ == "__main__":
  app.run(main)
