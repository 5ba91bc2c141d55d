"""Salient spans of a paragraph: what RAMP may mask.

Two taggers behind one protocol: `RuleTagger` (no model: dates, numbers with units, capitalised
multi-word names, quoted titles) and `LLMTagger` (a prompt through any `generate` callable — our
sampler or an HTTP endpoint — whose free-form output `parse_span_list` reads without `eval`).
Both drop the page title and any span occurring more than once in the paragraph: a repeated span
leaks its own answer, and the title is the subject the model is told.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Callable, Protocol, Sequence, runtime_checkable

NUMERIC_KINDS = ("date", "number")


@dataclasses.dataclass(frozen=True)
class Span:
  """`text == paragraph[start:end]` always holds."""
  text: str
  start: int
  end: int
  kind: str  # date | number | name | title | concept

  @property
  def is_numeric(self) -> bool:
    return self.kind in NUMERIC_KINDS


@runtime_checkable
class SpanTagger(Protocol):
  def tag(self, text: str, title: str = "") -> list[Span]:
    ...


_MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|November|"
          r"December|Jan\.|Feb\.|Mar\.|Apr\.|Aug\.|Sept?\.|Oct\.|Nov\.|Dec\.)")
_YEAR = r"(?:1[0-9]{3}|20[0-9]{2})"
_DATE = re.compile(
    rf"\b(?:{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+{_YEAR}"  # September 12, 1973
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\s+{_YEAR}"  # 12 September 1973
    rf"|{_MONTH}\s+{_YEAR}"  # September 1973
    rf"|\d{{1,4}}\s+(?:BC|BCE|AD|CE)\b"  # 1600 BC
    rf"|{_YEAR}s?)\b")
_UNITS = (r"(?:%|percent|per cent|km2|km²|km|kilometres|kilometers|miles?|metres|meters|m|ft|feet|"
          r"kg|kilograms?|tonnes|tons|pounds|lb|hectares|acres|square (?:kilometres|kilometers|"
          r"miles|metres|meters)|people|inhabitants|residents|students|employees|members|"
          r"soldiers|seats|copies|episodes|games|goals|points|votes|years|days|hours|minutes|"
          r"seconds|species|cars|volumes|books|films|albums|songs|languages|units)")
_NUMBER = re.compile(
    r"(?<![\w.])(?P<cur>[$£€¥])?(?P<num>\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)"
    r"(?:\s(?P<mult>thousand|million|billion|trillion))?"
    rf"(?:\s?(?P<unit>{_UNITS}))?(?![\w])")
# A capitalised word, an initial ("J."), or a title abbreviation; never a sentence-final period.
_WORD = r"(?:(?:St|Mt|Ft|Dr|Mr|Mrs|Jr|Sr)\.|[A-Z]\.|[A-Z][\w'’]*(?:[-–][A-Z0-9][\w'’]*)*)"
_CONNECT = r"(?:of|the|de|del|della|di|da|du|des|la|le|von|van|der|den|y|for|on|upon)"
_NAME = re.compile(rf"\b{_WORD}(?:\s+(?:{_CONNECT}\s+)*{_WORD})+")
_QUOTED = re.compile(r"[\"“]([^\"”\n\s][^\"”\n]{0,78}[^\"”\n\s]|[^\"”\n\s])[\"”]")
# Sentence-initial function words are capitalised but are not part of a name.
_LEAD_STOP = frozenset(
    "The A An In On At By For From His Her Its Their This That These Those After Before During When "
    "While Although However As With Since Following It He She They We But And Of To Under Between "
    "Despite Upon Within Into Through Unlike Like Also Then Both Each Many Some Most".split())


def _strip_lead(text: str, start: int) -> tuple[str, int]:
  while True:
    head, _, rest = text.partition(" ")
    if head in _LEAD_STOP and rest:
      start += len(head) + 1
      text = rest.lstrip()
      continue
    return text, start


@dataclasses.dataclass(frozen=True)
class RuleTagger:
  """Regex tagger; deterministic and model-free, the default that runs anywhere."""
  min_number_digits: int = 2  # bare numbers shorter than this (without unit) are not salient
  single_names: bool = False  # also tag single capitalised words that are not sentence-initial
  max_span_words: int = 10

  def candidates(self, text: str) -> list[Span]:
    out: list[Span] = []
    for m in _QUOTED.finditer(text):
      q = m.group(1).rstrip(".,;:!? ")  # American style puts punctuation inside the quotes
      if q and len(q.split()) <= self.max_span_words:
        out.append(Span(q, m.start(1), m.start(1) + len(q), "title"))
    for m in _DATE.finditer(text):
      out.append(Span(m.group(0), m.start(), m.end(), "date"))
    for m in _NUMBER.finditer(text):
      has_unit = m.group("cur") or m.group("mult") or m.group("unit")
      if has_unit or len(re.sub(r"\D", "", m.group("num"))) >= self.min_number_digits:
        out.append(Span(m.group(0), m.start(), m.end(), "number"))
    for m in _NAME.finditer(text):
      s, start = _strip_lead(m.group(0), m.start())
      if len(s.split()) >= 2 and len(s.split()) <= self.max_span_words:
        out.append(Span(s, start, start + len(s), "name"))
    if self.single_names:
      for m in re.finditer(r"(?<=[a-z,;] )[A-Z][a-z]{3,}\b", text):
        out.append(Span(m.group(0), m.start(), m.end(), "concept"))
    return out

  def tag(self, text: str, title: str = "") -> list[Span]:
    return select(self.candidates(text), text, title)


_PRIORITY = {"title": 0, "date": 1, "number": 2, "name": 3, "concept": 4}


def _bare_title(title: str) -> str:
  return re.sub(r"\s*\([^)]*\)\s*$", "", title).strip().lower()


def _whole(needle: str) -> str:
  """Pattern for `needle` not glued to word characters at a word-character edge."""
  pre = r"(?<!\w)" if re.match(r"\w", needle) else ""
  post = r"(?!\w)" if re.search(r"\w$", needle) else ""
  return pre + re.escape(needle) + post


def find_whole(needle: str, text: str) -> re.Match | None:
  return re.search(_whole(needle), text) if needle else None


def occurrences(span_text: str, text: str) -> int:
  """Whole-word occurrences (so 'Walker' does not count inside 'Walkers')."""
  return len(re.findall(_whole(span_text), text)) if span_text else 0


def select(cands: Sequence[Span], text: str, title: str = "") -> list[Span]:
  """Non-overlapping spans (longest first), minus the title and spans occurring 2+ times.

  A span naming the title (or part of it) is dropped but still blocks the spans it overlaps, so
  "The Winter Voyage" as a title does not leave "Winter Voyage" behind as a span.
  """
  titles = {title.strip().lower(), _bare_title(title)} - {""}
  taken: list[Span] = []  # chosen and blocked ranges
  chosen: list[Span] = []
  for s in sorted(cands, key=lambda s: (-(s.end - s.start), _PRIORITY.get(s.kind, 9), s.start)):
    assert text[s.start:s.end] == s.text, (s, text[s.start:s.end])
    if not s.text.strip() or any(s.start < c.end and c.start < s.end for c in taken):
      continue
    low = s.text.strip().lower()
    if low in titles or any(occurrences(low, t) for t in titles):
      taken.append(s)
      continue
    if occurrences(s.text, text) != 1:
      continue
    taken.append(s)
    chosen.append(s)
  return sorted(chosen, key=lambda s: s.start)


# ---------------------------------------------------------------- LLM tagger and its output parser
_BULLET = re.compile(r"^\s*(?:[-*•·]|\d{1,3}[.):]|\[\d+\])\s*")


def parse_span_list(output: str) -> list[str]:
  """Reads an LLM's span list: a JSON list (of strings or {"span"/"text": …} objects, possibly in a
  ```json fence or after chatter) or one span per line with bullets/numbers/quotes. Never evals."""
  body = re.sub(r"```(?:json|JSON)?", "\n", output)
  lo, hi = body.find("["), body.rfind("]")
  if 0 <= lo < hi:
    try:
      items = json.loads(body[lo:hi + 1])
    except json.JSONDecodeError:
      items = None
    if isinstance(items, list):
      return _strings(items)
  try:
    obj = json.loads(body)
    if isinstance(obj, dict):
      for key in ("spans", "entities", "salient_spans"):
        if isinstance(obj.get(key), list):
          return _strings(obj[key])
  except json.JSONDecodeError:
    pass
  out = []
  for line in body.splitlines():
    s = _BULLET.sub("", line).strip().rstrip(",").strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
      s = s[1:-1].strip()
    if s and not s.endswith(":") and s not in "[]{}":
      out.append(s)
  return out


def _strings(items: list) -> list[str]:
  out = []
  for it in items:
    if isinstance(it, dict):
      it = next((it[k] for k in ("span", "text", "entity", "name") if isinstance(it.get(k), str)),
                None)
    if isinstance(it, (str, int, float)) and not isinstance(it, bool) and str(it).strip():
      out.append(str(it).strip())
  return out


def locate(strings: Sequence[str], text: str, kind: str = "concept") -> list[Span]:
  """Spans for the strings that are substrings of `text` (first whole-word occurrence)."""
  out = []
  for s in strings:
    m = find_whole(s, text)
    if m:
      numeric = re.fullmatch(r"[$£€¥]?[\d.,]+(?:\s\w+)?", s) or _DATE.fullmatch(s)
      out.append(Span(s, m.start(), m.end(), "number" if numeric else kind))
  return out


DEFAULT_LLM_PROMPT = (
    "Extract the salient spans of the paragraph below: named people, places, organisations, works, "
    "dates, numbers and short key concepts. Copy each span exactly as written. Answer with a JSON "
    "list of strings and nothing else.\n\nParagraph: {text}")


@dataclasses.dataclass(frozen=True)
class LLMTagger:
  """`generate(prompts) -> completions` is our sampler (or an HTTP client) behind one callable."""
  generate: Callable[[Sequence[str]], list[str]]
  prompt: str = DEFAULT_LLM_PROMPT

  def tag_batch(self, texts: Sequence[str], titles: Sequence[str]) -> list[list[Span]]:
    outs = self.generate([self.prompt.format(text=t) for t in texts])
    return [select(locate(parse_span_list(o), t), t, ti) for o, t, ti in zip(outs, texts, titles)]

  def tag(self, text: str, title: str = "") -> list[Span]:
    return self.tag_batch([text], [title])[0]


def chat_generate_fn(sampler, params, tokenizer, *, seed: int = 0,
                     system: str | None = None) -> Callable[[Sequence[str]], list[str]]:
  """Adapts our rollout `Sampler` (built with tools off) to `LLMTagger.generate`: each prompt is
  one user turn of the tokenizer's chat template; returns the decoded completions (`texts`).
  The batch must suit the sampler (e.g. divide its data axis); `LLMTagger.tag_batch` sends one."""
  from masksearch_jax import tokenizer as tok_lib

  def generate(prompts: Sequence[str]) -> list[str]:
    head = [{"role": "system", "content": system}] if system else []
    rendered = [tok_lib.chat_text(tokenizer, head + [{"role": "user", "content": p}],
                                  add_generation_prompt=True) for p in prompts]
    return list(sampler.generate(params, rendered, seed=seed).texts)

  return generate
