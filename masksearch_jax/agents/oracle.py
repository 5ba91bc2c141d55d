"""A scripted oracle for the embedded world: correct multi-turn search traces without any model.

It plans from the question's hop chain (which the world records), but every fact it states is read
from real retrieval results: it searches, finds the hit whose text holds the fact, quotes that
sentence in its reasoning, and moves to the next hop with the entity it read. When no query finds
the fact it gives up (returns None), like a judge rejecting a trace — so accepted traces are exactly
those the retriever supports. RAMP samples work the same way, one search per masked context.

  python -m masksearch_jax.agents.oracle --world=DIR --out=DIR/traces.jsonl
(uses the world's lexical retriever, `masksearch_jax.data.world_search`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

from masksearch_jax.data import ramp, spans, traces
from masksearch_jax.protocol import DEFAULT, Hit, Protocol, format_observation
from masksearch_jax.retrieval.types import Retriever

# What to search for / say, per relation of `masksearch_jax.data.world.RELATIONS`.
PHRASES = {  # relation: (search keyword, what is needed, the fact once read)
    "birthplace": ("born in birthplace", "where {s} was born", "{s} was born in {a}"),
    "birth_year": ("born year", "when {s} was born", "{s} was born in {a}"),
    "employer": ("worked for employed by", "which organisation employed {s}", "{s} worked for the {a}"),
    "occupation": ("occupation", "what {s} did for a living", "the occupation of {s} is {a}"),
    "founded_place": ("town founded", "when {s} was founded", "{s} was founded in {a}"),
    "population": ("population residents census", "the population of {s}", "the population of {s} is {a}"),
    "river": ("town river", "which river {s} lies on", "{s} lies on the {a}"),
    "founder": ("founded by founder", "who founded the {s}", "the {s} was founded by {a}"),
    "founded_org": ("founded in year", "when the {s} was founded", "the {s} was founded in {a}"),
    "headquarters": ("headquarters headquartered", "where the {s} is headquartered",
                     "the {s} is headquartered in {a}"),
    "creator": ("completed by creator", "who created \"{s}\"", "\"{s}\" was created by {a}"),
    "work_year": ("completed in year", "when \"{s}\" was completed", "\"{s}\" was completed in {a}"),
}


@dataclasses.dataclass(frozen=True)
class OracleConfig:
  k: int = 3  # hits per search
  protocol: Protocol = DEFAULT


def _contains(needle: str, text: str) -> bool:
  return spans.find_whole(needle, text) is not None


def _sentence(text: str, needle: str) -> str:
  """The sentence of `text` holding `needle` (what the oracle quotes as evidence)."""
  for s in re.split(r"(?<=[.!?])\s+", text):
    if _contains(needle, s):
      return s
  return text


class _Writer:
  """Accumulates the assistant turn; `search` really calls the retriever."""

  def __init__(self, retriever: Retriever, cfg: OracleConfig):
    self.retriever, self.cfg, self.parts, self.num_searches = retriever, cfg, [], 0
    self.thoughts: list[str] = []

  def think(self, text: str) -> None:
    self.thoughts.append(text)  # consecutive thoughts share one <think> block

  def _flush(self) -> None:
    p = self.cfg.protocol
    if self.thoughts:
      self.parts.append(f"{p.think_open}{' '.join(self.thoughts)}{p.think_close}\n")
      self.thoughts = []

  def search(self, query: str) -> list[Hit]:
    p = self.cfg.protocol
    self._flush()
    hits = self.retriever.search([query], self.cfg.k)[0]
    self.num_searches += 1
    self.parts.append(f"{p.search_open} {query} {p.search_close}")
    self.parts.append(format_observation(hits, p))
    return hits

  def answer(self, text: str) -> str:
    p = self.cfg.protocol
    self._flush()
    self.parts.append(f"{p.answer_open} {text} {p.answer_close}")
    return "".join(self.parts)


def _find(hits: Sequence[Hit], needle: str, prefer_title: str) -> int | None:
  """Index of the hit holding `needle`, preferring the subject's own passage."""
  found = [i for i, h in enumerate(hits) if _contains(needle, h.text)]
  own = [i for i in found if hits[i].title == prefer_title]
  return (own or found or [None])[0]


def answer_question(question: dict, retriever: Retriever,
                    cfg: OracleConfig = OracleConfig()) -> traces.Trace | None:
  """A world question {question, golden_answers, hops} -> a trace, or None if search fails."""
  w = _Writer(retriever, cfg)
  subject = question["hops"][0]["subject"]
  for n, hop in enumerate(question["hops"]):
    keyword, say, fact = PHRASES[hop["relation"]]
    need, fact = say.format(s=subject), fact.format(s=subject, a=hop["answer"])
    queries = [f"{subject} {keyword}", subject]
    if n == 0:
      plan = (f"The question asks {len(question['hops'])} things in a chain. " if
              len(question["hops"]) > 1 else "")
      w.think(f"{plan}I need to find {need}. I will search for it.")
    else:
      w.think(f"Now I need to find {need}.")
    idx = None
    for i, q in enumerate(queries):
      if i:
        w.think(f"The results do not say {need}. I will search for {subject} directly.")
      hits = w.search(q)
      idx = _find(hits, hop["answer"], subject)
      if idx is not None:
        break
    if idx is None:
      return None
    evidence = _sentence(hits[idx].text, hop["answer"])
    last = n + 1 == len(question["hops"])
    w.think(f"Doc {idx + 1} ({hits[idx].title}) says: \"{evidence}\" So {fact}"
            + (f", and the answer is {hop['answer']}." if last else "."))
    subject = hop["answer"]
  response = w.answer(question["hops"][-1]["answer"])
  return traces.Trace(traces.question_prompt(question["question"], cfg.protocol), response,
                      list(question["golden_answers"]),
                      {"id": question.get("id"), "type": question.get("type"),
                       "source": "oracle", "num_searches": w.num_searches})


def _words(text: str) -> list[str]:
  return [t for t in re.findall(r"[\w'’,.-]+", text) if re.search(r"\w", t)]


def _context(masked: str, i: int, mask: str = ramp.MASK,
             window: int = 6) -> tuple[str, str, str, list[str]]:
  """Around the i-th mask: (its sentence; the exact text just left of it within the sentence, up
  to 3 words; the same to the right; up to `window` words each side for a query, masks removed)."""
  parts = masked.split(mask)
  sent_left = re.split(r"(?<=[.!?])\s+", parts[i])[-1]
  sent_right = re.split(r"(?<=[.!?])\s+", parts[i + 1])[0]
  sentence = " ".join((sent_left + mask + sent_right).split())
  left = re.search(r"(?:\S+\s+){0,3}\S*$", sent_left).group(0).lstrip()
  right = re.match(r"^\S*(?:\s+\S+){0,3}", sent_right).group(0).rstrip()
  query = _words(sent_left.split(mask)[-1])[-window:] + _words(sent_right.split(mask)[0])[:window]
  return sentence, left, right, query


def fill_masks(record: dict, retriever: Retriever,
               cfg: OracleConfig = OracleConfig()) -> traces.Trace | None:
  """A RAMP record -> a trace that searches for each masked context, or None if search fails."""
  w = _Writer(retriever, cfg)
  masked, masks, title = ramp.masked_text(record, cfg.protocol), record["masks"], record["title"]
  seen: list[Hit] = []
  w.think(f"The text is about {title} and has {len(masks)} masked span"
          f"{'s' if len(masks) > 1 else ''}. I will search for the context of each.")
  for i, span in enumerate(masks):
    sentence, left, right, words = _context(masked, i)
    # The hit must hold the span in its context (left words + span, or span + right words).
    probe = left + span if left.strip() else span + right
    idx = _find(seen, probe, title)
    if idx is not None:
      w.think(f"Mask {i + 1} is in \"{sentence}\"; the {seen[idx].title} passage I already "
              f"found shows it is {span}.")
      continue
    lead = [] if title.lower() in " ".join(words).lower() else [title]
    queries = [" ".join(lead + words)[:200], title]
    for j, q in enumerate(queries):
      if j:
        w.think(f"That did not show mask {i + 1}. I will search for {title} itself.")
      hits = w.search(q)
      idx = _find(hits, probe, title)
      if idx is not None:
        break
    if idx is None:
      return None
    seen = list(hits) + seen
    w.think(f"Doc {idx + 1} ({hits[idx].title}) says: \"{_sentence(hits[idx].text, probe)}\" "
            f"So mask {i + 1} is {span}.")
  response = w.answer(ramp.format_answer(masks))
  return traces.Trace(record["query"], response, list(masks),
                      {"id": record.get("id"), "type": f"ramp_k{record['mask_num']}",
                       "source": "oracle", "num_searches": w.num_searches})


def generate(items: Iterable[dict], retriever: Retriever,
             cfg: OracleConfig = OracleConfig()) -> tuple[list[traces.Trace], dict]:
  """Traces for questions (records with `hops`) and RAMP records (with `masks`); + acceptance."""
  out, total = [], 0
  for it in items:
    total += 1
    t = fill_masks(it, retriever, cfg) if "masks" in it else answer_question(it, retriever, cfg)
    if t is not None:
      out.append(t)
  return out, {"items": total, "accepted": len(out),
               "acceptance_rate": len(out) / total if total else 0.0}


def main(argv: Sequence[str]) -> None:
  del argv
  import json
  from pathlib import Path
  from absl import flags
  from masksearch_jax.data import world_search
  f = flags.FLAGS
  wdir = Path(f.world)
  retriever = world_search.LexicalRetriever.from_jsonl(wdir / "corpus.jsonl")
  items = []
  for name in f.inputs:
    with open(wdir / name, encoding="utf-8") as fh:
      items += [json.loads(line) for line in fh if line.strip()]
  got, stats = generate(items, retriever, OracleConfig(k=f.k))
  out = Path(f.out) if f.out else wdir / "traces.jsonl"
  traces.write_jsonl(out, got)
  print(json.dumps({"out": str(out), **stats}))


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("world", None, "World directory (corpus.jsonl, questions, ramp).",
                      required=True)
  flags.DEFINE_list("inputs", ["questions_train.jsonl", "ramp.jsonl"],
                    "Files in --world to answer: world questions and/or RAMP records.")
  flags.DEFINE_string("out", None, "Output traces JSONL (default: WORLD/traces.jsonl).")
  flags.DEFINE_integer("k", 3, "Hits per search.")
  app.run(main)
