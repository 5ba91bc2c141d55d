"""The sweep's figures, as PNG and SVG: score vs model size per method; score vs RAMP data size;
curriculum vs random mix per mask count.

The series are built by pure functions (tested without matplotlib); `draw_all` needs matplotlib and
uses the object API (`matplotlib.figure.Figure`), so no global pyplot state or display is involved.
Axis names the plots understand: model, pretrain, posttrain, data_size, curriculum. Fixed settings:
where a figure varies one axis, the others are held at "the full method" -- the largest data size
and curriculum on -- except for cells without RAMP pre-training, where those axes mean nothing.
"""
from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Mapping, Sequence

from absl import logging

from masksearch_jax.sweep.collect import Row

_PRE = {"none": "", "ramp_sft": "RAMP-SFT→", "ramp_rl": "RAMP-RL→"}


def method_label(values: Mapping[str, Any]) -> str:
  """e.g. 'RAMP-RL→RL' (MaskSearch RL→RL), 'SFT' (no pre-training)."""
  pre = values.get("pretrain", "none")
  post = str(values.get("posttrain", "")).upper()
  return (_PRE.get(pre, f"{pre}→") + post) or "all"


def _has_ramp(values: Mapping[str, Any]) -> bool:
  return values.get("pretrain", "none") != "none"


def default_fix(axes: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
  fix = {}
  if "data_size" in axes:
    fix["data_size"] = max(axes["data_size"])
  if "curriculum" in axes:
    fix["curriculum"] = True if True in axes["curriculum"] else axes["curriculum"][-1]
  return fix


def _keep(r: Row, fix: Mapping[str, Any], free: str) -> bool:
  if r.status != "done":
    return False
  return all(r.values.get(k) == v for k, v in fix.items() if k != free and k in r.values and _has_ramp(r.values))


def _mean(xs: Sequence[float]) -> float:
  return sum(xs) / len(xs)


def model_size_series(rows: Sequence[Row], axes: Mapping[str, Sequence[Any]], metric: str = "recall",
                      model_params: Mapping[str, float] | None = None) -> dict[str, list[tuple[float, float]]]:
  """{method: [(x, score)]}: x is the parameter count if known, else the model's index on the axis."""
  models = list(axes.get("model", []))
  fix = default_fix(axes)
  acc: dict[str, dict[Any, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in rows:
    s = r.score(metric)
    if s is not None and _keep(r, fix, "model"):
      acc[method_label(r.values)][r.values.get("model")].append(s)
  xpos = lambda m: float(model_params[m]) if model_params and m in model_params else float(models.index(m))
  return {meth: sorted((xpos(m), _mean(v)) for m, v in by.items()) for meth, by in acc.items()}


def data_size_series(rows: Sequence[Row], axes: Mapping[str, Sequence[Any]],
                     metric: str = "recall") -> dict[str, dict[str, list[tuple[float, float]]]]:
  """{model: {method: [(RAMP data size, score)]}} over cells with RAMP pre-training."""
  fix = default_fix(axes)
  acc = collections.defaultdict(lambda: collections.defaultdict(lambda: collections.defaultdict(list)))
  for r in rows:
    s = r.score(metric)
    if s is not None and _has_ramp(r.values) and "data_size" in r.values and _keep(r, fix, "data_size"):
      acc[str(r.values.get("model", "all"))][method_label(r.values)][float(r.values["data_size"])].append(s)
  return {m: {meth: sorted((x, _mean(v)) for x, v in by.items()) for meth, by in d.items()} for m, d in acc.items()}


def curriculum_series(rows: Sequence[Row], axes: Mapping[str, Sequence[Any]],
                      metric: str = "recall") -> tuple[list[str], dict[str, list[float | None]], bool]:
  """(x labels, {"curriculum"|"random mix": scores}, per_mask) at the largest model and data size.

  Per mask count when the summaries have `*_mask<k>` sets; otherwise per eval set (per_mask False).
  """
  fix = {k: v for k, v in default_fix(axes).items() if k != "curriculum"}
  if axes.get("model"):
    fix["model"] = axes["model"][-1]
  acc: dict[bool, dict[str, list[float]]] = {True: collections.defaultdict(list), False: collections.defaultdict(list)}
  per_mask = False
  chosen = [r for r in rows if r.status == "done" and _has_ramp(r.values) and "curriculum" in r.values
            and all(r.values.get(k) == v for k, v in fix.items() if k in r.values)]
  per_mask = any(r.mask_scores(metric) for r in chosen)
  for r in chosen:
    scores = ({str(k): v for k, v in r.mask_scores(metric).items()} if per_mask
              else {k: v[metric] for k, v in r.summary.items()})
    for k, v in scores.items():
      acc[bool(r.values["curriculum"])][k].append(v)
  keys = sorted(set(acc[True]) | set(acc[False]), key=lambda k: (len(k), k))
  series = {label: [(_mean(acc[flag][k]) if acc[flag][k] else None) for k in keys]
            for label, flag in (("curriculum", True), ("random mix", False))}
  return keys, series, per_mask


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
  paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
  fig.savefig(paths[0], dpi=120, bbox_inches="tight")
  fig.savefig(paths[1], bbox_inches="tight")
  return paths


def _human(x: float) -> str:
  for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
    if x >= div:
      return f"{x / div:g}{unit}"
  return f"{x:g}"


def _log_ticks(ax, xs: Sequence[float], fmt) -> None:
  """Log x axis labelled at the measured points only (matplotlib's minor log labels overlap when
  the points span less than a decade)."""
  from matplotlib.ticker import NullFormatter, NullLocator  # pylint: disable=g-import-not-at-top
  xs = sorted(set(xs))
  ax.set_xscale("log")
  ax.xaxis.set_minor_locator(NullLocator())
  ax.xaxis.set_minor_formatter(NullFormatter())
  ax.set_xticks(xs, [fmt(x) for x in xs])


def draw_all(rows: Sequence[Row], axes: Mapping[str, Sequence[Any]], out_dir: str | Path, metric: str = "recall",
             model_params: Mapping[str, float] | None = None) -> list[Path]:
  """Writes the three figures (those whose axes exist and have data); returns the file paths."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  (optional dependency)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  ylabel = f"{metric} ×100"
  written: list[Path] = []

  ms = model_size_series(rows, axes, metric, model_params) if "model" in axes else {}
  if ms:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for meth, pts in sorted(ms.items()):
      ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=meth)
    if model_params and all(m in model_params for m in axes["model"]):
      _log_ticks(ax, [p[0] for pts in ms.values() for p in pts], _human)
      ax.set_xlabel("parameters")
    else:
      ax.set_xticks(range(len(axes["model"])), [str(m) for m in axes["model"]])
      ax.set_xlabel("model")
    ax.set_ylabel(ylabel)
    ax.set_title("score vs model size")
    ax.legend(fontsize=8)
    written += _save(fig, out_dir, "scaling_model_size")
  else:
    logging.info("no data for the model-size plot")

  ds = data_size_series(rows, axes, metric) if "data_size" in axes else {}
  if ds:
    fig = Figure(figsize=(5 * len(ds), 4))
    for i, (model, by_method) in enumerate(sorted(ds.items(), key=lambda kv: str(kv[0]))):
      ax = fig.add_subplot(1, len(ds), i + 1)
      for meth, pts in sorted(by_method.items()):
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=meth)
      _log_ticks(ax, [p[0] for pts in by_method.values() for p in pts], lambda x: f"{x:g}")
      ax.set_xlabel("RAMP examples")
      ax.set_ylabel(ylabel)
      ax.set_title(f"score vs RAMP data size ({model})")
      ax.legend(fontsize=8)
    written += _save(fig, out_dir, "scaling_ramp_data")
  else:
    logging.info("no data for the RAMP data-size plot")

  keys, series, per_mask = curriculum_series(rows, axes, metric) if "curriculum" in axes else ([], {}, False)
  if keys:
    fig = Figure(figsize=(max(5, 1.2 * len(keys)), 4))
    ax = fig.add_subplot()
    width = 0.38
    for j, (label, vals) in enumerate(series.items()):
      xs = [i + (j - 0.5) * width for i, v in enumerate(vals) if v is not None]
      ax.bar(xs, [100 * v for v in vals if v is not None], width, label=label)
    ax.set_xticks(range(len(keys)), keys)
    ax.set_xlabel("masks per example" if per_mask else "eval set (no per-mask-count sets in the summaries)")
    ax.set_ylabel(ylabel)
    fixed = ", ".join(str(v) for k, v in default_fix(axes).items() if k != "curriculum")
    model = axes["model"][-1] if axes.get("model") else ""
    ax.set_title("curriculum vs random mix" + (f" ({', '.join(x for x in (str(model), fixed) if x)})"
                                               if model or fixed else ""))
    ax.legend(fontsize=8)
    written += _save(fig, out_dir, "curriculum_vs_mix")
  else:
    logging.info("no data for the curriculum plot")
  return written
