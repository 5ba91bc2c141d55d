"""Collects every cell's eval summary.json into one table (Markdown for reading, CSV for tools).

A row per cell: its axis values, status (done / missing / failed) and the summary, if any. The
headline score of a cell is the unweighted mean over its eval sets of one metric, leaving out the
per-mask-count RAMP sets (names like `ramp_mask3`), which only the curriculum plot uses.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import re
from pathlib import Path
from typing import Any, Sequence

from absl import logging

from masksearch_jax.eval import report
from masksearch_jax.sweep.grid import Cell

MASK_SET = re.compile(r"mask[_-]?(\d+)$")


@dataclasses.dataclass(frozen=True)
class Row:
  cell: str
  values: dict[str, Any]
  status: str                             # "done" | "missing" | "failed"
  summary: dict[str, dict[str, float]]    # {} unless done; no "average" row

  def score(self, metric: str = "recall") -> float | None:
    """Mean of `metric` over the non-mask eval sets (None if there are none)."""
    vals = [r[metric] for name, r in self.summary.items() if not MASK_SET.search(name)]
    return sum(vals) / len(vals) if vals else None

  def mask_scores(self, metric: str = "recall") -> dict[int, float]:
    """{mask count: metric} from eval sets named like `ramp_mask2`."""
    out = {}
    for name, r in self.summary.items():
      m = MASK_SET.search(name)
      if m:
        out[int(m.group(1))] = r[metric]
    return out


def collect(cells: Sequence[Cell]) -> list[Row]:
  """Reads each cell's summary; a malformed summary is logged and counted as failed."""
  rows = []
  for cell in cells:
    path = Path(cell.summary)
    if path.exists():
      try:
        summary = report.load_summary(path)
      except report.SummaryError as e:
        logging.error("%s", e)
        rows.append(Row(cell.name, cell.values, "failed", {}))
        continue
      summary.pop(report.AVERAGE, None)
      rows.append(Row(cell.name, cell.values, "done", summary))
    else:
      failed = (Path(cell.run_dir) / "FAILED").exists()
      rows.append(Row(cell.name, cell.values, "failed" if failed else "missing", {}))
  return rows


def _datasets(rows: Sequence[Row]) -> list[str]:
  seen: dict[str, None] = {}
  for r in rows:
    for name in r.summary:
      seen.setdefault(name, None)
  return sorted(seen)


def _axes(rows: Sequence[Row]) -> list[str]:
  return list(rows[0].values) if rows else []


def to_markdown(rows: Sequence[Row], metric: str = "recall") -> str:
  """One line per cell: axes, `metric` x100 per eval set, the mean, and search calls per question."""
  sets, axes = _datasets(rows), _axes(rows)
  scale = 100.0 if metric in report.SCORES else 1.0
  head = axes + sets + [f"mean {metric}", "searches", "status"]
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(axes) + ["---:"] * (len(head) - len(axes))) + "|"]
  for r in rows:
    cells = [str(r.values[a]) for a in axes]
    cells += [f"{scale * r.summary[s][metric]:.2f}" if s in r.summary else "" for s in sets]
    score = r.score(metric)
    cells.append(f"{scale * score:.2f}" if score is not None else "")
    searches = [v["searches"] for k, v in r.summary.items() if not MASK_SET.search(k)]
    cells.append(f"{sum(searches) / len(searches):.2f}" if searches else "")
    cells.append(r.status)
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Row]) -> str:
  """Wide CSV: axes, cell, status, then `<set>/<metric>` for every set and metric (fractions)."""
  sets, axes = _datasets(rows), _axes(rows)
  cols = [f"{s}/{m}" for s in sets for m in report.METRICS]
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(axes + ["cell", "status"] + cols)
  for r in rows:
    vals = [r.summary[s][m] if s in r.summary else "" for s in sets for m in report.METRICS]
    w.writerow([r.values[a] for a in axes] + [r.cell, r.status] + vals)
  return buf.getvalue()


def write_tables(rows: Sequence[Row], out_dir: str | Path, metric: str = "recall") -> dict[str, Path]:
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {"md": out_dir / "results.md", "csv": out_dir / "results.csv"}
  paths["md"].write_text(to_markdown(rows, metric), encoding="utf-8")
  paths["csv"].write_text(to_csv(rows), encoding="utf-8")
  return paths
