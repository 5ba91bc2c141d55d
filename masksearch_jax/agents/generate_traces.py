r"""Multi-agent trace generation from the command line (Planner / Rewriter / Observer + judge).

  python -m masksearch_jax.agents.generate_traces --questions=train.jsonl \
      --index_dir=runs/index --generator=hf:/ckpt/Qwen2.5-7B-Instruct --out=traces.jsonl
  python -m masksearch_jax.agents.generate_traces --questions=ramp.jsonl \
      --corpus=corpus.jsonl --generator=openai:http://127.0.0.1:8000/v1 --model_name=qwen \
      --judge=same --out=traces.jsonl --rejected_out=rejected.jsonl

--questions: any QA layout `eval.datasets` reads (flashrag, HotpotQA, `question`+`answer`, ...) or a
RAMP JSONL (records with `query` + `masks`). Search: exactly one of --index_dir (dense index from
build_index), --corpus (BM25 over a passages JSONL, no index needed) or --retriever_url (the
retrieval service). Accepted traces are appended per batch, so an interrupted run keeps its work.
Prints a JSON summary (acceptance rate, rejection reasons, generator calls per role, fallbacks).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from absl import app, flags, logging

from masksearch_jax.agents import llm
from masksearch_jax.agents import multi_agent as ma

_FLAGS = (  # (kind, name, default, help)
    ("string", "questions", None, "QA or RAMP records (JSONL/JSON/CSV/parquet)."),
    ("string", "out", None, "Accepted traces (JSONL, data.traces layout)."),
    ("string", "rejected_out", "", "Optional JSONL of rejected episodes and why."),
    ("integer", "limit", 0, "Use only the first N records (0 = all)."),
    ("string", "index_dir", "", "Dense index directory (retrieval/build_index)."),
    ("string", "corpus", "", "Passages JSONL searched with BM25 (no index needed)."),
    ("string", "retriever_url", "", "Retrieval service URL."),
    ("string", "generator", None, "hf:/checkpoint_dir | openai:http://host:port[/v1]."),
    ("string", "judge", "", "LM judge for answers the metric rejects: '' (metric only), 'same' "
     "(the generator) or a generator spec."),
    ("string", "model_name", "default", "openai: the served model's name."),
    ("string", "api_key_env", "OPENAI_API_KEY", "openai: environment variable holding the API "
     "key, if any."),
    ("float", "http_timeout_s", 120.0, "openai: per-request timeout."),
    ("integer", "http_retries", 3, "openai: retries of transient failures."),
    ("integer", "http_workers", 8, "openai: concurrent requests."),
    ("integer", "max_len", 4096, "hf: token buffer per row (prompt + reply)."),
    ("integer", "gen_batch_size", 8, "hf: rows per sampler call."),
    ("string", "param_dtype", "bfloat16", "hf: weight dtype."),
    ("string", "compute_dtype", "bfloat16", "hf: matmul / KV-cache dtype."),
    ("integer", "batch_size", 16, "Tasks run in lock-step (one generator call per role)."),
    ("integer", "max_observer_turns", 5, "Observer turns; the last one must answer."),
    ("integer", "max_queries", 3, "Queries per planner / rewriter / observer reply."),
    ("integer", "max_round_searches", 4, "Searches per round."),
    ("integer", "max_searches", 12, "Searches per trace."),
    ("integer", "top_k", 3, "Hits per search."),
    ("bool", "rewrite", True, "Run the Rewriter (off: queries are searched as written)."),
    ("float", "temperature", 0.0, "Agents' sampling temperature (0 = greedy)."),
    ("integer", "max_new_tokens", 512, "Tokens per agent reply."),
    ("integer", "parse_retries", 2, "Re-asks of an unparseable reply (sampled)."),
    ("string", "accept_metric", "em", "Answer metric of the acceptance test: em | f1 | recall."),
    ("float", "accept_threshold", 1.0, "Accept when the metric reaches this."),
)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defined on demand (not at import), so they never collide with other entry points' flags."""
  for kind, name, default, help_ in _FLAGS:
    getattr(flags, f"DEFINE_{kind}")(name, default, help_, flag_values=fv)


def load_records(path: str, limit: int = 0) -> list[dict]:
  """RAMP and embedded-world JSONL (records with `masks` / `hops`) as they are, so the oracle
  sees the hop chains; anything else through eval.datasets (every known QA layout)."""
  p = Path(path)
  if not p.is_file():
    raise FileNotFoundError(f"--questions: no file {p}")
  if p.suffix == ".jsonl":
    with open(p, encoding="utf-8") as f:
      first = next((line for line in f if line.strip()), "")
    try:
      head = json.loads(first) if first else {}
    except ValueError as e:
      raise ValueError(f"{p}:1: invalid JSON ({e})") from None
    if isinstance(head, dict) and ("masks" in head or "hops" in head):   # RAMP / world: as is
      out = []
      with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
          if line.strip():
            try:
              out.append(json.loads(line))
            except ValueError as e:
              raise ValueError(f"{p}:{n}: invalid JSON ({e})") from None
          if limit and len(out) >= limit:
            break
      return out
  from masksearch_jax.eval import datasets
  exs = datasets.load_eval_set(p, limit=limit or None)
  return [{"id": e.id, "question": e.question, "golden_answers": list(e.golden_answers),
           "source": e.source} for e in exs]


def build_retriever(index_dir: str = "", corpus: str = "", url: str = ""):
  given = [x for x in (index_dir, corpus, url) if x]
  if len(given) != 1:
    raise app.UsageError("give exactly one of --index_dir, --corpus, --retriever_url")
  if corpus:
    from masksearch_jax.data import world_search
    from masksearch_jax.retrieval import corpus as corpus_lib
    docs = [{"id": p.id, "title": p.title, "text": p.text}
            for p in corpus_lib.iter_passages(corpus)]
    return world_search.LexicalRetriever(docs)
  from masksearch_jax.retrieval import client
  return client.open_retriever(url or index_dir)


def make_judge(fv, gen: llm.Generator | None = None):
  """--judge: None (metric only), the generator itself ('same') or another generator spec."""
  from masksearch_jax.rl import rewards
  if not fv.judge:
    return None
  jgen = gen if fv.judge == "same" and gen is not None else make_generator(
      fv.generator if fv.judge == "same" else fv.judge, fv)
  return rewards.LMJudge(llm.text_fn(jgen, max_new_tokens=16, temperature=0.0))


def make_generator(spec: str, fv) -> llm.Generator:
  if spec.startswith("openai:"):
    key = os.environ.get(fv.api_key_env) if fv.api_key_env else None
    return llm.make_generator(spec, model=fv.model_name, api_key=key, timeout_s=fv.http_timeout_s,
                              max_retries=fv.http_retries, workers=fv.http_workers)
  return llm.make_generator(spec, max_len=fv.max_len, batch_size=fv.gen_batch_size,
                            param_dtype=fv.param_dtype, compute_dtype=fv.compute_dtype)


def agent_config(fv) -> ma.AgentConfig:
  return ma.AgentConfig(max_observer_turns=fv.max_observer_turns, max_queries=fv.max_queries,
                        max_round_searches=fv.max_round_searches, max_searches=fv.max_searches,
                        top_k=fv.top_k, rewrite=fv.rewrite, max_new_tokens=fv.max_new_tokens,
                        temperature=fv.temperature, max_retries=fv.parse_retries,
                        accept_metric=fv.accept_metric, accept_threshold=fv.accept_threshold)


def run(fv) -> dict:
  """The CLI's work, on parsed flag values; returns the printed summary."""
  for name in ("questions", "generator", "out"):
    if not getattr(fv, name):
      raise app.UsageError(f"--{name} is required")
  records = load_records(fv.questions, fv.limit)
  if not records:
    raise app.UsageError(f"--questions={fv.questions}: no records")
  retriever = build_retriever(fv.index_dir, fv.corpus, fv.retriever_url)
  cfg = agent_config(fv)
  gen = make_generator(fv.generator, fv)
  judge = make_judge(fv, gen)
  out = Path(fv.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  done = [0, 0]
  with open(out, "w", encoding="utf-8") as f_ok, \
      open(fv.rejected_out or os.devnull, "w", encoding="utf-8") as f_bad:

    def on_batch(results):
      for r in results:
        if r.accepted:
          f_ok.write(json.dumps(r.trace.to_json(), ensure_ascii=False) + "\n")
        else:
          f_bad.write(json.dumps({"id": r.task.id, "reason": r.reason,
                                  "fallbacks": list(r.fallbacks),
                                  "trace": r.trace.to_json() if r.trace else None},
                                 ensure_ascii=False) + "\n")
      f_ok.flush()
      f_bad.flush()
      done[0] += len(results)
      done[1] += sum(r.accepted for r in results)
      logging.info("%d/%d tasks, %d accepted", done[0], len(records), done[1])

    _, _, stats = ma.generate(records, gen, retriever, cfg, judge=judge,
                              batch_size=fv.batch_size, on_batch=on_batch)
  return {"out": str(out), **stats}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  print(json.dumps(run(flags.FLAGS)))


if __name__ == "__main__":
  define_flags()
  app.run(main)
