"""benchmarks/multi_gpu.py end to end on forced CPU devices: the sharded-forward table, and a run
saved on a 2-device FSDP mesh restored in a 1-device process with identical logits and params."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(args, devices, tmp_path):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks/multi_gpu.py"), "--model=tiny",
                        "--batch=4", "--seq=32", *args], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  return out.stdout


def test_forward_table_and_cross_mesh_restore(tmp_path):
  table = _run(["--mode=forward"], 2, tmp_path)
  rows = [l for l in table.splitlines() if l.startswith("tiny") and "float32" in l]
  assert len(rows) == 3                                   # data=2, fsdp=2, tensor=2
  for row in rows:
    assert float(row.split("|")[4]) < 1e-5, row           # max abs diff, f32
  work = str(tmp_path / "run")
  saved = _run(["--mode=save", f"--workdir={work}", "--mesh=data=1,fsdp=2,tensor=1"], 2, tmp_path)
  assert "saved step 2" in saved and "'fsdp': 2" in saved
  got = _run(["--mode=restore", f"--workdir={work}", "--mesh=data=1,fsdp=1,tensor=1"], 1, tmp_path)
  assert "logits max |diff| 0.000e+00" in got and "params identical: 14/14" in got, got
