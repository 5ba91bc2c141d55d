r"""Self-evolving distillation (MaskSearch Sec. 3.2): train a teacher on the accepted traces, let it
generate a new, larger trace set, keep what the judge accepts, repeat.

  round 0   the seed teacher (e.g. a large model behind the multi-agent loop) answers the first
            `initial_items` tasks; accepted traces -> data set D0
  round r   teacher_r = train_fn(D_{r-1}); it answers the first ceil(initial_items * growth^r)
            tasks (a larger set each round; the task order is shuffled once with `seed`);
            accepted traces -> D_r (with `accumulate`, D_r also keeps earlier traces of tasks the
            new teacher did not get right: one trace per task, the newest accepted one)
Every round appends one line to WORKDIR/rounds.jsonl (tasks attempted, accepted, acceptance rate,
data-set size, checkpoint, timings) and writes WORKDIR/round_<r>/traces.jsonl. A rerun skips the
rounds already recorded whose files exist, so an interrupted loop resumes.

Pieces are plain callables so the loop is testable without a model:
  TrainFn  (traces_path, round) -> checkpoint dir     default: `sft_train_fn` (train/sft.train)
  Source   (records, round, checkpoint|None) -> (accepted traces, stats)
           `multi_agent_source`: the agents' loop with a generator made from the checkpoint;
           `policy_source`: the checkpoint as a search agent through the rollout sampler + tools;
           `oracle_source`: the embedded world's scripted oracle (a seed teacher without a model).

  python -m masksearch_jax.agents.self_evolve --questions=world/questions_train.jsonl \
      --corpus=world/corpus.jsonl --seed_teacher=oracle --teacher=policy --rounds=2 \
      --sft_config=configs/slices/cpu.py --sft_set=model=tiny,steps=200,tokenizer=world/tokenizer
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from absl import logging

from masksearch_jax.agents import llm
from masksearch_jax.agents import multi_agent as ma
from masksearch_jax.data import traces

TrainFn = Callable[[str, int], str]
Source = Callable[[Sequence[dict], int, "str | None"], "tuple[list[traces.Trace], dict]"]
ROUNDS_FILE = "rounds.jsonl"


@dataclasses.dataclass(frozen=True)
class EvolveConfig:
  workdir: str = "runs/self_evolve"
  rounds: int = 2                 # teacher trainings after the seed round (the paper's N)
  initial_items: int = 100        # tasks of the seed round (0 = all)
  growth: float = 2.0             # tasks attempted grow by this factor per round
  accumulate: bool = True         # keep earlier accepted traces of tasks the new teacher failed
  shuffle: bool = True            # shuffle the task order once (with `seed`) before round 0
  seed: int = 0
  initial_checkpoint: str = ""    # the seed teacher's checkpoint, if the source needs one

  def __post_init__(self):
    if self.rounds < 0 or self.initial_items < 0 or self.growth < 1.0:
      raise ValueError(f"EvolveConfig: rounds={self.rounds} and initial_items="
                       f"{self.initial_items} must be >= 0 and growth={self.growth} >= 1")


def items_for_round(n_total: int, cfg: EvolveConfig, r: int) -> int:
  first = cfg.initial_items or n_total
  return min(n_total, math.ceil(first * cfg.growth ** r))


def _key(t: traces.Trace, fallback: int) -> str:
  return str(t.meta.get("id", f"#{fallback}"))


def _read_rounds(path: Path) -> dict[int, dict]:
  out = {}
  if path.exists():
    for line in path.read_text().splitlines():
      if line.strip():
        rec = json.loads(line)
        out[int(rec["round"])] = rec
  return out


def run(records: Sequence[dict], source: Source, train_fn: TrainFn,
        cfg: EvolveConfig = EvolveConfig()) -> list[dict]:
  """Runs (or resumes) rounds 0..cfg.rounds; returns the per-round records."""
  if not records:
    raise ValueError("self_evolve.run: no task records")
  wd = Path(cfg.workdir)
  wd.mkdir(parents=True, exist_ok=True)
  log_path = wd / ROUNDS_FILE
  done = _read_rounds(log_path)
  order = list(records)
  if cfg.shuffle:
    random.Random(cfg.seed).shuffle(order)
  dataset: dict[str, traces.Trace] = {}
  ckpt: str | None = cfg.initial_checkpoint or None
  out = []
  for r in range(cfg.rounds + 1):
    path = wd / f"round_{r}" / "traces.jsonl"
    if r in done and path.exists():                      # resume: reuse the finished round
      rec = done[r]
      dataset = {_key(t, i): t for i, t in enumerate(traces.read_jsonl(path))}
      ckpt = rec.get("checkpoint") or ckpt
      logging.info("round %d already done (%d traces); skipping", r, len(dataset))
      out.append(rec)
      continue
    t0 = time.perf_counter()
    if r > 0:
      prev = wd / f"round_{r - 1}" / "traces.jsonl"
      if not dataset:
        raise RuntimeError(f"round {r}: round {r - 1} accepted no trace ({prev}); nothing to "
                           "train the teacher on")
      ckpt = train_fn(str(prev), r)
      if not ckpt:
        raise RuntimeError(f"round {r}: train_fn returned no checkpoint for {prev}")
    t1 = time.perf_counter()
    n = items_for_round(len(order), cfg, r)
    accepted, stats = source(order[:n], r, ckpt)
    t2 = time.perf_counter()
    new = {_key(t, i): t for i, t in enumerate(accepted)}
    added = len(set(new) - set(dataset))
    dataset = {**dataset, **new} if cfg.accumulate else new
    path.parent.mkdir(parents=True, exist_ok=True)
    traces.write_jsonl(path, dataset.values())
    rec = {"round": r, "checkpoint": ckpt, "attempted": n, "accepted": len(accepted),
           "acceptance_rate": len(accepted) / n if n else 0.0, "new_tasks": added,
           "dataset_size": len(dataset), "traces": str(path),
           "train_s": round(t1 - t0, 3), "generate_s": round(t2 - t1, 3),
           "stats": {k: v for k, v in stats.items() if k != "accepted"}}
    with open(log_path, "a", encoding="utf-8") as f:
      f.write(json.dumps(rec) + "\n")
    logging.info("round %d: %d/%d accepted (%.1f%%), data set %d traces", r, len(accepted), n,
                 100 * rec["acceptance_rate"], len(dataset))
    out.append(rec)
  return out


# ------------------------------------------------------------------------------- sources
def multi_agent_source(make_generator: Callable[[str | None, int], llm.Generator], retriever,
                       agent_cfg: ma.AgentConfig = ma.AgentConfig(), judge=None,
                       batch_size: int = 16) -> Source:
  """Each round's teacher plays every agent role: make_generator(checkpoint, round)."""

  def source(records, r, ckpt):
    accepted, _, stats = ma.generate(records, make_generator(ckpt, r), retriever, agent_cfg,
                                     judge=judge, batch_size=batch_size)
    return accepted, stats

  return source


def policy_source(retriever, agent_cfg: ma.AgentConfig = ma.AgentConfig(), judge=None, *,
                  max_len: int = 4096, max_new_tokens: int = 1024, max_turns: int = 5,
                  temperature: float = 1.0, batch_size: int = 8, param_dtype: str = "bfloat16",
                  compute_dtype: str = "bfloat16") -> Source:
  """The checkpoint as a search agent: prompt -> rollout with tools -> trace -> judge."""

  def source(records, r, ckpt):
    if not ckpt:
      raise ValueError(f"policy_source: round {r} has no checkpoint (the seed round needs "
                       "multi_agent_source or EvolveConfig.initial_checkpoint)")
    import jax.numpy as jnp
    from masksearch_jax import tokenizer as tok_lib
    from masksearch_jax.checkpoint import hf
    from masksearch_jax.rl import collect
    from masksearch_jax.rollout import sampler as sampler_lib
    from masksearch_jax.rollout import types as T
    mcfg, params = hf.load_hf(ckpt, jnp.dtype(param_dtype))
    tok = tok_lib.load(ckpt)
    rcfg = T.RolloutConfig(max_len=max_len, max_new_tokens=max_new_tokens,
                           eos_ids=tuple(tok_lib.stop_ids(tok)), use_tools=True,
                           max_turns=max_turns, top_k_docs=agent_cfg.top_k,
                           pad_id=tok_lib.pad_id(tok))
    dt = jnp.dtype(compute_dtype)
    sampler = sampler_lib.Sampler(mcfg, tok, T.SamplingConfig(temperature=temperature), rcfg,
                                  retriever=retriever, compute_dtype=dt, cache_dtype=dt)
    tasks = [ma.task_from_record(rec, i, agent_cfg.protocol) for i, rec in enumerate(records)]
    accepted, reasons = [], {}
    for i in range(0, len(tasks), batch_size):
      chunk = tasks[i:i + batch_size]
      prompts = [tok_lib.chat_text(tok, [{"role": "user", "content": t.prompt}], True)
                 for t in chunk]
      prompts += [prompts[-1]] * (batch_size - len(prompts))      # one compiled batch size
      ro = sampler.generate(params, prompts, seed=1000 * r + i)
      for j, t in enumerate(chunk):
        text = collect.response_text(tok, ro.texts[j]).strip()
        trace = traces.Trace(t.prompt, text, list(t.gold.as_list),
                             {"id": t.id, "type": t.kind, "source": f"teacher_round{r}",
                              "num_searches": int(ro.num_searches[j]),
                              "finish_reason": ro.finish_reason[j]})
        ok, reason, info = ma.judge_trace(trace, t, agent_cfg, judge)
        trace.meta.update(info)
        if ok:
          accepted.append(trace)
        else:
          key = reason.split(":")[0]
          reasons[key] = reasons.get(key, 0) + 1
    return accepted, {"items": len(tasks), "accepted": len(accepted), "rejected": reasons,
                      "acceptance_rate": len(accepted) / len(tasks) if tasks else 0.0}

  return source


def oracle_source(retriever, agent_cfg: ma.AgentConfig = ma.AgentConfig()) -> Source:
  """The embedded world's scripted oracle (agents/oracle.py) as the seed teacher: correct traces
  without any model, passed through the same judge as every other round."""

  def source(records, r, ckpt):
    from masksearch_jax.agents import oracle
    got, _ = oracle.generate(records, retriever, oracle.OracleConfig(k=agent_cfg.top_k,
                                                                     protocol=agent_cfg.protocol))
    tasks = {str(rec.get("id", i)): ma.task_from_record(rec, i, agent_cfg.protocol)
             for i, rec in enumerate(records)}
    accepted = [t for t in got if str(t.meta.get("id")) in tasks
                and ma.judge_trace(t, tasks[str(t.meta.get("id"))], agent_cfg)[0]]
    return accepted, {"items": len(records), "accepted": len(accepted),
                      "acceptance_rate": len(accepted) / len(records) if records else 0.0}

  return source


def staged_source(first: Source, later: Source) -> Source:
  """`first` for the seed round, `later` for the trained teachers."""
  return lambda records, r, ckpt: (first if r == 0 else later)(records, r, ckpt)


# ------------------------------------------------------------------------------- training
def sft_train_fn(base_cfg: Any, workdir: str, devices=None) -> TrainFn:
  """Trains with `train.sft.train` on the round's traces; returns its exported HF directory.

  base_cfg: a `train.config.TrainConfig` (model, init_from_hf, steps, batch, ...); its data,
  workdir and export settings are replaced per round, so each teacher starts from the same init.
  """

  def train_fn(traces_path: str, r: int) -> str:
    from masksearch_jax.train import sft
    cfg = base_cfg.replace(data=(traces_path,), workdir=f"{workdir}/round_{r}/sft",
                           export_hf_at_end=True)
    result = sft.train(cfg, devices=devices)
    export = result.get("export") or (f"{cfg.workdir}/hf" if Path(f"{cfg.workdir}/hf").is_dir()
                                      else None)
    if not export:
      raise RuntimeError(f"round {r}: SFT in {cfg.workdir} exported no HF checkpoint")
    return str(export)

  return train_fn


# ------------------------------------------------------------------------------- CLI
_FLAGS = (  # (kind, name, default, help); the agents' and search flags come from generate_traces
    ("string", "workdir", "runs/self_evolve", "rounds.jsonl and round_<r>/ (traces, SFT run)."),
    ("integer", "rounds", 2, "Teacher trainings after the seed round."),
    ("integer", "initial_items", 100, "Tasks of the seed round (0 = all)."),
    ("float", "growth", 2.0, "Tasks attempted grow by this factor per round."),
    ("bool", "accumulate", True, "Keep earlier accepted traces of tasks a new teacher failed."),
    ("integer", "seed", 0, "Task order (shuffled once)."),
    ("string", "seed_teacher", "generator", "Round 0: 'generator' (the multi-agent loop with "
     "--generator) or 'oracle' (the embedded world's scripted oracle; world questions only)."),
    ("string", "teacher", "policy", "Rounds >= 1: 'policy' (the trained model searches with "
     "tools) or 'multi_agent' (the trained model plays every agent role)."),
    ("string", "sft_config", "", "SFT base config file (configs/...); see train_sft --help."),
    ("list", "sft_overlay", [], "More SFT config files, in order."),
    ("list", "sft_set", [], "SFT field overrides, e.g. steps=200,batch_size=16,model=1_5b."),
    ("integer", "policy_max_len", 4096, "policy teacher: token buffer per rollout."),
    ("integer", "policy_max_new_tokens", 1024, "policy teacher: new tokens per rollout."),
    ("float", "policy_temperature", 1.0, "policy teacher: sampling temperature."),
    ("integer", "policy_batch_size", 8, "policy teacher: rollouts per sampler call."),
)


def main(argv: Sequence[str]) -> None:
  from absl import app, flags
  from masksearch_jax.agents import generate_traces as gt
  from masksearch_jax.train import config as config_lib
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  if not fv.questions:
    raise app.UsageError("--questions is required")
  records = gt.load_records(fv.questions, fv.limit)
  retriever = gt.build_retriever(fv.index_dir, fv.corpus, fv.retriever_url)
  acfg = gt.agent_config(fv)
  judge = gt.make_judge(fv)
  if fv.seed_teacher == "oracle":
    first = oracle_source(retriever, acfg)
  elif fv.seed_teacher == "generator":
    if not fv.generator:
      raise app.UsageError("--seed_teacher=generator needs --generator")
    gen = gt.make_generator(fv.generator, fv)
    first = multi_agent_source(lambda ckpt, r: gen, retriever, acfg, judge, fv.batch_size)
  else:
    raise app.UsageError(f"--seed_teacher={fv.seed_teacher!r}: use generator or oracle")
  if fv.teacher == "policy":
    later = policy_source(retriever, acfg, judge, max_len=fv.policy_max_len,
                          max_new_tokens=fv.policy_max_new_tokens,
                          max_turns=fv.max_observer_turns, temperature=fv.policy_temperature,
                          batch_size=fv.policy_batch_size, param_dtype=fv.param_dtype,
                          compute_dtype=fv.compute_dtype)
  elif fv.teacher == "multi_agent":
    later = multi_agent_source(lambda ckpt, r: gt.make_generator(f"hf:{ckpt}", fv), retriever,
                               acfg, judge, fv.batch_size)
  else:
    raise app.UsageError(f"--teacher={fv.teacher!r}: use policy or multi_agent")
  overrides = {}
  for kv in fv.sft_set:
    key, sep, value = kv.partition("=")
    if not sep:
      raise app.UsageError(f"--sft_set entry {kv!r} is not field=value")
    overrides[key.strip()] = value.strip()
  base = config_lib.load_config(fv.sft_config, *fv.sft_overlay, **overrides)
  cfg = EvolveConfig(workdir=fv.workdir, rounds=fv.rounds, initial_items=fv.initial_items,
                     growth=fv.growth, accumulate=fv.accumulate, seed=fv.seed)
  for rec in run(records, staged_source(first, later), sft_train_fn(base, fv.workdir), cfg):
    print(json.dumps({k: rec[k] for k in ("round", "attempted", "accepted", "acceptance_rate",
                                          "dataset_size", "checkpoint")}))


def define_flags(fv=None) -> None:
  from absl import flags
  from masksearch_jax.agents import generate_traces as gt
  fv = fv or flags.FLAGS
  gt.define_flags(fv)
  for kind, name, default, help_ in _FLAGS:
    getattr(flags, f"DEFINE_{kind}")(name, default, help_, flag_values=fv)


if __name__ == "__main__":
  from absl import app
  define_flags()
  app.run(main)
