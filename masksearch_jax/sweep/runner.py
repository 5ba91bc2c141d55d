"""Running cells: locally as sequential subprocesses (resumable), or emitted as launch_tpu.sh lines.

Resume rules (local): a cell whose summary.json exists is done and skipped; inside a cell, a stage
that finished leaves `<run_dir>/.stages/<stage>.done`, so a re-run starts at the first unfinished
stage (the entry points themselves resume from their last orbax checkpoint in --workdir). A failed
stage writes `<run_dir>/FAILED` and the sweep moves on to the next cell (or stops, if asked).
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from absl import logging

from masksearch_jax.sweep.grid import Cell, Stage


@dataclasses.dataclass(frozen=True)
class CellResult:
  cell: str
  status: str  # "skipped" (already done) | "done" | "failed"
  message: str = ""


def _write_cell_json(cell: Cell) -> None:
  run_dir = Path(cell.run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  info = {"name": cell.name, "values": cell.values,
          "stages": [{"name": s.name, "cmd": s.cmd} for s in cell.stages]}
  (run_dir / "cell.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _run_stages(stages: Sequence[Stage], run_dir: Path, label: str, cwd: str | Path | None,
                timeout_s: float | None) -> str | None:
  """Runs the unfinished stages in order; returns an error message, or None when all finished."""
  marks, logs = run_dir / ".stages", run_dir / "logs"
  marks.mkdir(parents=True, exist_ok=True)
  logs.mkdir(exist_ok=True)
  (run_dir / "FAILED").unlink(missing_ok=True)
  for stage in stages:
    mark = marks / f"{stage.name}.done"
    if mark.exists():
      logging.info("[%s] stage %s already done", label, stage.name)
      continue
    log_path = logs / f"{stage.name}.log"
    logging.info("[%s] %s: %s (log %s)", label, stage.name, stage.cmd, log_path)
    t0 = time.time()
    with log_path.open("a", encoding="utf-8") as log:
      log.write(f"$ {stage.cmd}\n")
      log.flush()
      try:
        rc = subprocess.run(shlex.split(stage.cmd), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            timeout=timeout_s, check=False).returncode
        msg = f"stage {stage.name} exited with status {rc}"
      except subprocess.TimeoutExpired:
        rc, msg = -1, f"stage {stage.name} timed out after {timeout_s}s"
      except OSError as e:
        rc, msg = -1, f"stage {stage.name} could not start: {e}"
    if rc != 0:
      msg = f"{msg}; see {log_path}"
      (run_dir / "FAILED").write_text(msg + "\n", encoding="utf-8")
      logging.error("[%s] %s", label, msg)
      return msg
    mark.write_text(f"{time.time() - t0:.1f}s\n", encoding="utf-8")
  return None


def run_setup(stages: Sequence[Stage], root: str | Path, cwd: str | Path | None = None,
              timeout_s: float | None = None) -> str | None:
  """The once-per-sweep stages (markers under <root>/_setup); returns an error message or None.

  Holds an exclusive lock on <root>/_setup/.lock meanwhile, so sweep processes started side by
  side (several `--only` slices on one machine) run each setup stage once: the others wait, then
  find its marker."""
  if not stages:
    return None
  setup_dir = Path(root) / "_setup"
  setup_dir.mkdir(parents=True, exist_ok=True)
  with (setup_dir / ".lock").open("a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      return _run_stages(stages, setup_dir, "setup", cwd, timeout_s)
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def run_cell(cell: Cell, cwd: str | Path | None = None, timeout_s: float | None = None) -> CellResult:
  """Runs the unfinished stages of one cell; output of each stage goes to logs/<stage>.log."""
  if Path(cell.summary).exists():
    return CellResult(cell.name, "skipped", "summary exists")
  _write_cell_json(cell)
  run_dir = Path(cell.run_dir)
  err = _run_stages(cell.stages, run_dir, cell.name, cwd, timeout_s)
  if err:
    return CellResult(cell.name, "failed", err)
  if not Path(cell.summary).exists():
    msg = f"all stages finished but {cell.summary} was not written"
    (run_dir / "FAILED").write_text(msg + "\n", encoding="utf-8")
    return CellResult(cell.name, "failed", msg)
  return CellResult(cell.name, "done")


def run_local(cells: Sequence[Cell], cwd: str | Path | None = None, timeout_s: float | None = None,
              stop_on_error: bool = False) -> list[CellResult]:
  """Runs cells one after the other (one accelerator: no point in running them side by side)."""
  results = []
  for i, cell in enumerate(cells):
    logging.info("cell %d/%d: %s", i + 1, len(cells), cell.name)
    res = run_cell(cell, cwd, timeout_s)
    results.append(res)
    if res.status == "failed" and stop_on_error:
      break
  return results


def emit_commands(cells: Sequence[Cell], tpu: Mapping[str, Any], launcher: str = "./launch_tpu.sh",
                  setup: Sequence[Stage] = ()) -> str:
  """A bash script: one launch_tpu.sh call per stage (setup first, then cells in order), one slice."""
  flags = [f"--name={tpu.get('name', 'masksearch-sweep')}", f"--accelerator={tpu.get('accelerator', 'v4-8')}"]
  for key in ("zone", "project", "version"):
    if tpu.get(key):
      flags.append(f"--{key}={tpu[key]}")
  if tpu.get("spot"):
    flags.append("--spot")
  head = " ".join(shlex.quote(f) for f in [launcher] + flags)
  lines = ["#!/usr/bin/env bash", "# generated by python -m masksearch_jax.sweep --mode=emit", "set -euo pipefail"]
  first = True
  groups = ([("setup", setup)] if setup else []) + [(c.name, c.stages) for c in cells]
  for label, stages in groups:
    lines.append(f"# {label}")
    for stage in stages:
      install = "" if first else " --no_install"  # the slice is reused: install once
      lines.append(f"{head}{install} -- {shlex.join(shlex.split(stage.cmd))}")
      first = False
  return "\n".join(lines) + "\n"
