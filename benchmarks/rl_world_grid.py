r"""Runs several `rl_world.py` variants side by side on one accelerator and prints one table.

Variants that share every flag deciding the world and the SFT model (model, slice, SFT steps/lr/
batch/length, seed, teacher rewrites, RL share, world scale) share one `--shared` directory: the
first variant of each such group builds the world and trains SFT, the others start when that SFT
export exists. Each process gets `--grid_mem_fraction` of the device memory.

  python benchmarks/rl_world_grid.py --grid_workdir=/tmp/grid --grid_parallel=4 \
    --grid_common="--slice=gpu1 --model=tiny_4l --sft_steps=300 --eval_n=198 --prompts_per_step=16" \
    --grid_variants="A0: --train_seed=0 --rl_lr=1e-4; A1: --train_seed=1 --rl_lr=1e-4"
  python benchmarks/rl_world_grid.py ... --grid_dry_run       # the plan only

Writes GRID_WORKDIR/<name>/ (each variant's rl_world workdir and log), GRID_WORKDIR/grid.json and
GRID_WORKDIR/grid.md (the table: (a), (b), (c), per hop type, and the diagnostics when present).
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                      # run from a checkout, uninstalled
from benchmarks import rl_results  # noqa: E402

_WORKDIR = flags.DEFINE_string("grid_workdir", "/tmp/rl_world_grid", "Everything goes here.")
_COMMON = flags.DEFINE_string("grid_common", "", "rl_world.py flags every variant gets.")
_VARIANTS = flags.DEFINE_string("grid_variants", "", "'NAME: --flag=v ...; NAME2: ...' (flags added "
                                "to --grid_common; a variant's flag wins).")
_PARALLEL = flags.DEFINE_integer("grid_parallel", 4, "Variants running at once.")
_MEM = flags.DEFINE_float("grid_mem_fraction", 0.2, "XLA_PYTHON_CLIENT_MEM_FRACTION per process.")
_TIMEOUT = flags.DEFINE_integer("grid_timeout_s", 0, "Stop waiting (and kill what runs) after this "
                                "many seconds; 0: no limit. Finished variants are still tabled.")
_DRY = flags.DEFINE_bool("grid_dry_run", False, "Print the plan and exit.")

# rl_world.py flags that decide the world, the traces or the SFT model: equal values share an SFT.
SFT_KEYS = ("slice", "model", "sft_steps", "sft_lr", "sft_batch", "sft_seq_len", "train_seed",
            "teacher_shortcut", "teacher_echo", "rl_share", "world_scale")


def parse_flags(text: str) -> dict[str, str]:
  """'--a=1 --b=x' -> {'a': '1', 'b': 'x'} (a later value wins). Every flag needs '=value'
  (booleans too: --dynamic_sampling=false) so that no name is guessed at."""
  out: dict[str, str] = {}
  for tok in shlex.split(text):
    name, eq, value = tok[2:].partition("=") if tok.startswith("--") else ("", "", "")
    if not name or not eq:
      raise ValueError(f"expected --flag=value, got {tok!r} in {text!r}")
    out[name] = value
  return out


def parse_variants(common: str, variants: str) -> dict[str, dict[str, str]]:
  """{name: merged flags}; names must be unique and path-safe."""
  base, out = parse_flags(common), {}
  for part in filter(None, (p.strip() for p in variants.split(";"))):
    name, sep, rest = part.partition(":")
    name = name.strip()
    if not sep or not name or not name.replace("_", "").replace("-", "").isalnum():
      raise ValueError(f"variant {part!r}: expected 'NAME: --flag=v ...' with a plain name")
    if name in out:
      raise ValueError(f"variant name {name!r} given twice")
    out[name] = {**base, **parse_flags(rest)}
  if not out:
    raise ValueError("--grid_variants is empty")
  return out


def sft_group(fl: dict[str, str]) -> str:
  """A short stable id of the flags that decide the SFT model."""
  key = json.dumps({k: fl.get(k) for k in SFT_KEYS}, sort_keys=True)
  return "sft_" + hashlib.sha1(key.encode()).hexdigest()[:10]


def plan(variants: dict[str, dict[str, str]], workdir: Path) -> list[dict]:
  """One entry per variant: name, argv, shared dir, whether it builds its group's SFT."""
  leaders: set[str] = set()
  out = []
  for name, fl in variants.items():
    group = sft_group(fl)
    fl = {**fl, "workdir": str(workdir / name), "shared": str(workdir / group)}
    argv = [sys.executable, str(ROOT / "benchmarks" / "rl_world.py")]
    argv += [f"--{k}={v}" for k, v in fl.items()]
    out.append({"name": name, "argv": argv, "shared": fl["shared"], "leader": group not in leaders,
                "sft_done": str(Path(fl["shared"]) / "sft" / "hf" / "config.json")})
    leaders.add(group)
  return out


def run_all(entries: list[dict], workdir: Path, parallel: int, mem: float, timeout_s: int) -> None:
  """Starts variants as slots free up. A variant whose SFT is not built yet waits while another
  variant of its group builds it; if that one ends without it, the next one builds it."""
  env = {**os.environ, "XLA_PYTHON_CLIENT_MEM_FRACTION": str(mem)}
  waiting, running, building, t0 = list(entries), {}, {}, time.time()
  while waiting or running:
    for name, (proc, log, e) in list(running.items()):
      if proc.poll() is not None:
        log.close()
        print(f"[grid] {name} finished rc={proc.returncode} after {time.time() - t0:.0f}s",
              flush=True)
        del running[name]
        if building.get(e["shared"]) == name:
          del building[e["shared"]]
    for e in list(waiting):
      if len(running) >= parallel:
        break
      built = Path(e["sft_done"]).exists()
      if not built and e["shared"] in building:
        continue
      if not built:
        building[e["shared"]] = e["name"]
      waiting.remove(e)
      (workdir / e["name"]).mkdir(parents=True, exist_ok=True)
      log = open(workdir / e["name"] / "log.txt", "w")
      running[e["name"]] = (subprocess.Popen(e["argv"], stdout=log, stderr=subprocess.STDOUT,
                                             env=env, cwd=ROOT), log, e)
      print(f"[grid] started {e['name']}" + ("" if built else " (builds its SFT)"), flush=True)
    if timeout_s and time.time() - t0 > timeout_s:
      for name, (proc, log, _) in running.items():
        proc.kill()
        log.close()
        print(f"[grid] {name} killed at the timeout", flush=True)
      return
    time.sleep(2)


_COLS = (("(a) no search", "a_sft_no_search"), ("(b) SFT", "b_sft_search"),
         ("(c) SFT+DAPO", "c_sft_dapo_search"), ("(b) 1-hop", "b_sft_search_1hop"),
         ("(c) 1-hop", "c_sft_dapo_search_1hop"), ("(b) 2-hop", "b_sft_search_2hop"),
         ("(c) 2-hop", "c_sft_dapo_search_2hop"), ("(b) train prompts", "b_greedy_rl_prompts"),
         ("(c) train prompts", "c_greedy_rl_prompts"))


def _split(e: dict | None) -> str:
  if not e or "answer_retrieved" not in e:
    return "–"
  read = e.get("accuracy_when_retrieved")
  return f"{100 * e['answer_retrieved']:.0f}% / " + ("–" if read is None else f"{100 * read:.0f}%")


def table(results: dict[str, dict | None]) -> str:
  """Markdown: one row per variant, accuracies in %, '–' where a figure is missing."""
  cols = [c for c in _COLS if any(r and c[1] in r for r in results.values())] or list(_COLS[:3])
  split = any(r and "answer_retrieved" in r.get("b_sft_search", {}) for r in results.values())
  extra = ["retrieved / read, (b) → (c)"] if split else []
  lines = ["| variant | " + " | ".join([c[0] for c in cols] + extra) + " | reward first → last |",
           "|---" * (len(cols) + len(extra) + 2) + "|"]
  for name, r in results.items():
    if not r:
      lines.append(f"| {name} | " + " | ".join("–" for _ in cols + extra) + " | did not finish |")
      continue
    cells = [f"{100 * r[k]['accuracy']:.1f}%" if k in r else "–" for _, k in cols]
    if split:                 # search vs reading: answer in the observations / accuracy then
      cells.append(" → ".join(_split(r.get(k)) for k in ("b_sft_search", "c_sft_dapo_search")))
    curve = r.get("rl_curve") or []
    rw = (f"{curve[0]['reward/total']:.3f} → {curve[-1]['reward/total']:.3f}" if curve else "–")
    if r.get("stage") == "final_evals":
      rw += "; stopped during the evaluations after DAPO"
    elif r.get("stage", "complete") != "complete":
      evals = [c for c in curve if "eval/accuracy" in c]
      rw += (f"; stopped in DAPO after step {curve[-1]['step']}" if curve else
             "; stopped before DAPO's first step")
      if evals:
        rw += f" (held-out {100 * evals[-1]['eval/accuracy']:.1f}% at step {evals[-1]['step']})"
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {rw} |")
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> None:
  del argv
  workdir = Path(_WORKDIR.value)
  if _PARALLEL.value < 1 or not 0.0 < _MEM.value <= 1.0:
    raise ValueError(f"--grid_parallel={_PARALLEL.value} must be >= 1 and --grid_mem_fraction="
                     f"{_MEM.value} in (0, 1]")
  entries = plan(parse_variants(_COMMON.value, _VARIANTS.value), workdir)
  for e in entries:
    print(("[build SFT] " if e["leader"] else "[reuse SFT] ") + shlex.join(e["argv"][1:]))
  if _DRY.value:
    return
  workdir.mkdir(parents=True, exist_ok=True)
  run_all(entries, workdir, _PARALLEL.value, _MEM.value, _TIMEOUT.value)
  results = {e["name"]: rl_results.load(workdir / e["name"]) for e in entries}
  (workdir / "grid.json").write_text(json.dumps(results, indent=1))
  md = table(results)
  (workdir / "grid.md").write_text(md)
  print("\n" + md)


if __name__ == "__main__":
  app.run(main)
