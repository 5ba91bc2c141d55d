"""The grid runner's plan (shared SFT per group), scheduling and table."""
import sys
from pathlib import Path

import pytest

from benchmarks import rl_world_grid as grid


def test_parse_flags_and_variants():
  assert grid.parse_flags("--a=1 --b='x y' --a=2") == {"a": "2", "b": "x y"}
  with pytest.raises(ValueError, match="expected --flag=value"):
    grid.parse_flags("--dynamic_sampling")
  v = grid.parse_variants("--model=tiny_4l --rl_lr=1e-4", "A0: --train_seed=0; B: --rl_lr=2e-4 ;")
  assert v == {"A0": {"model": "tiny_4l", "rl_lr": "1e-4", "train_seed": "0"},
               "B": {"model": "tiny_4l", "rl_lr": "2e-4"}}
  with pytest.raises(ValueError, match="given twice"):
    grid.parse_variants("", "A: --x=1; A: --x=2")
  with pytest.raises(ValueError, match="plain name"):
    grid.parse_variants("", "a/b: --x=1")
  with pytest.raises(ValueError, match="grid_variants is empty"):
    grid.parse_variants("--x=1", " ; ")


def test_plan_shares_one_sft_per_group(tmp_path):
  v = grid.parse_variants("--model=tiny_4l --rl_share=0.5",
                          "A0: --train_seed=0 --rl_lr=1e-4; B0: --train_seed=0 --rl_lr=2e-4; "
                          "A1: --train_seed=1 --rl_lr=1e-4")
  p = {e["name"]: e for e in grid.plan(v, tmp_path)}
  assert p["A0"]["shared"] == p["B0"]["shared"] != p["A1"]["shared"]
  assert [p[n]["leader"] for n in ("A0", "B0", "A1")] == [True, False, True]
  assert f"--workdir={tmp_path / 'B0'}" in p["B0"]["argv"]
  assert "--rl_lr=2e-4" in p["B0"]["argv"] and f"--shared={p['A0']['shared']}" in p["B0"]["argv"]


def _fake(entry, code):
  entry["argv"] = [sys.executable, "-c", code]
  return entry


def test_followers_start_after_their_sft_exists(tmp_path):
  v = grid.parse_variants("", "L: --train_seed=0; F: --train_seed=0 --rl_lr=1; G: --train_seed=0")
  lead, follow, third = grid.plan(v, tmp_path)
  done = Path(lead["sft_done"])
  # The leader writes its SFT marker after a pause; followers record whether it existed when
  # they started (they must not start before it).
  _fake(lead, f"import time, pathlib; time.sleep(1.5); p = pathlib.Path({str(done)!r}); "
        "p.parent.mkdir(parents=True); p.write_text('{}')")
  for e in (follow, third):
    _fake(e, f"import pathlib; pathlib.Path({str(tmp_path / e['name'] / 'saw')!r}).write_text("
          f"str(pathlib.Path({str(done)!r}).exists()))")
  grid.run_all([lead, follow, third], tmp_path, parallel=3, mem=0.1, timeout_s=60)
  assert (tmp_path / "F" / "saw").read_text() == "True"
  assert (tmp_path / "G" / "saw").read_text() == "True"


def test_a_follower_builds_the_sft_when_its_leader_fails(tmp_path):
  v = grid.parse_variants("", "L: --train_seed=0; F: --train_seed=0 --rl_lr=1")
  lead, follow = grid.plan(v, tmp_path)
  _fake(lead, "raise SystemExit(3)")
  _fake(follow, f"import pathlib; pathlib.Path({str(tmp_path / 'F' / 'ran')!r}).write_text('1')")
  grid.run_all([lead, follow], tmp_path, parallel=2, mem=0.1, timeout_s=60)
  assert (tmp_path / "F" / "ran").exists()


def test_table_marks_missing_runs():
  r = {"a_sft_no_search": {"accuracy": 0.005}, "b_sft_search": {"accuracy": 0.258},
       "c_sft_dapo_search": {"accuracy": 0.268},
       "rl_curve": [{"reward/total": 0.66}, {"reward/total": 0.888}]}
  md = grid.table({"A0": r, "A1": None})
  assert "| A0 | 0.5% | 25.8% | 26.8% | 0.660 → 0.888 |" in md
  assert "| A1 | – | – | – | did not finish |" in md


def test_a_run_stopped_in_dapo_keeps_its_sft_figures_and_curve(tmp_path):
  """rl_world.py saves after the SFT evals (stage sft_evaluated); killed in DAPO, the grid still
  tables (a) and (b) and says where DAPO stopped, from the trainer's metrics (torn last line)."""
  from benchmarks import rl_results
  work = tmp_path / "W0"
  rl_results.save(work, {"a_sft_no_search": {"accuracy": 0.0}, "b_sft_search": {"accuracy": 0.03}},
                  "sft_evaluated")                     # makes the run's directory
  (work / "rl").mkdir()
  (work / "rl" / "metrics.jsonl").write_text(
      '{"step": 1, "reward/total": 0.5, "accuracy": 0.01}\n'
      '{"step": 2, "reward/total": 0.6, "accuracy": 0.02, "eval/accuracy": 0.035}\n{"step": 3, "rew')
  r = rl_results.load(work)
  assert r["stage"] == "sft_evaluated" and [c["step"] for c in r["rl_curve"]] == [1, 2]
  md = grid.table({"W0": r, "W1": rl_results.load(tmp_path / "W1")})
  assert ("| W0 | 0.0% | 3.0% | 0.500 → 0.600; stopped in DAPO after step 2 "
          "(held-out 3.5% at step 2) |") in md, md
  assert "| W1 | – | – | did not finish |" in md
  rl_results.save(work, dict(r, c_sft_dapo_search={"accuracy": 0.05}), "final_evals")
  md = grid.table({"W0": rl_results.load(work)})       # killed after (c): (c) kept, said so
  assert "| W0 | 0.0% | 3.0% | 5.0% | 0.500 → 0.600; stopped during the evaluations after DAPO |" in md
  rl_results.save(work, dict(r, c_sft_dapo_search={"accuracy": 0.05}), "complete")
  assert "stopped" not in grid.table({"W0": rl_results.load(work)})


def test_table_splits_search_from_reading_when_present():
  b = {"accuracy": 0.2, "answer_retrieved": 0.6, "accuracy_when_retrieved": 0.3}
  c = {"accuracy": 0.25, "answer_retrieved": 0.7, "accuracy_when_retrieved": None}
  md = grid.table({"A0": {"a_sft_no_search": {"accuracy": 0.0}, "b_sft_search": b,
                          "c_sft_dapo_search": c, "rl_curve": []}, "A1": None})
  assert "| retrieved / read, (b) → (c) |" in md
  assert "| A0 | 0.0% | 20.0% | 25.0% | 60% / 30% → 70% / – | – |" in md, md
  assert "| A1 | – | – | – | – | did not finish |" in md
