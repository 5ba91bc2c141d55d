"""RMSNorm backward alone: XLA's autodiff against model/rms_norm.py's one-kernel backward, per
kernel configuration, in bandwidth against the device copy.

  python benchmarks/rms_norm.py                                   # 1.5B SFT shape, H200
  python benchmarks/rms_norm.py --tokens=64 --dim=96 --platform=cpu --trips=1 --configs=r16w4  # smoke

Each timing is one jitted call of `trips` dependent forward+backward passes (the next pass's dy is
this pass's dx), best of `repeats`. "ideal GB/s" counts the bytes a one-pass backward must move —
read x and dy, write dx — plus, for fwd+bwd rows, the forward's read of x and write of y, or, for
the kernel rows, the read of x for 1 / RMS(x): a ratio of 1 to the copy bandwidth is the roofline.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout, uninstalled

flags.DEFINE_integer("tokens", 32768, "rows (16 x 2048: the 1.5B SFT step)")
flags.DEFINE_integer("dim", 1536, "hidden size")
flags.DEFINE_list("configs", ["r8w2", "r16w4", "r16w8", "r32w4", "r32w8"],
                  "kernel configs rNwM: N rows per program, M warps")
flags.DEFINE_integer("trips", 20, "dependent passes per timed call")
flags.DEFINE_integer("repeats", 5, "timed calls (best reported)")
flags.DEFINE_string("platform", "", "force a JAX platform (cpu for smoke tests)")
FLAGS = flags.FLAGS


def _parse(name: str) -> tuple[int, int]:
  rows, warps = name[1:].split("w")
  return int(rows), int(warps)


def main(argv):
  del argv
  if FLAGS.platform:
    os.environ["JAX_PLATFORMS"] = FLAGS.platform
  import jax
  import jax.numpy as jnp
  from benchmarks import common
  from masksearch_jax.model import rms_norm

  n, d, trips = FLAGS.tokens, FLAGS.dim, FLAGS.trips
  key = jax.random.key(0)
  x = jax.random.normal(key, (n, d), jnp.bfloat16)
  w = (1 + 0.1 * jax.random.normal(jax.random.key(1), (d,))).astype(jnp.bfloat16)
  dy0 = jax.random.normal(jax.random.key(2), (n, d), jnp.bfloat16)

  def looped(step):
    def run(x, w, dy):
      def body(_, carry):
        dy, dw = carry
        dx, dwi = step(x, w, dy)
        return dx.astype(dy.dtype), dw + dwi.astype(jnp.float32)
      return jax.lax.fori_loop(0, trips, body, (dy, jnp.zeros((d,), jnp.float32)))
    return jax.jit(run)

  def autodiff(impl):
    def step(x, w, dy):
      _, vjp = jax.vjp(lambda x, w: rms_norm.rms_norm(x, w, 1e-6, impl), x, w)
      return vjp(dy)
    return step

  def kernel_only(rows, warps):
    def step(x, w, dy):
      r = rms_norm.rms_scale(x, 1e-6)[:, 0]
      dx, parts = rms_norm._bwd_kernel(x, dy, r, w, rows=rows, num_warps=warps)
      return dx, jnp.sum(parts.reshape(-1, d), axis=0)
    return step

  cases = [("xla autodiff (fwd+bwd)", autodiff("xla"), 5),
           ("pallas default (fwd+bwd)", autodiff("pallas"), 5)]
  cases += [(f"kernel {c} (+ r)", kernel_only(*_parse(c)), 4) for c in FLAGS.configs]
  platform = jax.default_backend()
  copy = common.roofline_bandwidth(platform)["roofline_tbs"]
  rows, base = [], None
  for name, step, passes in cases:                          # passes over [n, d] bf16
    f = looped(step)
    try:
      jax.block_until_ready(f(x, w, dy0))
    except Exception as e:                                   # a config Triton refuses: report it
      rows.append({"case": name, "ms/pass": f"failed: {type(e).__name__}: {str(e)[:80]}"})
      continue
    best = min(_timed(f, x, w, dy0) for _ in range(FLAGS.repeats)) / trips
    base = base or best
    gbs = passes * n * d * 2 / best / 1e9
    rows.append({"case": name, "ms/pass": f"{best * 1e3:.3f}", "ideal GB/s": f"{gbs:,.0f}",
                 "of copy": f"{gbs / (copy * 1e3):.2f}", "vs xla": f"{base / best:.2f}x"})
  print(f"\nRMSNorm forward+backward, [{n}, {d}] bf16, {platform}, copy {copy:.2f} TB/s")
  common.print_table(rows, ["case", "ms/pass", "ideal GB/s", "of copy", "vs xla"])


def _timed(f, *args) -> float:
  import jax
  t0 = time.perf_counter()
  jax.block_until_ready(f(*args))
  return time.perf_counter() - t0


if __name__ == "__main__":
  app.run(main)
