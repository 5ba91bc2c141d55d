"""Sweep: grid expansion, local run + resume with a fake entry point, emit, collect, plot series.

The fake entry point (fake_cell.py) writes summaries by a formula of the axes; expected numbers
below are worked out by hand from that formula: qa recall = model (a .2, b .4) + pretrain (none 0,
ramp_sft .1, ramp_rl .2) + posttrain (rl .05) + .1 if RAMP at data size 1000; 'other' = qa / 2;
headline score = mean(qa, other) = .75 qa; ramp_mask<k> recall = .5 - .1 k (+ .05 with curriculum).
"""
import csv
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from masksearch_jax.sweep import collect, grid, plots, runner

REPO = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).resolve().parent / "fake_cell.py"

CONFIG = '''
SWEEP = dict(
    name="t",
    axes=dict(model=["tiny_a", "tiny_b"], pretrain=["none", "ramp_sft", "ramp_rl"], posttrain=["sft", "rl"],
              data_size=[100, 1000], curriculum=[True, False]),
    exclude=[dict(pretrain="none", data_size=[1000]), dict(pretrain="none", curriculum=False),
             dict(pretrain=["ramp_sft", "ramp_rl"], curriculum=False, data_size=[100])],
    model_params=dict(tiny_a=1e6, tiny_b=4e6),
    base=dict(fake="FAKE", calls="{root}/calls.txt",
              args="--model={{model}}"),
    setup=[dict(name="prep", cmd="{python} FAKE prep --run_dir={root}/_setup --calls={calls}")],
    stages=[
        dict(name="train", when=dict(pretrain=["ramp_sft", "ramp_rl"]),
             cmd="{python} -S {fake} train --run_dir={run_dir} --calls={calls}"),
        dict(name="eval", cmd="{python} -S {fake} eval --run_dir={run_dir} --model={model} --pretrain={pretrain} "
                              "--posttrain={posttrain} --data_size={data_size} --curriculum={curriculum} "
                              "--calls={calls}"),
    ],
)
'''.replace("FAKE", str(FAKE))


def _flat(pts):
  return [v for p in pts for v in p]


def _sweep(tmp_path):
  p = tmp_path / "t.py"
  p.write_text(CONFIG)
  return grid.load_sweep(p)


def test_expand_counts_names_commands(tmp_path):
  sw = _sweep(tmp_path)
  cells = grid.expand(sw, root=str(tmp_path / "r"), python="PY")
  assert len(cells) == 2 * (2 + 2 * 2 * 3)
  c = cells[0]
  assert c.name == "model-tiny_a__pretrain-none__posttrain-sft__data_size-100__curriculum-true"
  assert [s.name for s in c.stages] == ["eval"]  # no train stage without RAMP
  assert c.stages[0].cmd == (f"PY -S {FAKE} eval --run_dir={tmp_path}/r/{c.name} --model=tiny_a --pretrain=none "
                             f"--posttrain=sft --data_size=100 --curriculum=true --calls={tmp_path}/r/calls.txt")
  assert c.summary == f"{tmp_path}/r/{c.name}/eval/summary.json"
  ramp = [x for x in cells if x.values["pretrain"] == "ramp_rl" and x.values["model"] == "tiny_b"]
  assert [(x.values["posttrain"], x.values["data_size"], x.values["curriculum"]) for x in ramp] == [
      ("sft", 100, True), ("sft", 1000, True), ("sft", 1000, False),
      ("rl", 100, True), ("rl", 1000, True), ("rl", 1000, False)]
  assert [s.name for s in ramp[0].stages] == ["train", "eval"]
  assert grid.expand_setup(sw, root="R", python="PY")[0].cmd == f"PY {FAKE} prep --run_dir=R/_setup --calls=R/calls.txt"
  assert sw.base["args"] == "--model={{model}}" and "{model}" in grid._base_vars(sw, "R", "PY")["args"]


@pytest.mark.parametrize("cfg,msg", [
    ("SWEEP = dict(axes={}, stages=[dict(name='a', cmd='x')])", "axes"),
    ("SWEEP = dict(axes=dict(a=[1]), stages=[])", "stages"),
    ("SWEEP = dict(axes=dict(a=[1]), stages=[dict(name='s', cmd='x {nope}')])", r"stage 's'.*\['nope'\]"),
    ("SWEEP = dict(axes=dict(a=[1]), stages=[dict(name='s', cmd='x', when=dict(b=1))])", "unknown axis 'b'"),
    ("SWEEP = dict(axes=dict(a=[1]), stages=[dict(name='s', cmd='x')], exclude=[dict(a=1)])", "every cell"),
    ("SWEEP = dict(axes=dict(a=[1]), stages=[dict(name='s', cmd='x')], typo=1)", r"unknown SWEEP keys \['typo'\]"),
    ("SWEEP = dict(axes=dict(a=[1, 2]), stages=[dict(name='s', cmd='{i}')], derived=dict(i=dict(a={1: 'x'})))",
     "no entry for a=2"),
    ("X = 1", "must define SWEEP"),
])
def test_config_errors(tmp_path, cfg, msg):
  p = tmp_path / "bad.py"
  p.write_text(cfg)
  with pytest.raises(grid.SweepConfigError, match=msg):
    grid.expand(grid.load_sweep(p))


@pytest.mark.parametrize("name,n", [("tiny_world", 28), ("paper", 54)])
def test_shipped_configs_expand(name, n):
  sw = grid.load_sweep(REPO / "configs" / "sweeps" / f"{name}.py")
  cells = grid.expand(sw, root="gs://b/s")
  assert len(cells) == n and all("{" not in s.cmd for c in cells for s in c.stages)
  assert {s.cmd.split()[2] for c in cells for s in c.stages} == {
      "masksearch_jax.train_sft", "masksearch_jax.train_rl", "masksearch_jax.evaluate"}
  assert all(c.stages[-1].name == "eval" and f"--out=gs://b/s/{c.name}/eval" in c.stages[-1].cmd for c in cells)


def test_local_run_resume_and_collect(tmp_path, monkeypatch):
  sw = _sweep(tmp_path)
  root = tmp_path / "r"
  cells = grid.expand(sw, root=str(root), python=sys.executable)
  calls = root / "calls.txt"
  assert runner.run_setup(grid.expand_setup(sw, str(root), sys.executable), root) is None
  bad = "model-tiny_b__pretrain-ramp_sft__posttrain-rl__data_size-1000__curriculum-false"
  monkeypatch.setenv("FAKE_FAIL", bad)
  res = runner.run_local(cells[:8] + [c for c in cells if c.name == bad])
  assert [r.status for r in res] == ["done"] * 8 + ["failed"]
  assert "exited with status 3" in res[-1].message and (root / bad / "FAILED").exists()
  n_calls = len(calls.read_text().splitlines())
  # Second pass: done cells skipped, the failed one resumes at its train stage.
  monkeypatch.delenv("FAKE_FAIL")
  res = runner.run_local(cells)
  assert res[0].status == "skipped" and all(r.status != "failed" for r in res)
  new = calls.read_text().splitlines()[n_calls:]
  assert f"train {bad}" in new and not any(l.endswith(cells[0].name) for l in new)
  assert runner.run_setup(grid.expand_setup(sw, str(root), sys.executable), root) is None
  assert sum(l.startswith("prep") for l in calls.read_text().splitlines()) == 1  # setup ran once
  assert json.loads((root / cells[0].name / "cell.json").read_text())["values"]["model"] == "tiny_a"

  rows = collect.collect(cells)
  assert all(r.status == "done" for r in rows)
  best = next(r for r in rows if r.cell.startswith("model-tiny_b__pretrain-ramp_rl__posttrain-rl__data_size-1000__curriculum-true"))
  assert best.score() == pytest.approx(0.75 * 0.75) and best.mask_scores() == pytest.approx({1: 0.45, 2: 0.35})
  md = collect.to_markdown(rows).splitlines()
  assert md[0] == "| model | pretrain | posttrain | data_size | curriculum | other | qa | ramp_mask1 | ramp_mask2 | mean recall | searches | status |"
  assert "| tiny_b | ramp_rl | rl | 1000 | True | 37.50 | 75.00 | 45.00 | 35.00 | 56.25 | 1.50 | done |" in md
  table = list(csv.DictReader(io.StringIO(collect.to_csv(rows))))
  assert len(table) == 28 and float(table[0]["qa/em"]) == pytest.approx(0.1)

  ms = plots.model_size_series(rows, sw.axes, "recall", sw.model_params)
  assert _flat(ms["SFT"]) == pytest.approx([1e6, 0.15, 4e6, 0.3])
  assert _flat(ms["RAMP-RL→RL"]) == pytest.approx([1e6, 0.4125, 4e6, 0.5625])
  assert set(ms) == {"SFT", "RL", "RAMP-SFT→SFT", "RAMP-SFT→RL", "RAMP-RL→SFT", "RAMP-RL→RL"}
  ds = plots.data_size_series(rows, sw.axes)
  assert _flat(ds["tiny_b"]["RAMP-SFT→SFT"]) == pytest.approx([100.0, 0.375, 1000.0, 0.45])
  keys, series, per_mask = plots.curriculum_series(rows, sw.axes)
  assert per_mask and keys == ["1", "2"]
  assert series["curriculum"] == pytest.approx([0.45, 0.35]) and series["random mix"] == pytest.approx([0.4, 0.3])

  pytest.importorskip("matplotlib")
  paths = plots.draw_all(rows, sw.axes, tmp_path / "plots", "recall", sw.model_params)
  assert sorted(p.name for p in paths) == sorted(
      f"{s}.{e}" for s in ("scaling_model_size", "scaling_ramp_data", "curriculum_vs_mix") for e in ("png", "svg"))
  for p in paths:
    assert p.stat().st_size > 1000
  assert (tmp_path / "plots" / "scaling_model_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "RAMP-RL→RL" in (tmp_path / "plots" / "scaling_model_size.svg").read_text()


def test_setup_runs_once_under_concurrent_sweeps(tmp_path):
  # Two sweep processes started side by side (--only slices) share one setup: the second waits on
  # the lock, then finds the marker. Without the lock both would see no marker and run it.
  calls = tmp_path / "calls.txt"
  prep = grid.Stage("prep", f"{sys.executable} -S -c \"import sys, time; time.sleep(0.5); "
                            f"open(sys.argv[1], 'a').write('prep' + chr(10))\" {calls}")
  errs = []
  threads = [threading.Thread(target=lambda: errs.append(runner.run_setup([prep], tmp_path / "r")))
             for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert errs == [None, None] and calls.read_text() == "prep\n"


def test_collect_missing_and_bad_summary(tmp_path):
  cells = grid.expand(_sweep(tmp_path), root=str(tmp_path / "r"))[:3]
  Path(cells[1].summary).parent.mkdir(parents=True)
  Path(cells[1].summary).write_text('{"qa": {"recall": 7}}')
  Path(cells[2].run_dir).mkdir(parents=True)
  Path(cells[2].run_dir, "FAILED").write_text("x")
  assert [r.status for r in collect.collect(cells)] == ["missing", "failed", "failed"]


def test_emit_script(tmp_path):
  cells = grid.expand(_sweep(tmp_path), root="gs://b/s")[:2]
  text = runner.emit_commands(cells, {"name": "n", "accelerator": "v5litepod-16", "zone": "z", "spot": True},
                              setup=[grid.Stage("prep", "python -m x --a='b c'")])
  lines = text.splitlines()
  assert lines[:4] == ["#!/usr/bin/env bash", "# generated by python -m masksearch_jax.sweep --mode=emit",
                       "set -euo pipefail", "# setup"]
  assert lines[4] == "./launch_tpu.sh --name=n --accelerator=v5litepod-16 --zone=z --spot -- python -m x '--a=b c'"
  assert lines[6].startswith("./launch_tpu.sh --name=n --accelerator=v5litepod-16 --zone=z --spot --no_install -- ")
  assert f"--run_dir=gs://b/s/{cells[0].name}" in lines[6]
  subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_cli_plan_local_collect(tmp_path):
  cfg = tmp_path / "t.py"
  cfg.write_text(CONFIG)
  base = [sys.executable, "-m", "masksearch_jax.sweep", f"--sweep={cfg}", f"--root={tmp_path}/r",
          "--only=model-tiny_a__pretrain-none", "--noplots"]
  plan = subprocess.run(base + ["--mode=plan"], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert plan.returncode == 0 and plan.stdout.strip().endswith("2 cells"), plan.stderr
  run = subprocess.run(base + ["--mode=local"], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert run.returncode == 0, run.stderr
  assert "| tiny_a | none | sft | 100 | True | 10.00 | 20.00 | 15.00 | 1.50 | done |" in run.stdout
  assert (tmp_path / "r" / "results.md").exists() and (tmp_path / "r" / "results.csv").exists()
  emit = subprocess.run(base + ["--mode=emit"], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert emit.returncode == 0 and emit.stdout.count("./launch_tpu.sh") == 3  # setup + 2 cells x 1 stage
  bad = subprocess.run(base[:-2] + ["--only=zzz"], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert bad.returncode != 0 and "matches no cell" in bad.stderr
