"""Every `-m <entry point>` command of the shipped tiny-world sweeps uses only flags that entry point
defines, so a renamed or removed flag fails here rather than minutes into a sweep.

The flag names come from each entry point's own `--helpxml` (absl; the real definitions, however the
module defines them), one subprocess per entry point, run side by side.
"""
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from masksearch_jax.sweep import grid

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ("tiny_world", "tiny_world_gpu", "paper")


def _commands() -> list[tuple[str, str, list[str]]]:
  """(where, module, args) for every `python -m module ...` command of the configs."""
  out = []
  for name in CONFIGS:
    sw = grid.load_sweep(REPO / "configs" / "sweeps" / f"{name}.py")
    stages = [(f"{name} setup {s.name}", s) for s in grid.expand_setup(sw, root="R", python="PY")]
    stages += [(f"{name} {c.name} {s.name}", s) for c in grid.expand(sw, root="R", python="PY") for s in c.stages]
    for where, st in stages:
      argv = shlex.split(st.cmd)
      if argv[:2] == ["PY", "-m"]:
        out.append((where, argv[2], argv[3:]))
  return out


def _flag_names(modules: set[str]) -> dict[str, tuple[set[str], set[str]]]:
  """{module: (flag names, boolean flag names)} from `python -m module --helpxml`."""
  procs = {m: subprocess.Popen([sys.executable, "-m", m, "--helpxml"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for m in sorted(modules)}
  out = {}
  for m, p in procs.items():
    stdout, stderr = p.communicate(timeout=120)
    assert "<AllFlags>" in stdout, f"{m} --helpxml printed no flags:\n{stderr[-2000:]}"
    root = ET.fromstring(stdout)
    names = {f.findtext("name") for f in root.iter("flag")}
    bools = {f.findtext("name") for f in root.iter("flag") if f.findtext("type") == "bool"}
    out[m] = (names, bools)
  return out


def _unknown(args: list[str], names: set[str], bools: set[str]) -> list[str]:
  bad = []
  for a in args:
    if not a.startswith("--"):
      bad.append(a)  # entry points take no positional arguments
      continue
    n = a[2:].split("=", 1)[0]
    if n not in names and not (n.startswith("no") and n[2:] in bools and "=" not in a):
      bad.append(a)
  return bad


def test_unknown_detects_bad_flags():
  names, bools = {"data", "progress", "steps"}, {"progress"}
  assert _unknown(["--data=x", "--noprogress", "--steps=3"], names, bools) == []
  assert _unknown(["--prompts=x", "--nosteps", "--noprogress=1", "stray"], names, bools) == [
      "--prompts=x", "--nosteps", "--noprogress=1", "stray"]


def test_sweep_commands_use_real_flags():
  cmds = _commands()
  modules = {m for _, m, _ in cmds}
  assert {"masksearch_jax.train_sft", "masksearch_jax.train_rl", "masksearch_jax.evaluate",
          "masksearch_jax.data.world", "masksearch_jax.data.build_ramp",
          "masksearch_jax.agents.oracle"} <= modules
  flags = _flag_names(modules)
  problems = [f"{where}: {m} has no flag(s) {bad}" for where, m, args in cmds
              if (bad := _unknown(args, *flags[m]))]
  assert not problems, "\n".join(problems)


def test_gpu_subset_draws_the_three_figures():
  sw = grid.load_sweep(REPO / "configs" / "sweeps" / "tiny_world_gpu.py")
  cells = grid.expand(sw)
  vals = [c.values for c in cells]
  assert len(cells) == 8 and {v["model"] for v in vals} == {"tiny_2l", "tiny_4l"}
  ramp = [v for v in vals if v["pretrain"] == "ramp_sft"]
  assert {v["data_size"] for v in ramp if v["curriculum"]} == {200, 800}  # score vs RAMP data size
  assert {v["curriculum"] for v in ramp if v["data_size"] == 800} == {True, False}  # vs random mix
  assert sum(v["pretrain"] == "none" for v in vals) == 2  # two methods per model size
  assert all(s.name in ("pretrain", "posttrain", "eval") and "train_rl" not in s.cmd for c in cells for s in c.stages)
  full = grid.load_sweep(REPO / "configs" / "sweeps" / "tiny_world.py")
  assert [s["name"] for s in sw.setup] == [s["name"] for s in full.setup if s["name"] != "ramp_rl_data"]
