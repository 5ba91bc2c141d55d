"""benchmarks/decode_attention.py: a CPU smoke run prints a row per tiling and kernel, each
checked against XLA attention."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_smoke_run_prints_a_checked_row_per_tiling():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks/decode_attention.py"),
                        "--model=tiny", "--rows=2,16", "--layers=2", "--cache_len=64", "--live=40",
                        "--blocks=16,32", "--loop_trips=1", "--repeats=1", "--platform=cpu"],
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [l.split() for l in out.stdout.splitlines() if l.split()[:1] in (["2"], ["16"])]
  kinds = [(r[0], r[1], r[2]) for r in rows]
  assert kinds == [("2", "xla", "-"), ("2", "write", "b16"), ("2", "write", "b32"),
                   ("16", "xla", "-"), ("16", "attend", "b16"), ("16", "attend", "b32")]
  assert all(float(r[-1]) < 1e-2 for r in rows)               # bf16 rounding, never wrong
