"""Evaluation runs: a policy + a retriever + eval sets -> per-example JSONL and the summary table.

Generation is the rollout engine's (`rollout.Sampler`), greedy by default, in fixed-size batches
(the last one padded by repeating a prompt) so a run compiles one program per prompt bucket. The
prompt of each mode comes from `eval.baselines`; the agent prompt is `data.traces.question_prompt`
rendered by the tokenizer's chat template — the same bytes SFT traces and RL prompts start with.

Scores (`eval.metrics`, SQuAD normalisation): QA examples take the max over gold answers; RAMP
examples (eval sets of RAMP records, `{query, masks, ...}`) split the answer at ';' and average
the per-mask score (missing spans score 0), as `rl.rewards` does. A response without a closed
`<answer>` predicts "" and scores 0.

Per-example records (`predictions/<set>.jsonl`) carry what the viewer reads too: id, source,
prompt, response (the full trajectory: thoughts, searches, `<information>` blocks, answer), gold,
reward {total = recall, recall, em, f1}; plus question, prediction, queries, searches,
tool_errors, finish_reason, mode.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from absl import logging
import jax.numpy as jnp

from masksearch_jax import tokenizer as tok_lib
from masksearch_jax.data import ramp
from masksearch_jax.eval import baselines, datasets, metrics, report
from masksearch_jax.protocol import DEFAULT
from masksearch_jax.rollout import sampler as sampler_lib
from masksearch_jax.rollout import types as T

PREDICTIONS_DIR = "predictions"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  mode: str = "agent"              # see eval/baselines.py
  batch_size: int = 16             # rows per generate call (padded)
  max_len: int = 2048              # KV buffer per row: prompt + everything generated
  max_new_tokens: int = 512        # policy + tool tokens after the prompt
  max_turns: int = 4               # search calls per question
  top_k_docs: int = 3              # passages per search (and in the rag_pe prompt)
  max_tool_tokens: int = 384       # observation budget per search
  chunk_steps: int = 32
  temperature: float = 0.0         # 0 = greedy
  seed: int = 0
  compute_dtype: str = "float32"   # bfloat16 on accelerators

  def __post_init__(self):
    baselines.spec(self.mode)
    if self.batch_size < 1:
      raise ValueError(f"batch_size={self.batch_size} must be >= 1")


@dataclasses.dataclass
class Policy:
  """What generation needs: model config, params pytree, HF tokenizer."""
  cfg: Any
  params: Any
  tokenizer: Any
  name: str = "policy"


# ---------------------------------------------------------------------------------- eval sets
def _ramp_examples(path: Path, source: str) -> list[datasets.QAExample] | None:
  """RAMP records ({query, masks, ...}, e.g. build_ramp's ramp_k*.jsonl) or None if not RAMP."""
  if path.suffix.lower() != ".jsonl":
    return None
  with path.open(encoding="utf-8") as f:
    first = next((line for line in f if line.strip()), None)
  try:
    rec = json.loads(first) if first else None
  except json.JSONDecodeError:
    return None  # the generic reader reports the bad line
  if not isinstance(rec, dict) or not {"query", "masks"} <= set(rec):
    return None
  out = []
  with path.open(encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise datasets.DatasetFormatError(f"{where}: invalid JSON: {e}") from e
      if not isinstance(rec.get("query"), str) or not isinstance(rec.get("masks"), list) \
          or not rec["masks"]:
        raise datasets.DatasetFormatError(f"{where}: RAMP record needs string 'query' and a "
                                          f"non-empty list 'masks'; found fields {sorted(rec)}")
      q = rec["query"]
      masked = ramp.masked_text(rec) if q.startswith(ramp.instruction()) else q
      out.append(datasets.QAExample(str(rec.get("id", lineno)), masked,
                                    [str(m) for m in rec["masks"]], source,
                                    {"ramp_query": q, "mask_num": rec.get("mask_num")}))
  return out


def load_eval_sets(specs: Sequence[str], limit: int | None = None
                   ) -> dict[str, list[datasets.QAExample]]:
  """`name=path` or `path` specs -> {name: examples}; any QA layout of eval/datasets.py, or RAMP."""
  out: dict[str, list[datasets.QAExample]] = {}
  for s in specs:
    name, p = datasets.parse_eval_spec(s)
    path = Path(p)
    if not path.is_file():
      raise FileNotFoundError(f"eval set {s!r}: file not found: {path}")
    name = name or datasets.default_source(path)
    if name in out:
      raise ValueError(f"eval set name {name!r} given twice; use name=path to tell them apart")
    exs = _ramp_examples(path, name)
    exs = exs if exs is not None else datasets.load_eval_set(path, source=name)
    out[name] = exs[:limit] if limit else exs
  return out


# ------------------------------------------------------------------------------------- scores
def score(prediction: str, ex: datasets.QAExample) -> dict[str, float]:
  """{recall, em, f1} of one prediction (RAMP: mean over masks of the per-span score)."""
  fns = {"recall": metrics.token_recall, "em": metrics.exact_match, "f1": metrics.f1}
  if "ramp_query" in ex.meta:
    spans = ramp.parse_answer(prediction) if prediction else []
    golds = ex.golden_answers
    return {k: sum(fn(spans[i], g) if i < len(spans) else 0.0 for i, g in enumerate(golds))
            / len(golds) for k, fn in fns.items()}
  return {k: fn(prediction, ex.golden_answers) for k, fn in fns.items()}


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """One summary row (eval/report.py convention: fractions, mean searches, n)."""
  if not records:
    raise ValueError("no records to summarize")
  n = len(records)
  row = {m: sum(r["reward"][m] for r in records) / n for m in report.SCORES}
  row["searches"] = sum(r["searches"] for r in records) / n
  row["n"] = float(n)
  return row


# --------------------------------------------------------------------------------- generation
def make_sampler(policy: Policy, cfg: EvalConfig, retriever=None, logits_hook=None
                 ) -> sampler_lib.Sampler:
  """The mode's rollout engine (tools on/off, stop at </answer> without tools); reusable across
  policies of the same shape, since params are passed per call. `logits_hook`: tests only."""
  s = baselines.spec(cfg.mode)
  stops = () if s.use_tools else (DEFAULT.answer_close,)
  tok = policy.tokenizer
  rcfg = T.RolloutConfig(max_len=cfg.max_len, max_new_tokens=cfg.max_new_tokens,
                         chunk_steps=cfg.chunk_steps, eos_ids=tuple(tok_lib.stop_ids(tok)),
                         stop_strings=stops, use_tools=s.use_tools, max_turns=cfg.max_turns,
                         max_tool_tokens=cfg.max_tool_tokens, top_k_docs=cfg.top_k_docs,
                         pad_id=tok_lib.pad_id(tok))
  dt = jnp.dtype(cfg.compute_dtype)
  return sampler_lib.Sampler(policy.cfg, tok, T.SamplingConfig(temperature=cfg.temperature), rcfg,
                             retriever=retriever if s.use_tools else None, compute_dtype=dt,
                             cache_dtype=dt, logits_hook=logits_hook)


def render_prompt(tokenizer, user: str) -> str:
  """The chat-template text up to the assistant turn (as traces.encode renders a trace)."""
  if getattr(tokenizer, "chat_template", None):
    return tok_lib.chat_text(tokenizer, [{"role": "user", "content": user}],
                             add_generation_prompt=True)
  logging.log_first_n(logging.WARNING, "tokenizer has no chat template; prompting with raw text", 1)
  return user


def _user_prompts(examples, cfg: EvalConfig, retriever) -> tuple[list[str], list[int]]:
  """User messages and, per example, the searches spent building them (rag_pe: 1)."""
  hits: list[list] = [[] for _ in examples]
  if baselines.spec(cfg.mode).retrieve_once:
    if retriever is None:
      raise ValueError("mode rag_pe needs a retriever (--index)")
    hits = retriever.search([ex.question for ex in examples], cfg.top_k_docs)
  users = [baselines.user_prompt(ex.question, cfg.mode, ramp_query=ex.meta.get("ramp_query"),
                                 hits=h) for ex, h in zip(examples, hits)]
  return users, [1 if baselines.spec(cfg.mode).retrieve_once else 0] * len(examples)


def run_examples(policy: Policy, examples: Sequence[datasets.QAExample], cfg: EvalConfig,
                 retriever=None, sampler: sampler_lib.Sampler | None = None) -> list[dict]:
  """Generates and scores every example; returns the per-example records in input order."""
  sampler = sampler or make_sampler(policy, cfg, retriever)
  users, pre_searches = _user_prompts(examples, cfg, retriever)
  prompts = [render_prompt(policy.tokenizer, u) for u in users]
  out: list[dict] = []
  for start in range(0, len(examples), cfg.batch_size):
    batch = prompts[start:start + cfg.batch_size]
    real = len(batch)
    batch = batch + [batch[-1]] * (cfg.batch_size - real)   # fixed shapes: one compile
    ro = sampler.generate(policy.params, batch, seed=cfg.seed + start)
    for j in range(real):
      ex, i = examples[start + j], start + j
      text = ro.texts[j]
      pred = DEFAULT.extract_answer(text)
      scores = score(pred or "", ex)
      out.append({
          "id": ex.id, "source": ex.source, "mode": cfg.mode, "question": ex.question,
          "prompt": users[i], "response": text, "gold": list(ex.golden_answers),
          "prediction": pred or "", "answered": pred is not None,
          "reward": {"total": scores["recall"], **scores},
          "searches": int(ro.num_searches[j]) + pre_searches[i], "queries": list(ro.queries[j]),
          "tool_errors": int(ro.num_tool_errors[j]), "finish_reason": ro.finish_reason[j],
          "response_tokens": int(ro.lengths[j] - ro.prompt_lengths[j])})
    logging.info("eval %s: %d / %d", examples[0].source, len(out), len(examples))
  return out


def write_jsonl(path: str | Path, records: Sequence[Mapping[str, Any]]) -> None:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")


def evaluate(policy: Policy, eval_sets: Mapping[str, Sequence[datasets.QAExample]], cfg: EvalConfig,
             out_dir: str | Path, retriever=None, title: str | None = None,
             sampler: sampler_lib.Sampler | None = None) -> report.Summary:
  """All sets -> out_dir/predictions/<set>.jsonl, summary.json, summary.md; returns the summary."""
  out_dir = Path(out_dir)
  if baselines.spec(cfg.mode).use_tools and retriever is None and sampler is None:
    raise ValueError(f"mode {cfg.mode} needs a retriever (--index)")
  sampler = sampler or make_sampler(policy, cfg, retriever)
  summary: dict[str, dict[str, float]] = {}
  for name, exs in eval_sets.items():
    if not exs:
      raise ValueError(f"eval set {name!r} has no examples")
    t0 = time.perf_counter()
    recs = run_examples(policy, exs, cfg, retriever, sampler)
    write_jsonl(out_dir / PREDICTIONS_DIR / f"{name}.jsonl", recs)
    summary[name] = summarize(recs)
    logging.info("eval %s (%s): %d examples in %.1fs", name, cfg.mode, len(recs),
                 time.perf_counter() - t0)
  report.write_summary(summary, out_dir, title or f"{policy.name} ({cfg.mode})")
  (out_dir / "eval_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1) + "\n")
  return report.with_average(report.validate(summary))
