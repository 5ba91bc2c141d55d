"""The tool-call protocol (Search-R1 / MaskSearch tags): the one place that owns the tag strings.

The policy writes `<think>…</think>`, `<search> q </search>`, and finally `<answer> … </answer>`;
the environment (never the policy) writes `<information> … </information>` after each search.
Everything else — sampler, traces, rewards, viewer, eval — imports these names and helpers, so a
changed protocol is a changed `Protocol` value, not an edit across the code base.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Protocol:
  think_open: str = "<think>"
  think_close: str = "</think>"
  search_open: str = "<search>"
  search_close: str = "</search>"
  info_open: str = "<information>"
  info_close: str = "</information>"
  answer_open: str = "<answer>"
  answer_close: str = "</answer>"

  @property
  def all_tags(self) -> tuple[str, ...]:
    return (self.think_open, self.think_close, self.search_open, self.search_close,
            self.info_open, self.info_close, self.answer_open, self.answer_close)

  def last_search_query(self, text: str) -> str | None:
    """Query of the last *closed* search call in `text`, stripped; None if there is none."""
    end = text.rfind(self.search_close)
    if end < 0:
      return None
    start = text.rfind(self.search_open, 0, end)
    if start < 0:
      return None
    return text[start + len(self.search_open):end].strip()

  def extract_answer(self, text: str) -> str | None:
    """Content of the last closed answer tag (stripped), or None when no answer was closed."""
    end = text.rfind(self.answer_close)
    if end < 0:
      return None
    start = text.rfind(self.answer_open, 0, end)
    if start < 0:
      return None
    return text[start + len(self.answer_open):end].strip()

  def observations(self, text: str) -> list[str]:
    """The contents of every `<information>…</information>` block, in order."""
    pat = re.escape(self.info_open) + r"(.*?)" + re.escape(self.info_close)
    return re.findall(pat, text, flags=re.S)

  def strip_information(self, text: str) -> str:
    """Drops every `<information>…</information>` block (what the environment wrote)."""
    pat = re.escape(self.info_open) + r".*?" + re.escape(self.info_close)
    return re.sub(pat, "", text, flags=re.S)


DEFAULT = Protocol()


@dataclasses.dataclass(frozen=True)
class Hit:
  """One retrieved passage; `score` is the retriever's similarity (higher is better)."""
  id: str
  title: str
  text: str
  score: float


def format_observation(hits: Sequence[Hit], protocol: Protocol = DEFAULT) -> str:
  """Search-R1's observation text: `Doc i(Title: t) text` lines inside the information tags."""
  lines = [f"Doc {i + 1}(Title: {h.title}) {h.text}" for i, h in enumerate(hits)]
  body = "\n".join(lines)
  return f"\n\n{protocol.info_open}{body}{protocol.info_close}\n\n"


def format_error_observation(message: str, protocol: Protocol = DEFAULT) -> str:
  """What the model sees when the retriever failed: short, and still well-formed."""
  return f"\n\n{protocol.info_open}Search failed: {message}{protocol.info_close}\n\n"
