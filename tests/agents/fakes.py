"""Scripted stand-ins for the agents' generator and the retriever (deterministic, no model)."""
from __future__ import annotations

import collections
import re
from typing import Callable

from masksearch_jax.agents import prompts
from masksearch_jax.protocol import Hit

# A two-hop toy world: the answer needs both passages.
DOCS = {
    "acme": Hit("d1", "Acme Corp", "Acme Corp is a maker of anvils. It was founded by Jane Roe.",
                2.0),
    "roe": Hit("d2", "Jane Roe", "Jane Roe was born in Springfield in 1901.", 2.0),
    "noise": Hit("d3", "Anvil", "An anvil is a block of iron.", 0.5),
}
QUESTION = {"id": "q1", "question": "Where was the founder of Acme Corp born?",
            "golden_answers": ["Springfield"]}


class KeywordRetriever:
  """Hits whose key word occurs in the query, then filler; records every batch of queries."""

  def __init__(self):
    self.calls: list[list[str]] = []

  def search(self, queries, k):
    self.calls.append(list(queries))
    out = []
    for q in queries:
      ql = q.lower()
      hits = [h for key, h in DOCS.items() if key != "noise" and key in ql] + [DOCS["noise"]]
      out.append(hits[:k])
    return out


def role_of(prompt: str) -> str:
  for role, marker in prompts.ROLE_MARKERS.items():
    if marker in prompt:
      return role
  raise AssertionError(f"prompt of no known role: {prompt[:80]!r}")


def turn_of(prompt: str) -> int:
  return int(re.search(r"Turn (\d+) of (\d+)", prompt).group(1))


def task_of(prompt: str) -> str:
  return re.search(r"^Task: (.*)$", prompt, re.M).group(1)


class ScriptedGenerator:
  """Routes each prompt to `script[role](prompt) -> reply`; counts prompts and calls per role."""

  def __init__(self, script: dict[str, Callable[[str], str]]):
    self.script = script
    self.prompts: dict[str, list[str]] = collections.defaultdict(list)
    self.batches: list[tuple[str, ...]] = []
    self.temperatures: list[float] = []

  def generate(self, prompts_, max_new_tokens=512, temperature=0.0, stop=()):
    roles = tuple(role_of(p) for p in prompts_)
    self.batches.append(roles)
    self.temperatures.append(temperature)
    out = []
    for role, p in zip(roles, prompts_):
      self.prompts[role].append(p)
      out.append(self.script[role](p))
    return out


def good_planner(p):
  return ("PLAN: find who founded Acme Corp, then where that person was born.\n"
          "QUERY: Acme Corp founder")


def echo_rewriter(p):
  q = re.search(r"^Query to rewrite: (.*)$", p, re.M).group(1)
  return f"QUERY: {q}"


def two_hop_observer(answer: str = "Springfield"):
  def reply(p):
    if turn_of(p) == 1:
      return "THOUGHT: Acme Corp was founded by Jane Roe.\nSEARCH: Jane Roe birthplace"
    return f"THOUGHT: Jane Roe was born in Springfield.\nANSWER: {answer}"
  return reply


def script(planner=good_planner, rewriter=echo_rewriter, observer=None):
  return ScriptedGenerator({"planner": planner, "rewriter": rewriter,
                            "observer": observer or two_hop_observer()})
