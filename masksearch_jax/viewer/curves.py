"""Learning curves from a metrics JSONL as inline SVG (no plotting library, no network).

Why hand-drawn SVG: the viewer page must open anywhere offline, and a polyline per metric is all a
training curve needs. Input lines look like `{"step": 10, "reward/mean": 0.4, "loss": 1.2, ...}`.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

from masksearch_jax import jsonl

Series = dict[str, list[tuple[float, float]]]  # metric -> [(step, value)] in file order

MAX_POINTS = 1000   # per curve: longer series are strided (bounded page size)
MAX_CHARTS = 24
_SKIP = {"step", "time", "timestamp", "wall_time", "epoch_time"}


def load_metrics(path: str | Path) -> Series:
  """Numeric fields per step; non-numeric fields and NaN/inf values are skipped."""
  series: Series = {}
  for p, lineno, rec in jsonl.iter_objects(path, what="metrics log"):
    step = rec.get("step", lineno)
    if isinstance(step, bool) or not isinstance(step, (int, float)):
      raise ValueError(f"{p}:{lineno}: field 'step' = {step!r} is not a number")
    for key, val in rec.items():
      if key in _SKIP or isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
        continue
      series.setdefault(key, []).append((float(step), float(val)))
  return series


def _fmt(v: float) -> str:
  return f"{v:.4g}"


def svg_chart(name: str, points: list[tuple[float, float]], width: int = 320, height: int = 180) -> str:
  """One line chart: the polyline, min/max labels on both axes, the last value in the title."""
  if len(points) > MAX_POINTS:
    stride = math.ceil(len(points) / MAX_POINTS)
    points = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
  pad_l, pad_r, pad_t, pad_b = 48, 10, 22, 26
  w, h = width - pad_l - pad_r, height - pad_t - pad_b
  xs, ys = [p[0] for p in points], [p[1] for p in points]
  x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
  if x1 == x0:
    x1 = x0 + 1.0
  if y1 == y0:
    y0, y1 = y0 - 0.5, y1 + 0.5
  sx = lambda x: pad_l + (x - x0) / (x1 - x0) * w
  sy = lambda y: pad_t + (1.0 - (y - y0) / (y1 - y0)) * h  # SVG y grows downwards
  pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
  title = html.escape(f"{name} (last {_fmt(points[-1][1])})")
  return (
      f'<svg class="curve" data-metric="{html.escape(name)}" data-points="{len(points)}" '
      f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
      f'<text x="{pad_l}" y="14" class="ct">{title}</text>'
      f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" class="frame"/>'
      f'<polyline points="{pts}" class="line"/>'
      f'<text x="{pad_l - 4}" y="{pad_t + 8}" class="yl">{_fmt(y1)}</text>'
      f'<text x="{pad_l - 4}" y="{pad_t + h}" class="yl">{_fmt(y0)}</text>'
      f'<text x="{pad_l}" y="{height - 8}" class="xl">{_fmt(x0)}</text>'
      f'<text x="{pad_l + w}" y="{height - 8}" class="xl" text-anchor="end">step {_fmt(x1)}</text>'
      '</svg>')


def svg_charts(series: Series) -> str:
  """All curves (first MAX_CHARTS metrics in file order) as one HTML fragment."""
  names = [k for k, v in series.items() if v][:MAX_CHARTS]
  return "\n".join(svg_chart(k, series[k]) for k in names)
