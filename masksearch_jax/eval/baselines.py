"""The evaluation modes: which prompt a question gets and whether the policy may search.

Modes (MaskSearch Table 2's baselines, selected by `evaluate --mode`):
  agent        the search-agent prompt (`data.traces.question_prompt`, the exact text SFT traces
               and RL prompts use) with the search tool on: for a trained checkpoint.
  agent_pe     the same prompt and tool on an *untrained* checkpoint (prompt engineering only).
               It is the agent mode by another name, kept separate so result tables say which
               checkpoint kind they measured; pass a base / instruct checkpoint with it.
  closed_book  no retrieval: a direct-answer prompt and no tool. The answer must still be in
               `<answer>` tags (generation stops at `</answer>`).
  rag_pe       retrieve once with the question, put the top-k passages in the prompt (the
               `Doc i(Title: t) text` lines of `protocol.format_observation`), answer directly.

RAMP records (a `query` holding the fill-in instruction + masked text) keep their own query as the
prompt in the agent modes; closed_book / rag_pe rewrite them as "fill in the masks" without tools.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from masksearch_jax.data import ramp, traces
from masksearch_jax.protocol import DEFAULT, Hit, Protocol

MODES = ("agent", "agent_pe", "closed_book", "rag_pe")


@dataclasses.dataclass(frozen=True)
class ModeSpec:
  use_tools: bool       # the policy may call <search> during generation
  retrieve_once: bool   # passages of one question-search go into the prompt (RAG)


SPECS = {
    "agent": ModeSpec(use_tools=True, retrieve_once=False),
    "agent_pe": ModeSpec(use_tools=True, retrieve_once=False),
    "closed_book": ModeSpec(use_tools=False, retrieve_once=False),
    "rag_pe": ModeSpec(use_tools=False, retrieve_once=True),
}


def spec(mode: str) -> ModeSpec:
  if mode not in SPECS:
    raise ValueError(f"unknown eval mode {mode!r}; choose one of {MODES}")
  return SPECS[mode]


def closed_book_prompt(question: str, protocol: Protocol = DEFAULT) -> str:
  p = protocol
  return (f"Answer the given question directly, without searching. You may reason inside "
          f"{p.think_open} and {p.think_close} first. Provide the answer inside {p.answer_open} "
          f"and {p.answer_close}, without detailed illustrations. For example, {p.answer_open} "
          f"Beijing {p.answer_close}. Question: {question}\n")


def rag_prompt(question: str, hits: Sequence[Hit], protocol: Protocol = DEFAULT) -> str:
  p = protocol
  docs = "\n".join(f"Doc {i + 1}(Title: {h.title}) {h.text}" for i, h in enumerate(hits))
  return (f"Answer the given question using the documents below. You may reason inside "
          f"{p.think_open} and {p.think_close} first. Provide the answer inside {p.answer_open} "
          f"and {p.answer_close}, without detailed illustrations. For example, {p.answer_open} "
          f"Beijing {p.answer_close}.\nDocuments:\n{docs}\nQuestion: {question}\n")


def _ramp_task(masked: str, protocol: Protocol) -> str:
  """A RAMP record as a no-tool task: fill the masks, answer format of `ramp.format_answer`."""
  p = protocol
  return (f"Fill in every {ramp.MASK} in the text below, in order, separated by "
          f"'{ramp.ANSWER_SEP.strip()}', inside {p.answer_open} and {p.answer_close}.\n"
          f"Text: {masked}")


def user_prompt(question: str, mode: str, *, ramp_query: str | None = None,
                hits: Sequence[Hit] = (), protocol: Protocol = DEFAULT) -> str:
  """The user message for one example. `ramp_query`: the RAMP record's full query (agent modes)."""
  s = spec(mode)
  if s.use_tools:
    return ramp_query if ramp_query is not None else traces.question_prompt(question, protocol)
  task = _ramp_task(question, protocol) if ramp_query is not None else question
  if s.retrieve_once:
    return rag_prompt(task, hits, protocol)
  return closed_book_prompt(task, protocol)
