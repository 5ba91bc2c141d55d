r"""Scaling-study sweeps: expand a grid, run or resume its cells, collect the table, draw the plots.

  python -m masksearch_jax.sweep --sweep=configs/sweeps/tiny_world.py --mode=plan     # list cells
  python -m masksearch_jax.sweep --sweep=configs/sweeps/tiny_world.py                 # run locally
  python -m masksearch_jax.sweep --sweep=configs/sweeps/paper.py --mode=emit \
      --root=gs://bucket/sweeps/paper > run_paper.sh                                  # TPU commands
  python -m masksearch_jax.sweep --sweep=configs/sweeps/tiny_world.py --mode=collect  # table + plots

Cells run one after the other; to use a big accelerator on small cells, start several processes
with disjoint --only regexes side by side (the setup stages run once, under a lock in <root>/_setup).
Local runs write <root>/results.md, results.csv and the figures (PNG + SVG) into <root>.
--mode=collect reads local summaries only: after a TPU sweep, copy the run directories down first
(`gcloud storage rsync -r gs://bucket/sweeps/paper runs/sweeps/paper`) and pass --root=runs/sweeps/paper.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from absl import app, flags, logging

from masksearch_jax.sweep import collect, grid, plots, runner

_SWEEP = flags.DEFINE_string("sweep", None, "sweep config file (defines SWEEP = dict(...))")
_MODE = flags.DEFINE_enum("mode", "local", ["plan", "local", "emit", "collect"],
                          "plan: print cells; local: run/resume them here; emit: print launch_tpu.sh "
                          "commands; collect: only the table and plots")
_ROOT = flags.DEFINE_string("root", None, "run-directory root (default: the config's; gs://... for emit)")
_ONLY = flags.DEFINE_string("only", None, "regex: only cells whose name matches")
_METRIC = flags.DEFINE_enum("metric", "recall", ["recall", "em", "f1"], "score in the table and plots")
_TIMEOUT = flags.DEFINE_float("stage_timeout_s", 0, "kill a stage after this many seconds (0: never)")
_STOP = flags.DEFINE_bool("stop_on_error", False, "stop the sweep at the first failed cell")
_PYTHON = flags.DEFINE_string("python", None, "{python} in templates (default: this interpreter; "
                              "'python' for --mode=emit)")
_PLOTS = flags.DEFINE_bool("plots", True, "draw the figures (needs matplotlib)")
_TPU_NAME = flags.DEFINE_string("tpu_name", None, "emit: TPU VM name (default: config tpu.name)")
_ACCEL = flags.DEFINE_string("accelerator", None, "emit: accelerator type, e.g. v4-32 (default: config)")
_ZONE = flags.DEFINE_string("zone", None, "emit: zone (default: config)")
_PROJECT = flags.DEFINE_string("project", None, "emit: project (default: config)")
_SPOT = flags.DEFINE_bool("spot", None, "emit: spot capacity (default: config)")


def _cells(sweep: grid.Sweep, root: str | None, python: str) -> list[grid.Cell]:
  cells = grid.expand(sweep, root=root, python=python)
  if _ONLY.value:
    pat = re.compile(_ONLY.value)
    cells = [c for c in cells if pat.search(c.name)]
    if not cells:
      raise app.UsageError(f"--only={_ONLY.value!r} matches no cell")
  return cells


def _collect_and_plot(sweep: grid.Sweep, cells: list[grid.Cell], out_dir: Path) -> None:
  rows = collect.collect(cells)
  paths = collect.write_tables(rows, out_dir, _METRIC.value)
  print(collect.to_markdown(rows, _METRIC.value))
  print(f"tables: {paths['md']} {paths['csv']}")
  n_done = sum(r.status == "done" for r in rows)
  logging.info("%d of %d cells have summaries", n_done, len(rows))
  if not _PLOTS.value or n_done == 0:
    return
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    logging.warning("matplotlib is not installed: no plots (pip install matplotlib)")
    return
  for p in plots.draw_all(rows, sweep.axes, out_dir, _METRIC.value, sweep.model_params):
    print(f"plot: {p}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _SWEEP.value:
    raise app.UsageError("--sweep is required")
  sweep = grid.load_sweep(_SWEEP.value)
  mode = _MODE.value
  if mode == "emit":
    if not _ROOT.value:
      raise app.UsageError("--mode=emit needs --root=gs://... (run directories must outlive the TPU VMs)")
    cells = _cells(sweep, _ROOT.value, _PYTHON.value or "python")
    tpu = dict(sweep.tpu)
    for key, flag in (("name", _TPU_NAME), ("accelerator", _ACCEL), ("zone", _ZONE), ("project", _PROJECT),
                      ("spot", _SPOT)):
      if flag.value is not None:
        tpu[key] = flag.value
    setup = grid.expand_setup(sweep, _ROOT.value, _PYTHON.value or "python")
    sys.stdout.write(runner.emit_commands(cells, tpu, setup=setup))
    return
  cells = _cells(sweep, _ROOT.value, _PYTHON.value or sys.executable)
  root = Path(_ROOT.value or sweep.root)
  setup = grid.expand_setup(sweep, str(root), _PYTHON.value or sys.executable)
  if mode == "plan":
    for st in setup:
      print(f"setup [{st.name}] {st.cmd}")
    for c in cells:
      done = " (done)" if Path(c.summary).exists() else ""
      print(f"{c.name}{done}")
      for st in c.stages:
        print(f"  [{st.name}] {st.cmd}")
    print(f"{len(cells)} cells")
    return
  if mode == "local":
    err = runner.run_setup(setup, root, timeout_s=_TIMEOUT.value or None)
    if err:
      logging.error("sweep setup failed: %s", err)
      sys.exit(1)
    results = runner.run_local(cells, timeout_s=_TIMEOUT.value or None, stop_on_error=_STOP.value)
    for r in results:
      print(f"{r.status:8s} {r.cell} {r.message}")
  _collect_and_plot(sweep, cells, root)
  if mode == "local" and any(r.status == "failed" for r in results):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
