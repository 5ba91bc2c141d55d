"""The eval summary table: `{dataset: {recall, em, f1, searches, n}}` -> stdout text, JSON, Markdown.

Why a separate module: `evaluate` writes it, the demo prints it, and the sweep collects hundreds of
them, so the file format and its checks live in one place.

Convention (checked): `recall`, `em` and `f1` are fractions in [0, 1] in summary.json; tables show
them ×100 like the paper (token-level recall ×100). `searches` is the mean number of search calls
per question; `n` (optional) the number of questions. The "average" row is the unweighted mean over
data sets, as in the paper's Table 2.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

SCORES = ("recall", "em", "f1")  # fractions in [0, 1]; shown x100
METRICS = SCORES + ("searches",)
AVERAGE = "average"
SUMMARY_FILE = "summary.json"

Summary = dict[str, dict[str, float]]


class SummaryError(ValueError):
  """A summary with a missing, non-numeric or out-of-range metric."""


def validate(summary: Mapping[str, Any], where: str = "summary") -> Summary:
  """Checks every row has all METRICS as finite numbers (scores in [0, 1]); returns a clean copy."""
  if not isinstance(summary, Mapping) or not summary:
    raise SummaryError(f"{where}: expected a non-empty {{dataset: {{metric: value}}}} mapping")
  out: Summary = {}
  for name, row in summary.items():
    if not isinstance(row, Mapping):
      raise SummaryError(f"{where}: row '{name}' is {type(row).__name__}, not a mapping")
    clean = {}
    for key in METRICS + ("n",):
      if key not in row:
        if key == "n":
          continue
        raise SummaryError(f"{where}: row '{name}' lacks '{key}' (has {sorted(row)})")
      val = row[key]
      if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
        raise SummaryError(f"{where}: row '{name}' field '{key}' = {val!r} is not a finite number")
      if key in SCORES and not 0.0 <= val <= 1.0:
        raise SummaryError(f"{where}: row '{name}' field '{key}' = {val} is outside [0, 1] "
                           "(scores are stored as fractions, shown x100)")
      clean[key] = float(val)
    out[str(name)] = clean
  return out


def with_average(summary: Mapping[str, Mapping[str, float]]) -> Summary:
  """Adds the unweighted mean over data sets as an 'average' row (when there are >= 2 sets)."""
  rows = {k: dict(v) for k, v in summary.items() if k != AVERAGE}
  if len(rows) >= 2:
    avg = {m: sum(r[m] for r in rows.values()) / len(rows) for m in METRICS}
    if all("n" in r for r in rows.values()):
      avg["n"] = float(sum(r["n"] for r in rows.values()))
    rows[AVERAGE] = avg
  return rows


def _cells(row: Mapping[str, float]) -> list[str]:
  cells = [f"{100.0 * row[m]:.2f}" for m in SCORES] + [f"{row['searches']:.2f}"]
  return cells + [str(int(row["n"])) if "n" in row else ""]


_HEADER = ["dataset", "recall", "EM", "F1", "searches", "n"]


def to_markdown(summary: Mapping[str, Mapping[str, float]], title: str | None = None) -> str:
  """GitHub Markdown table (scores x100), average row last."""
  rows = with_average(validate(summary))
  lines = [f"### {title}", ""] if title else []
  lines.append("| " + " | ".join(_HEADER) + " |")
  lines.append("|" + "|".join(["---"] + ["---:"] * (len(_HEADER) - 1)) + "|")
  for name, row in rows.items():
    label = f"**{name}**" if name == AVERAGE else name
    lines.append("| " + " | ".join([label] + _cells(row)) + " |")
  return "\n".join(lines) + "\n"


def to_text(summary: Mapping[str, Mapping[str, float]]) -> str:
  """Fixed-width table for a terminal."""
  rows = with_average(validate(summary))
  table = [_HEADER] + [[name] + _cells(row) for name, row in rows.items()]
  widths = [max(len(r[i]) for r in table) for i in range(len(_HEADER))]
  fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
  lines = [fmt(table[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in table[1:]]
  return "\n".join(lines) + "\n"


def write_summary(summary: Mapping[str, Mapping[str, float]], out_dir: str | Path,
                  title: str | None = None) -> dict[str, Path]:
  """Writes summary.json (fractions, with the average row) and summary.md; returns their paths."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  rows = with_average(validate(summary))
  paths = {"json": out_dir / SUMMARY_FILE, "md": out_dir / "summary.md"}
  tmp = paths["json"].with_suffix(".json.tmp")  # atomic: the sweep treats summary.json as "cell done"
  tmp.write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n", encoding="utf-8")
  tmp.replace(paths["json"])
  paths["md"].write_text(to_markdown(rows, title), encoding="utf-8")
  return paths


def load_summary(path: str | Path) -> Summary:
  """Reads and validates a summary.json (the 'average' row, if any, is recomputed by callers)."""
  path = Path(path)
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise SummaryError(f"{path}: invalid JSON: {e}") from e
  return validate(data, where=str(path))
