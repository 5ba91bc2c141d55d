"""The results file of one `rl_world.py` run, shared with `rl_world_grid.py` (no flags here).

A run writes WORKDIR/results.json after the SFT evaluations (stage "sft_evaluated"), after each
evaluation that follows DAPO (stage "final_evals") and at the end (stage "complete"), so a run
killed during DAPO still reports (a), (b) and, from the trainer's metrics.jsonl, its curve so
far, and one killed in its last evaluations keeps (c).
"""
from __future__ import annotations

import json
from pathlib import Path

_CURVE_KEYS = ("step", "reward/total", "accuracy", "eval/accuracy", "eval_train/accuracy")


def rl_curve(metrics: Path) -> list[dict]:
  """Per DAPO step: reward, sampled accuracy and (where logged) the held-out and training-prompt
  greedy evals. A torn last line (a killed run) is skipped."""
  out = []
  for line in metrics.read_text().splitlines() if metrics.exists() else []:
    try:
      r = json.loads(line)
    except json.JSONDecodeError:
      continue
    out.append({k: r[k] for k in _CURVE_KEYS if k in r})
  return out


def save(work: Path, results: dict, stage: str) -> None:
  """Atomically (write + rename): a reader never sees half a file."""
  work.mkdir(parents=True, exist_ok=True)          # with --shared, nothing else has made it yet
  tmp = work / "results.json.tmp"
  tmp.write_text(json.dumps(dict(results, stage=stage), indent=1))
  tmp.replace(work / "results.json")


def load(work: Path) -> dict | None:
  """A run's results; for one stopped before the end, with its DAPO curve so far."""
  f = work / "results.json"
  if not f.exists():
    return None
  r = json.loads(f.read_text())
  if r.get("stage", "complete") != "complete":
    r["rl_curve"] = rl_curve(work / "rl" / "metrics.jsonl")
  return r
