"""benchmarks/decode_gemms.py: the forced-tiling textproto, reading what ran back from compiled
HLO (snippets of a real H200 module), and a CPU smoke run."""
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import decode_gemms

ROOT = Path(__file__).resolve().parents[2]

_GEMM = ('fusion_backend_config":{"block_level_fusion_config":{"group_size":0,"num_ctas":1,'
         '"num_stages":3,"num_warps":"4","output_tiles":[{"sizes":["1","8","64"]}],'
         '"waves_per_eu":0},"kind":"__triton_nested_gemm_fusion"},"operation_queue_id":"0"')
_REDUCE = ('fusion_backend_config":{"block_level_fusion_config":{"num_ctas":1,"num_stages":1,'
           '"num_warps":"1","output_tiles":[{"sizes":["1","32"]}]},"kind":"__triton"}')


def test_forced_follows_the_rows():
  assert decode_gemms.forced("n32 k64 s8 st3 w4", 2) == (
      "block_m: 16 block_n: 32 block_k: 64 split_k: 8 num_stages: 3 num_warps: 4 num_ctas: 1")
  assert decode_gemms.forced("n64 k128", 64).startswith("block_m: 64 block_n: 64 block_k: 128 "
                                                        "split_k: 1 num_stages: 3")


def test_used_config_reads_triton_tiles_and_cublas():
  assert decode_gemms.used_config(_GEMM) == "gemm 1x8x64 st3 w4"
  assert decode_gemms.used_config(_GEMM + _REDUCE) == "fusion 1x32 st1 w1 + gemm 1x8x64 st3 w4"
  assert decode_gemms.used_config('custom_call_target="__cublas$lt$matmul"') == "cublas"
  assert decode_gemms.used_config("ENTRY e { ROOT p = f32[] parameter(0) }") == "no gemm kernel"


def test_cpu_smoke_run_prints_a_row_per_product():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks/decode_gemms.py"), "--model=tiny",
                        "--rows=2", "--products=qkv,down", "--layouts=io,oi", "--loop_trips=2",
                        "--repeats=1", "--platform=cpu"], env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [l.split() for l in out.stdout.splitlines() if l.split()[:1] in (["qkv"], ["down"])]
  assert [(r[0], r[2]) for r in rows] == [("qkv", "io"), ("qkv", "oi"), ("down", "io"),
                                          ("down", "oi")]
