"""A stand-in for the train/eval entry points in sweep tests: records its call and, as `eval`, writes a
summary.json whose numbers follow a hand-checkable formula of the cell's axes (see test_sweep.py)."""
import argparse
import json
import os
import sys
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("stage")
p.add_argument("--run_dir", required=True)
p.add_argument("--model")
p.add_argument("--pretrain")
p.add_argument("--posttrain")
p.add_argument("--data_size", type=int)
p.add_argument("--curriculum")
p.add_argument("--calls", required=True)
a = p.parse_args()
with open(a.calls, "a") as f:
  f.write(f"{a.stage} {Path(a.run_dir).name}\n")
fail = os.environ.get("FAKE_FAIL", "")
if fail and fail in a.run_dir and a.stage == "train":
  sys.exit(3)
if a.stage == "eval":
  qa = ({"tiny_a": 0.2, "tiny_b": 0.4}[a.model] + {"none": 0.0, "ramp_sft": 0.1, "ramp_rl": 0.2}[a.pretrain]
        + {"sft": 0.0, "rl": 0.05}[a.posttrain] + (0.1 if a.pretrain != "none" and a.data_size == 1000 else 0.0))
  summary = {"qa": {"recall": qa, "em": qa / 2, "f1": qa, "searches": 1.0, "n": 10},
             "other": {"recall": qa / 2, "em": 0.0, "f1": qa / 2, "searches": 2.0, "n": 10}}
  if a.pretrain != "none":
    for k in range(1, 3):
      r = 0.5 - 0.1 * k + (0.05 if a.curriculum == "true" else 0.0)
      summary[f"ramp_mask{k}"] = {"recall": r, "em": 0.0, "f1": r, "searches": 1.0}
  out = Path(a.run_dir) / "eval"
  out.mkdir(parents=True, exist_ok=True)
  (out / "summary.json").write_text(json.dumps(summary))
