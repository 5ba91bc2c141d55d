"""benchmarks/decode_megakernel.py: a CPU smoke run (tiny model, one program, interpret mode)
prints both rows and agrees with XLA's step to rounding."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_smoke_run_prints_both_rows_and_agrees():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks/decode_megakernel.py"),
                        "--model=tiny", "--programs=1", "--platform=cpu", "--steps=2",
                        "--repeats=1", "--slots=128", "--context=32",
                        "--variants=w4s2,w4s2-attn"], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [l.split()[:2] for l in out.stdout.splitlines() if l.split()[:1] in (["mega"], ["xla"])
          and "first step" not in l]
  assert [r[0] if r[0] == "xla" else " ".join(r) for r in rows] == [
      "mega w4s2", "mega w4s2-attn", "xla"]
  # only the full variant is compared with XLA (a skipping one is wrong by design)
  assert sum("first step" in l for l in out.stdout.splitlines()) == 1
  last = out.stdout.strip().splitlines()[-1]
  assert last.endswith("same argmax 100%"), last
  assert float(last.split("xla| ")[1].split()[0]) < 0.02      # bf16 rounding of a tiny model
