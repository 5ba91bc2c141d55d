"""Sweep configs -> cells: the cross product of the axes, each with a run directory and commands.

Why templates instead of code: the entry points (train_sft, train_rl, evaluate) and their flags are
still moving; a sweep config holds the command lines as `str.format` templates, so a renamed flag is
a one-line config edit. A config is a Python file defining `SWEEP = dict(...)`:

  axes      {axis: [values]} in plot order (model, pretrain, posttrain, data_size, curriculum, ...)
  exclude   [{axis: value | [values]}]: cells matching every key of one entry are dropped
  base      {name: value} available to every template (also `python`, `sweep`, `cell`, `run_dir`, `root`);
            string values may use {root}, {python}, {sweep} and earlier base entries ({{ }}: a brace)
  derived   {name: {axis: {axis_value: template}}}: per-cell variables, e.g. the init checkpoint
  stages    [{name, cmd, when: {axis: value | [values]}}]: commands run in order if `when` matches
  setup     [{name, cmd}]: run once before any cell (build the world, index, RAMP sets); templates see
            base, python, sweep and root
  summary   path of the eval summary relative to run_dir (default eval/summary.json)
  root      where local run directories go (default runs/sweeps/<name>)
  model_params {model: parameter count}: the x axis of "score vs model size" (optional)
  tpu       {accelerator, zone, project, name, spot}: defaults for --mode=emit (optional)
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import re
import string
from pathlib import Path
from typing import Any, Mapping

DEFAULT_SUMMARY = "eval/summary.json"


class SweepConfigError(ValueError):
  """A sweep file with a missing/ill-typed key or a template naming an unknown variable."""


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  cmd: str


@dataclasses.dataclass(frozen=True)
class Cell:
  name: str
  values: dict[str, Any]  # axis -> value
  run_dir: str
  stages: tuple[Stage, ...]
  summary: str            # path of the eval summary.json


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  axes: dict[str, list[Any]]
  exclude: tuple[dict[str, Any], ...]
  base: dict[str, Any]
  derived: dict[str, dict[str, dict[Any, str]]]
  stages: tuple[dict[str, Any], ...]
  summary: str
  root: str
  model_params: dict[str, float]
  tpu: dict[str, Any]
  source: str  # the config file
  setup: tuple[dict[str, Any], ...] = ()


def load_sweep(path: str | Path) -> Sweep:
  """Imports a sweep config file and checks its structure."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"sweep config not found: {path}")
  spec = importlib.util.spec_from_file_location(f"_sweep_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not isinstance(getattr(module, "SWEEP", None), Mapping):
    raise SweepConfigError(f"{path}: must define SWEEP = dict(...)")
  return sweep_from_dict(module.SWEEP, str(path))


def sweep_from_dict(d: Mapping[str, Any], source: str = "<dict>") -> Sweep:
  known = {"name", "axes", "exclude", "base", "derived", "stages", "summary", "root", "model_params", "tpu",
           "setup"}
  unknown = set(d) - known
  if unknown:
    raise SweepConfigError(f"{source}: unknown SWEEP keys {sorted(unknown)} (known: {sorted(known)})")
  axes = d.get("axes")
  if not isinstance(axes, Mapping) or not axes:
    raise SweepConfigError(f"{source}: SWEEP['axes'] must be a non-empty dict of lists")
  for k, v in axes.items():
    if not isinstance(v, (list, tuple)) or not v:
      raise SweepConfigError(f"{source}: axis '{k}' must be a non-empty list, got {v!r}")
  stages = d.get("stages")
  if not isinstance(stages, (list, tuple)) or not stages:
    raise SweepConfigError(f"{source}: SWEEP['stages'] must be a non-empty list of dict(name, cmd, when)")
  for i, st in enumerate(stages):
    if not isinstance(st, Mapping) or not isinstance(st.get("name"), str) or not isinstance(st.get("cmd"), str):
      raise SweepConfigError(f"{source}: stages[{i}] needs string 'name' and 'cmd', got {st!r}")
    for ax in st.get("when", {}):
      if ax not in axes:
        raise SweepConfigError(f"{source}: stages[{i}] ('{st['name']}') 'when' names unknown axis '{ax}'")
  for i, st in enumerate(d.get("setup", ())):
    if not isinstance(st, Mapping) or not isinstance(st.get("name"), str) or not isinstance(st.get("cmd"), str):
      raise SweepConfigError(f"{source}: setup[{i}] needs string 'name' and 'cmd', got {st!r}")
  for i, ex in enumerate(d.get("exclude", ())):
    for ax in ex:
      if ax not in axes:
        raise SweepConfigError(f"{source}: exclude[{i}] names unknown axis '{ax}'")
  name = str(d.get("name") or Path(source).stem)
  return Sweep(name=name, axes={k: list(v) for k, v in axes.items()},
               exclude=tuple(dict(e) for e in d.get("exclude", ())), base=dict(d.get("base", {})),
               derived={k: dict(v) for k, v in d.get("derived", {}).items()},
               stages=tuple(dict(s) for s in stages), summary=str(d.get("summary", DEFAULT_SUMMARY)),
               root=str(d.get("root", f"runs/sweeps/{name}")), model_params=dict(d.get("model_params", {})),
               tpu=dict(d.get("tpu", {})), source=source, setup=tuple(dict(s) for s in d.get("setup", ())))


def _matches(values: Mapping[str, Any], cond: Mapping[str, Any]) -> bool:
  for ax, want in cond.items():
    wants = want if isinstance(want, (list, tuple, set)) else [want]
    if values[ax] not in wants:
      return False
  return True


def _fmt_value(v: Any) -> str:
  return str(v).lower() if isinstance(v, bool) else str(v)


def cell_name(values: Mapping[str, Any]) -> str:
  """`model-tiny__pretrain-none__...`: readable, unique per cell, safe as a folder name."""
  parts = [f"{k}-{_fmt_value(v)}" for k, v in values.items()]
  return re.sub(r"[^A-Za-z0-9_.=-]", "_", "__".join(parts))


def _format(template: str, variables: Mapping[str, Any], where: str) -> str:
  names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
  missing = sorted(n for n in names if n.split(".")[0].split("[")[0] not in variables)
  if missing:
    raise SweepConfigError(f"{where}: template names unknown variable(s) {missing}; known: {sorted(variables)}")
  return template.format_map({k: _fmt_value(v) for k, v in variables.items()})


def _base_vars(sweep: Sweep, root: str, python: str) -> dict[str, Any]:
  """base entries with {root}/{python}/{sweep} resolved, plus those three."""
  top = {"python": python, "sweep": sweep.name, "root": root}
  base: dict[str, Any] = {}
  for k, v in sweep.base.items():  # in order: an entry may use the ones above it
    base[k] = _format(v, {**base, **top}, f"{sweep.source}: base '{k}'") if isinstance(v, str) else v
  return {**base, **top}


def expand_setup(sweep: Sweep, root: str | None = None, python: str = "python") -> list[Stage]:
  """The once-per-sweep commands, formatted."""
  root = (root or sweep.root).rstrip("/")
  variables = _base_vars(sweep, root, python)
  return [Stage(st["name"], _format(st["cmd"], variables, f"{sweep.source}: setup '{st['name']}'"))
          for st in sweep.setup]


def expand(sweep: Sweep, root: str | None = None, python: str = "python") -> list[Cell]:
  """All non-excluded cells in axis order; `root` overrides the config's (e.g. a gs:// path)."""
  root = (root or sweep.root).rstrip("/")
  cells = []
  base = _base_vars(sweep, root, python)
  axis_names = list(sweep.axes)
  for combo in itertools.product(*sweep.axes.values()):
    values = dict(zip(axis_names, combo))
    if any(_matches(values, ex) for ex in sweep.exclude):
      continue
    name = cell_name(values)
    run_dir = f"{root}/{name}"
    variables: dict[str, Any] = {**base, **values, "cell": name, "run_dir": run_dir}
    for dname, by_axis in sweep.derived.items():
      for ax, table in by_axis.items():
        if ax not in values:
          raise SweepConfigError(f"{sweep.source}: derived '{dname}' keys on unknown axis '{ax}'")
        if values[ax] not in table:
          raise SweepConfigError(f"{sweep.source}: derived '{dname}' has no entry for {ax}={values[ax]!r}")
        variables[dname] = _format(table[values[ax]], variables, f"{sweep.source}: derived '{dname}'")
    stages = tuple(
        Stage(st["name"], _format(st["cmd"], variables, f"{sweep.source}: stage '{st['name']}'"))
        for st in sweep.stages if _matches(values, st.get("when", {})))
    names = [st.name for st in stages]
    if len(set(names)) != len(names):
      raise SweepConfigError(f"{sweep.source}: cell {name} matches several stages of one name: {names}")
    cells.append(Cell(name, values, run_dir, stages, f"{run_dir}/{sweep.summary}"))
  if not cells:
    raise SweepConfigError(f"{sweep.source}: every cell is excluded")
  return cells
