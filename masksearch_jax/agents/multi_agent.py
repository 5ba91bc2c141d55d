"""Multi-agent trace generation (MaskSearch Sec. 3.2): Planner -> Rewriter -> Retriever -> Observer.

For a batch of tasks (QA questions or RAMP records) the agents run in lock-step, one generator call
per role per round for the whole batch (what a batched sampler or an HTTP server wants):
  Planner   splits the task, writes the first queries (unparseable after retries: the task itself
            becomes the one query - logged fallback)
  Rewriter  turns each query into up to `max_queries` search queries (fallback: the query as is)
  Retriever one `search` call for every query of the round (timeout; failure drops the episode)
  Observer  reads all results so far: search again (new queries) or answer; at most
            `max_observer_turns` turns, the last one must answer (else the episode is dropped)
The steps of an episode become ONE trace in the tag protocol (`data.traces.Trace`):
  <think>plan / observer thought</think>\n<search> q </search>\n\n<information>…</information>\n\n
  … <think>final thought</think>\n<answer> a </answer>
and `judge_trace` keeps it only if `rl.rewards.check_format` passes and the answer is correct:
`rewards.answer_score` (eval/metrics.py EM / F1 / recall) >= threshold, or an LM judge
(`rewards.LMJudge`) says yes.
"""
from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Callable, Iterable, Sequence

from absl import logging

from masksearch_jax.agents import llm, prompts
from masksearch_jax.data import traces
from masksearch_jax.protocol import DEFAULT, Hit, Protocol, format_observation
from masksearch_jax.rl import prompts as rl_prompts, rewards
from masksearch_jax.rollout import tools as rollout_tools


@dataclasses.dataclass(frozen=True)
class AgentConfig:
  max_observer_turns: int = 5    # the paper's limit; the last turn must answer
  max_queries: int = 3           # per planner reply / per rewrite / per observer reply
  max_round_searches: int = 4    # search calls per round (after rewriting and de-duplication)
  max_searches: int = 12         # per trace; reaching it makes the next observer turn the last
  top_k: int = 3                 # hits per search
  rewrite: bool = True           # off: the planner's / observer's queries are searched as written
  max_new_tokens: int = 512
  temperature: float = 0.0
  retry_temperature: float = 0.7  # re-asks of an unparseable reply sample (a greedy retry repeats)
  max_retries: int = 2           # re-asks per unparseable reply
  passage_chars: int = 600       # passage text the observer reads, per hit
  history_steps: int = 8         # most recent searches shown to the observer ...
  history_chars: int = 12000     # ... and at most this much of their text (oldest dropped first)
  retriever_timeout_s: float = 60.0
  max_generator_failures: int = 3  # consecutive failed generator calls before giving up
  accept_metric: str = "em"      # em | f1 | recall (rl.rewards / eval.metrics)
  accept_threshold: float = 1.0
  protocol: Protocol = DEFAULT

  def __post_init__(self):
    if self.max_observer_turns < 1 or self.max_queries < 1 or self.top_k < 1:
      raise ValueError("AgentConfig: max_observer_turns, max_queries and top_k must be >= 1")
    if self.max_retries < 0 or self.max_round_searches < 1 or self.max_searches < 1:
      raise ValueError("AgentConfig: max_retries >= 0, max_round_searches and max_searches >= 1")
    if self.accept_metric not in ("em", "f1", "recall"):
      raise ValueError(f"AgentConfig.accept_metric={self.accept_metric!r}: use em, f1 or recall")


# ------------------------------------------------------------------------------------ tasks
@dataclasses.dataclass(frozen=True)
class Task:
  id: str
  kind: str                # "qa" | "ramp"
  task: str                # what the agents read
  prompt: str              # the trace's user prompt (what the student sees)
  gold: rewards.Gold
  question: str            # for the LM judge


def task_from_record(rec: dict, index: int, protocol: Protocol = DEFAULT) -> Task:
  """A QA record ({question | prompt, golden_answers | gold_answers | answers | answer}) or a RAMP
  record ({query, masks}), read by the one record reader RL prompts use (rl/prompts.normalize),
  so that what trace generation accepts is what RL accepts. No "id": the record's index."""
  rid = str(rec.get("id", index)) if isinstance(rec, dict) else str(index)
  ex = rl_prompts.normalize(rec, f"record #{index} ({rid})", protocol)
  gold = rewards.as_gold(ex["gold"], index)
  return Task(rid, "ramp" if gold.masks else "qa", gold.question, ex["prompt"], gold,
              gold.question)


# ------------------------------------------------------------------------------------ episodes
@dataclasses.dataclass
class Step:
  thought: str
  query: str
  hits: list[Hit]


@dataclasses.dataclass
class Episode:
  task: Task
  plan: str = ""
  steps: list[Step] = dataclasses.field(default_factory=list)
  pending: list[str] = dataclasses.field(default_factory=list)   # queries of the next round
  pending_thought: str = ""
  turns: int = 0                 # observer turns used
  answer: str | None = None
  final_thought: str = ""
  failed: str = ""               # why the episode ended without an answer
  fallbacks: list[str] = dataclasses.field(default_factory=list)

  @property
  def running(self) -> bool:
    return self.answer is None and not self.failed

  def searched(self) -> set[str]:
    return {s.query.lower() for s in self.steps}


@dataclasses.dataclass
class Result:
  task: Task
  trace: traces.Trace | None     # None when the episode produced no answer
  accepted: bool
  reason: str                    # "" when accepted
  fallbacks: tuple[str, ...] = ()  # roles whose unparseable reply was replaced by a fallback


class MultiAgent:
  """Runs the agents for batches of tasks; `calls` counts generator prompts per role."""

  def __init__(self, generator: llm.Generator, retriever, cfg: AgentConfig = AgentConfig(),
               judge: rewards.Judge | None = None):
    self.gen, self.retriever, self.cfg, self.judge = generator, retriever, cfg, judge
    self.calls: collections.Counter = collections.Counter()     # prompts per role
    self.seconds: collections.Counter = collections.Counter()   # wall time per role + retrieval
    self._failures = 0

  # ---- the generator, with bounded retries ---------------------------------------------------
  def _generate(self, role: str, batch: list[str], temperature: float) -> list[str | None]:
    """Replies to `batch`; a failed call is retried prompt by prompt so one bad prompt (e.g. an
    HTTP 400 for a too-long context) costs only its own episode. None = no reply."""
    self.calls[role] += len(batch)
    t0 = time.perf_counter()
    try:
      out = self._call(batch, temperature)
    except llm.GenerationError as e:
      self._failures += 1
      logging.error("%s: generator call for %d prompts failed (%d in a row): %s", role,
                    len(batch), self._failures, e)
      if self._failures >= self.cfg.max_generator_failures:
        raise
      out = []
      for p in batch if len(batch) > 1 else []:
        try:
          out.append(self._call([p], temperature)[0])
        except llm.GenerationError as e1:
          logging.error("%s: prompt failed on its own too: %s", role, e1)
          out.append(None)
      if any(o is not None for o in out):
        self._failures = 0                   # the generator works; only some prompts fail
      out = out or [None]
    else:
      self._failures = 0
    self.seconds[role] += time.perf_counter() - t0
    return out

  def _call(self, batch: list[str], temperature: float) -> list[str | None]:
    out = self.gen.generate(batch, max_new_tokens=self.cfg.max_new_tokens,
                            temperature=temperature, stop=())
    if not isinstance(out, list) or len(out) != len(batch):
      raise llm.GenerationError(f"generator returned {type(out).__name__} of length "
                                f"{len(out) if isinstance(out, list) else '?'} for {len(batch)} "
                                "prompts")
    return [o if isinstance(o, str) else None for o in out]

  def _ask(self, role: str, items: list[tuple[Any, str]], parse: Callable[[str], Any]
           ) -> dict[Any, Any]:
    """key -> parsed reply, or None when every attempt was unparseable."""
    out, todo = {}, list(items)
    for attempt in range(self.cfg.max_retries + 1):
      if not todo:
        break
      temp = self.cfg.temperature if attempt == 0 else max(self.cfg.temperature,
                                                            self.cfg.retry_temperature)
      replies = self._generate(role, [p for _, p in todo], temp)
      retry = []
      for (key, p), reply in zip(todo, replies):
        parsed = parse(reply) if reply is not None else None
        if parsed is None:
          logging.info("%s reply unparseable (attempt %d/%d): %r", role, attempt + 1,
                       self.cfg.max_retries + 1, (reply or "")[:200])
          retry.append((key, p))
        else:
          out[key] = parsed
      todo = retry
    for key, _ in todo:
      out[key] = None
    return out

  # ---- the roles -----------------------------------------------------------------------------
  def _plan(self, eps: list[Episode]) -> None:
    c = self.cfg
    items = [(i, prompts.PLANNER.format(task=e.task.task, max_queries=c.max_queries))
             for i, e in enumerate(eps)]
    got = self._ask("planner", items, lambda r: prompts.parse_planner(r, c.max_queries))
    for i, e in enumerate(eps):
      reply = got[i]
      if reply is None:
        fallback = _fallback_query(e.task)
        logging.warning("planner: no query for task %s after %d attempts; searching the task "
                        "itself: %r", e.task.id, c.max_retries + 1, fallback)
        e.fallbacks.append("planner")
        e.pending = [fallback]
      else:
        e.plan, e.pending = reply.plan, reply.queries
      e.pending_thought = e.plan

  def _rewrite(self, eps: list[Episode]) -> None:
    c = self.cfg
    items = [((i, j), prompts.REWRITER.format(task=e.task.task, query=q, max_queries=c.max_queries))
             for i, e in enumerate(eps) for j, q in enumerate(e.pending)]
    got = self._ask("rewriter", items, lambda r: prompts.parse_rewriter(r, c.max_queries)) if (
        c.rewrite and items) else {}
    for i, e in enumerate(eps):
      seen, keep = e.searched(), []
      for j, q in enumerate(e.pending):
        new = got.get((i, j)) if c.rewrite else None
        if c.rewrite and new is None:
          e.fallbacks.append("rewriter")
        fresh = [x for x in (new or []) if x.lower() not in seen]
        for x in fresh or [q]:      # rewrites that repeat earlier searches: the query as written
          if x.lower() not in seen:
            seen.add(x.lower())
            keep.append(x)
      e.pending = keep[:min(c.max_round_searches, c.max_searches - len(e.steps))]
      if not e.pending:
        e.failed = "no_new_queries"

  def _retrieve(self, eps: list[Episode]) -> None:
    c = self.cfg
    flat = [(e, q) for e in eps for q in e.pending]
    if not flat:
      return
    t0 = time.perf_counter()
    hits, err = rollout_tools.call_retriever(self.retriever, [q for _, q in flat], c.top_k,
                                             c.retriever_timeout_s)
    self.seconds["retriever"] += time.perf_counter() - t0
    if err is not None:
      logging.error("retriever failed for %d queries: %s", len(flat), err)
      for e in eps:
        e.failed = f"retriever_error: {err[:100]}"
      return
    n = 0
    for e in eps:
      for j, q in enumerate(e.pending):
        thought = (e.pending_thought or "I need more information.") if j == 0 else ""
        thought = f"{thought} I will search for {q}." if thought else f"I will also search for {q}."
        e.steps.append(Step(thought, q, list(hits[n])))
        n += 1
      e.pending, e.pending_thought = [], ""

  def _observe(self, eps: list[Episode]) -> None:
    c = self.cfg
    items = []
    for i, e in enumerate(eps):
      e.turns += 1
      last = e.turns >= c.max_observer_turns or len(e.steps) >= c.max_searches
      items.append((i, prompts.observer_prompt(e.task.task, e.plan, self._history(e), e.turns,
                                               e.turns if last else c.max_observer_turns,
                                               c.max_queries, e.task.kind)))
    got = self._ask("observer", items, lambda r: prompts.parse_observer(r, c.max_queries))
    for i, e in enumerate(eps):
      reply = got[i]
      last = e.turns >= c.max_observer_turns or len(e.steps) >= c.max_searches
      if reply is None:
        logging.warning("observer: no decision for task %s on turn %d; dropping it", e.task.id,
                        e.turns)
        e.failed = "observer_unparseable"
      elif reply.answer is not None:
        e.answer, e.final_thought = reply.answer, reply.thought
      elif last:
        e.failed = "max_turns"
      else:
        e.pending, e.pending_thought = reply.searches, reply.thought

  def _history(self, e: Episode) -> str:
    """The most recent searches with their passages, newest kept first within the budgets."""
    out: list[str] = []
    used = 0
    for n in range(len(e.steps), max(0, len(e.steps) - self.cfg.history_steps), -1):
      s = e.steps[n - 1]
      docs = "\n".join(f"  Doc {i + 1}(Title: {h.title}) {h.text[:self.cfg.passage_chars]}"
                       for i, h in enumerate(s.hits)) or "  (no results)"
      block = f"[{n}] search: {s.query}\n{docs}"
      if out and used + len(block) > self.cfg.history_chars:
        break
      out.append(block)
      used += len(block) + 1
    return "\n".join(reversed(out))

  # ---- the loop ------------------------------------------------------------------------------
  def run(self, tasks: Sequence[Task]) -> list[Result]:
    eps = [Episode(t) for t in tasks]
    self._plan(eps)
    while True:
      live = [e for e in eps if e.running]
      if not live:
        break
      self._rewrite(live)
      self._retrieve([e for e in live if e.running])
      self._observe([e for e in live if e.running])
    return [self._result(e) for e in eps]

  def _result(self, e: Episode) -> Result:
    if e.answer is None:
      return Result(e.task, None, False, e.failed or "no_answer", tuple(e.fallbacks))
    trace = traces.Trace(e.task.prompt, render(e, self.cfg.protocol), list(e.task.gold.as_list),
                         {"id": e.task.id, "type": e.task.kind, "source": "multi_agent",
                          "num_searches": len(e.steps), "observer_turns": e.turns,
                          "plan": e.plan, "fallbacks": e.fallbacks})
    ok, reason, info = judge_trace(trace, e.task, self.cfg, self.judge)
    trace.meta.update(info)
    return Result(e.task, trace, ok, reason, tuple(e.fallbacks))


def _fallback_query(task: Task) -> str:
  """The task as one search query: the question, or the masked paragraph without its masks."""
  text = task.task
  if task.kind == "ramp":
    text = text.replace("[mask]", " ")
  return prompts.clean_text(text)[:200] or "search"


def render(e: Episode, protocol: Protocol = DEFAULT) -> str:
  """The episode as one assistant turn in the tag protocol (model text cleaned of tags)."""
  p, parts = protocol, []
  for s in e.steps:
    parts.append(f"{p.think_open}{prompts.clean_text(s.thought, p)}{p.think_close}\n")
    parts.append(f"{p.search_open} {prompts.clean_text(s.query, p)} {p.search_close}")
    parts.append(format_observation(s.hits, p))
  answer = prompts.clean_text(e.answer or "", p)
  final = prompts.clean_text(e.final_thought, p) or f"The results show the answer: {answer}."
  parts.append(f"{p.think_open}{final}{p.think_close}\n")
  parts.append(f"{p.answer_open} {answer} {p.answer_close}")
  return "".join(parts)


def judge_trace(trace: traces.Trace, task: Task, cfg: AgentConfig,
                judge: rewards.Judge | None = None) -> tuple[bool, str, dict]:
  """(accepted, reason, info): strict format, then the answer's score, then the LM judge."""
  fr = rewards.check_format(trace.response, cfg.protocol)
  answer = cfg.protocol.extract_answer(trace.response)
  rcfg = rewards.RewardConfig(answer_metric=cfg.accept_metric, length_penalty=False,
                              protocol=cfg.protocol)
  score = rewards.answer_score(answer, task.gold, rcfg)
  info: dict[str, Any] = {"format_ok": fr.ok, "answer_score": score}
  if not fr.ok:
    return False, f"format: {fr.reason}", info
  if score >= cfg.accept_threshold:
    return True, "", info
  if judge is not None and answer:
    verdict = bool(judge.judge(task.question, task.gold.as_list, answer))
    info["judge"] = verdict
    if verdict:
      return True, "", info
    return False, "judge_rejected", info
  return False, "wrong_answer", info


def generate(records: Iterable[dict], generator: llm.Generator, retriever,
             cfg: AgentConfig = AgentConfig(), judge: rewards.Judge | None = None,
             batch_size: int = 16, on_batch: Callable[[list[Result]], None] | None = None
             ) -> tuple[list[traces.Trace], list[Result], dict]:
  """-> (accepted traces, every result, stats). Records are QA or RAMP dicts (task_from_record)."""
  agent = MultiAgent(generator, retriever, cfg, judge)
  tasks = [task_from_record(r, i, cfg.protocol) for i, r in enumerate(records)]
  results: list[Result] = []
  t0 = time.perf_counter()
  for i in range(0, len(tasks), batch_size):
    got = agent.run(tasks[i:i + batch_size])
    results += got
    if on_batch is not None:
      on_batch(got)
  accepted = [r.trace for r in results if r.accepted]
  reasons = collections.Counter(r.reason.split(":")[0] for r in results if not r.accepted)
  stats = {"items": len(tasks), "answered": sum(r.trace is not None for r in results),
           "accepted": len(accepted),
           "acceptance_rate": len(accepted) / len(tasks) if tasks else 0.0,
           "rejected": dict(reasons), "calls": dict(agent.calls),
           "fallbacks": dict(collections.Counter(f for r in results for f in r.fallbacks)),
           "seconds": {"total": round(time.perf_counter() - t0, 3),
                       **{k: round(v, 3) for k, v in agent.seconds.items()}}}
  return accepted, results, stats
