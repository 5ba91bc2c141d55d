"""benchmarks/train_step.py: --sft_variants parsing, and a variant's fields reach the timed
config (tiny model, CPU)."""
import sys

import pytest
from absl import app, flags

from benchmarks import train_step


def test_parse_variant():
  assert train_step.parse_variant("remat=dots_attn/batch_size=16") == {
      "remat": "dots_attn", "batch_size": "16"}
  assert train_step.parse_variant("") == {}
  with pytest.raises(app.UsageError, match="'batch_size' in 'remat=x/batch_size'"):
    train_step.parse_variant("remat=x/batch_size")


def test_variant_overrides_the_flags():
  flags.FLAGS.unparse_flags()
  flags.FLAGS([sys.argv[0], "--models=tiny", "--batch=8", "--seq=32", "--iters=1",
               "--remat=none", "--nopacked"])
  try:
    rows = train_step.bench_model("tiny", "remat=full/batch_size=16")
  finally:
    flags.FLAGS.unparse_flags()
  assert [r["kind"] for r in rows] == ["fwd+bwd", "sft step"]
  assert all(r["remat"] == "full" and r["batch"] == 16 and r["variant"] == "remat=full/batch_size=16"
             for r in rows)
