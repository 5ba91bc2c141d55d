"""benchmarks/grid_barrier.py: the stage sizes (hand-worked), the kernel's sum and barrier count
in interpret mode (one program), its CUDA lowering, and a CPU smoke run."""
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import grid_barrier as gb
from masksearch_jax.model import config
from tests.cuda_lowering import triton_kernels

ROOT = Path(__file__).resolve().parents[2]


def test_stage_rows_cover_each_product():
  """1.5B, 132 programs, 64 x 64 tiles (540,672 elements a block row): q/k/v 1536 x 2048 =
  3,145,728 -> 5.8 -> 6 steps = 384 rows; o 1536^2 -> 4.4 -> 320; gate/up 1536 x 17920 -> 50.9
  -> 3264; down 8960 x 1536 -> 25.5 -> 1664."""
  assert gb.stage_rows(config.get_config("1.5b"), 132, 64, 64) == [384, 320, 3264, 1664]
  assert gb.stage_rows(config.get_config("tiny"), 132, 64, 64) == [64] * 4   # at least one step


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("barriers", [False, True])
def test_kernel_sums_every_tile_and_counts_barriers(barriers, flat):
  """One program (interpret mode runs programs in turn): the output is x times every weight
  block, summed; the counter saw one arrival a stage and layer (flat: the stages concatenated,
  one loop, the barrier inside it at each stage's last block)."""
  rows, layers, bn, bk = [64, 128, 32], 3, 16, 32
  rng = np.random.default_rng(0)
  ws = [rng.normal(size=(layers, 1, r, bn)).astype(np.float32) for r in rows]
  x = rng.normal(size=(16, bk)).astype(np.float32)
  fn = gb.build(rows, layers, 1, bn, bk, barriers, 4, 2, interpret=True, flat=flat)
  given = [np.concatenate(ws, axis=2)] if flat else ws
  out, cnt = fn(jnp.asarray(x, jnp.bfloat16), *(jnp.asarray(w, jnp.bfloat16) for w in given))
  xb = np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32)
  wb = [np.asarray(jnp.asarray(w, jnp.bfloat16), np.float32) for w in ws]
  # Every [bk, bn] block of every stage and layer is multiplied by the same x tile and summed.
  ref = sum(xb @ w[l, 0, i * bk:(i + 1) * bk] for w in wb for l in range(layers)
            for i in range(w.shape[2] // bk))
  np.testing.assert_allclose(np.asarray(out)[0], ref, rtol=1e-5, atol=1e-4)
  assert int(cnt[0]) == (layers * len(rows) if barriers else 0)


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("barriers", [False, True])
def test_kernel_lowers_for_cuda(barriers, flat):
  rows = gb.stage_rows(config.get_config("1.5b"), 132, 64, 64)
  fn = gb.build(rows, 2, 132, 64, 64, barriers, 4, 4, flat=flat)
  args = [jax.ShapeDtypeStruct((16, 64), jnp.bfloat16)]
  shapes = [(2, 132, sum(rows), 64)] if flat else [(2, 132, r, 64) for r in rows]
  args += [jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in shapes]
  assert triton_kernels(fn, *args) == 1


def test_cpu_smoke_run_prints_the_five_variants():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks/grid_barrier.py"), "--model=tiny",
                        "--programs=1", "--layers=1", "--repeats=1", "--calls=1",
                        "--platform=cpu"], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  names = [" ".join(l.split()[:2]) for l in out.stdout.splitlines()[2:7]]
  assert [n.split()[0] for n in names[:3]] == ["stream", "barriers", "barriers"]
  assert names[3:] == ["flat stream", "flat barriers"] and "flat barriers add" in out.stdout
