"""benchmarks.common.first_difference on hand-made rollouts, and a CPU smoke run of
benchmarks/sampler_determinism.py (on CPU every implementation must repeat exactly)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks import common
from masksearch_jax.rollout import types as T

ROOT = Path(__file__).resolve().parents[2]


def _rollout(tokens, mask, lps, plen=2):
  tokens = np.asarray(tokens, np.int32)
  b = tokens.shape[0]
  return T.Rollout(tokens=tokens, loss_mask=np.asarray(mask, np.int32),
                   logprobs=np.asarray(lps, np.float32),
                   prompt_lengths=np.full((b,), plen, np.int32),
                   lengths=np.full((b,), tokens.shape[1], np.int32),
                   num_searches=np.zeros((b,), np.int32), num_tool_errors=np.zeros((b,), np.int32),
                   queries=[[] for _ in range(b)], finish_reason=["eos"] * b, texts=[""] * b,
                   stats={})


def test_first_difference_hand_worked():
  mask = [[0, 0, 1, 1, 1], [0, 0, 1, 0, 1]]
  ref = _rollout([[5, 6, 7, 8, 9], [5, 6, 7, 8, 9]], mask, [[0, 0, -1.0, -2.0, -3.0]] * 2)
  # Row 0 parts at position 4 (offset 2) after a drift of 0.25 at position 3; row 1 only drifts
  # at position 2 (0.5) and equals ref otherwise; position 4's larger drift comes after the split.
  out = _rollout([[5, 6, 7, 8, 1], [5, 6, 7, 8, 9]], mask,
                 [[0, 0, -1.0, -2.25, -9.0], [0, 0, -1.5, -2.0, -3.0]])
  assert common.first_difference(out, ref) == {"first_diff_offset": 2,
                                               "max_logprob_diff_before": 0.5}
  assert common.first_difference(ref, ref) == {"first_diff_offset": -1,
                                               "max_logprob_diff_before": 0.0}


def test_cpu_smoke_run_repeats_exactly():
  """Both implementations repeat bit for bit on CPU; with one-step chunks the Pallas kernel's
  first decode step is within rounding of XLA's (the last column)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks/sampler_determinism.py"),
                        "--model=tiny", "--batch=2", "--prompt_len=8", "--new_tokens=8",
                        "--attn_impls=xla,pallas", "--repeats=2", "--chunk_steps=1",
                        "--platform=cpu"], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [l.split() for l in out.stdout.splitlines() if l.split()[:1] in (["xla"], ["pallas"])]
  assert [r[:7] for r in rows] == [["xla", "1", "0", "0", "0", "-1", "0"],
                                   ["pallas", "1", "0", "0", "0", "-1", "0"]]
  assert rows[0][7] == "0" and 0 <= float(rows[1][7]) < 0.05
