"""The two training entry points' shared start (train/entry.py), run as the user runs them."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["masksearch_jax.train_sft", "masksearch_jax.train_rl"])
def test_export_step_reaches_the_checkpoint_lookup(module, tmp_path):
  """`--export_step` on an empty workdir is a clear 'no checkpoint' error. (train_rl's used to
  import train_sft, whose flags collided with its own: DuplicateFlagError before any lookup.)"""
  out = subprocess.run([sys.executable, "-m", module, "--export_step=latest", "--model=tiny",
                        f"--workdir={tmp_path}", "--mesh=data=1,fsdp=1,tensor=1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=180,
                       env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  assert out.returncode != 0
  assert "DuplicateFlagError" not in out.stderr
  assert "no finished checkpoint" in out.stderr, out.stderr[-2000:]


def test_extra_arguments_are_a_usage_error():
  out = subprocess.run([sys.executable, "-m", "masksearch_jax.train_sft", "stray"], cwd=ROOT,
                       capture_output=True, text=True, timeout=180,
                       env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  assert out.returncode != 0 and "unexpected arguments: ['stray']" in out.stderr
