"""Prompt templates of the multi-agent trace generator and the safe parsers of their replies.

Roles follow MaskSearch (arXiv 2505.20285, Sec. 3.2): the Planner splits the task into sub-questions
and writes the first search queries; the Rewriter turns each query into a few queries a search
engine answers well; the Observer reads the results and either searches again or answers. The
Judge template is `rl.rewards.JUDGE_TEMPLATE` (one template, used through `rewards.LMJudge`).

Replies use labelled lines (`PLAN:`, `QUERY:`, `THOUGHT:`, `SEARCH:`, `ANSWER:`) because small
models keep to them better than to JSON; a reply that instead holds a JSON object with the same
keys is read too (json.loads only, never eval). Markdown bullets, numbering and bold markers are
ignored.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from masksearch_jax.protocol import DEFAULT, Protocol
from masksearch_jax.rl.rewards import JUDGE_TEMPLATE

__all__ = ["PLANNER", "REWRITER", "OBSERVER", "JUDGE", "ROLE_MARKERS", "Labelled", "parse_labels",
           "clean_text", "PlannerReply", "ObserverReply", "parse_planner", "parse_rewriter",
           "parse_observer"]

JUDGE = JUDGE_TEMPLATE

PLANNER = """You are the Planner of a team that answers tasks by searching an encyclopedia.
Task: {task}

Split the task into the sub-questions that must be answered, in order, and write the first search \
queries (at most {max_queries}; short keyword queries, one fact each). Reply exactly in this form:
PLAN: <the sub-questions, in one or two sentences>
QUERY: <first search query>
QUERY: <another search query, if needed>"""

REWRITER = """You are the Rewriter of a team that answers tasks by searching an encyclopedia.
Task: {task}
Query to rewrite: {query}

Rewrite the query into at most {max_queries} search queries that a search engine answers well: \
name the entity, drop filler words, split it if it asks two things. Reply with one line per query:
QUERY: <search query>"""

OBSERVER = """You are the Observer of a team that answers tasks by searching an encyclopedia.
Task: {task}
Plan: {plan}

Searches so far:
{history}

Turn {turn} of {max_turns}. Read the results. {choice} Reply exactly in this form:
THOUGHT: <what the results say, and what is still missing>
{reply_lines}"""

_CHOICE = ("If they are enough to complete the task, answer; otherwise write new search queries "
           "for what is missing (at most {max_queries}).")
_CHOICE_LAST = (
    "This is the last turn: you must answer now with the best answer the results support.")
_REPLY = (
    "then either\nSEARCH: <new search query>   (one line per query)\nor\nANSWER: <short answer>")
_REPLY_LAST = "ANSWER: <short answer>"
_ANSWER_HINT = {"qa": "The answer is a short phrase (a name, a date, a number), not a sentence.",
                "ramp": "The answer lists the masked spans in order, separated by '; '."}

# Text that tells the roles apart (scripted test generators route on it).
ROLE_MARKERS = {"planner": "You are the Planner", "rewriter": "You are the Rewriter",
                "observer": "You are the Observer"}


def observer_prompt(task: str, plan: str, history: str, turn: int, max_turns: int,
                    max_queries: int, kind: str = "qa") -> str:
  last = turn >= max_turns
  choice = _CHOICE_LAST if last else _CHOICE.format(max_queries=max_queries)
  return OBSERVER.format(task=task, plan=plan or "(none)", history=history or "(none yet)",
                         turn=turn, max_turns=max_turns, choice=f"{choice} {_ANSWER_HINT[kind]}",
                         reply_lines=_REPLY_LAST if last else _REPLY)


# ------------------------------------------------------------------------------------ parsing
_LINE = re.compile(r"^\s*(?:[-*>•]+\s*|\d+[.)]\s*)?(?:\*\*|__)?([A-Za-z]+)(?:\*\*|__)?\s*"
                   r"(?:\d+\s*)?[:：]\s*(?:\*\*|__)?\s*(.*?)\s*$")


@dataclasses.dataclass(frozen=True)
class Labelled:
  """Values of each label, in order; `label` keys are lower case."""
  values: dict[str, list[str]]

  def get(self, label: str) -> list[str]:
    return self.values.get(label, [])

  def first(self, label: str) -> str:
    v = self.get(label)
    return v[0] if v else ""


_PLURAL = {"queries": "query", "searches": "search"}


def _from_json(text: str) -> dict[str, list[str]] | None:
  """The first {...} of `text` parsed with json.loads, as label -> string values; None if none."""
  start = text.find("{")
  while start >= 0:
    depth = 0
    for end in range(start, len(text)):
      depth += {"{": 1, "}": -1}.get(text[end], 0)
      if depth == 0:
        try:
          obj = json.loads(text[start:end + 1])
        except ValueError:
          break
        if not isinstance(obj, dict):
          break
        out: dict[str, list[str]] = {}
        for k, v in obj.items():
          vals = v if isinstance(v, list) else [v]
          key = _PLURAL.get(str(k).lower(), str(k).lower())
          out[key] = [str(x) for x in vals if isinstance(x, (str, int, float))]
        return out
    start = text.find("{", start + 1)
  return None


def parse_labels(text: str, labels: tuple[str, ...]) -> Labelled:
  """Labelled lines of a reply; a line without a label continues the previous label's value.

  `queries` in a JSON reply maps to `query` (and `searches` to `search`).
  """
  values: dict[str, list[str]] = {}
  current: str | None = None
  for line in text.splitlines():
    m = _LINE.match(line)
    if m and m.group(1).lower() in labels:
      current = m.group(1).lower()
      values.setdefault(current, []).append(m.group(2))
    elif current is not None and line.strip() and current not in ("query", "search"):
      values[current][-1] = (values[current][-1] + " " + line.strip()).strip()
  if not any(v for vs in values.values() for v in vs if v.strip()):
    obj = _from_json(text)
    if obj:
      values = {k: v for k, v in obj.items() if k in labels}
  return Labelled({k: [x for x in (clean_text(v) for v in vs) if x] for k, vs in values.items()})


def clean_text(text: str, protocol: Protocol = DEFAULT) -> str:
  """Model text made safe to place inside a tag: protocol tags dropped, whitespace collapsed,
  surrounding quotes and markdown markers removed."""
  for tag in protocol.all_tags:
    text = text.replace(tag, " ")
  text = " ".join(text.replace("**", "").split()).strip()
  text = re.sub(r"^__|__$", "", text).strip()
  if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
    text = text[1:-1].strip()
  return text


@dataclasses.dataclass(frozen=True)
class PlannerReply:
  plan: str
  queries: list[str]


@dataclasses.dataclass(frozen=True)
class ObserverReply:
  thought: str
  searches: list[str]
  answer: str | None


def _unique(items: list[str], limit: int) -> list[str]:
  out: list[str] = []
  for q in items:
    if q.lower() not in (x.lower() for x in out):
      out.append(q)
  return out[:limit]


def parse_planner(text: str, max_queries: int) -> PlannerReply | None:
  """None when the reply has no query (the caller retries, then falls back)."""
  lab = parse_labels(text, ("plan", "query"))
  queries = _unique(lab.get("query"), max_queries)
  return PlannerReply(lab.first("plan"), queries) if queries else None


def parse_rewriter(text: str, max_queries: int) -> list[str] | None:
  queries = _unique(parse_labels(text, ("query",)).get("query"), max_queries)
  return queries or None


def parse_observer(text: str, max_queries: int) -> ObserverReply | None:
  """An answer wins over searches when a reply holds both; None when it holds neither."""
  lab = parse_labels(text, ("thought", "search", "answer"))
  answer = lab.first("answer") or None
  searches = [] if answer else _unique(lab.get("search"), max_queries)
  if answer is None and not searches:
    return None
  return ObserverReply(lab.first("thought"), searches, answer)


def as_jsonable(reply: Any) -> Any:
  """Replies as plain dicts for trace metadata."""
  return dataclasses.asdict(reply) if dataclasses.is_dataclass(reply) else reply
