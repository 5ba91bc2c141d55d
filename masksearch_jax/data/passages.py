"""Paragraphs for RAMP: reading corpus layouts and filtering paragraphs as MaskSearch's pipeline does.

RAMP masks spans of *prose*; lists, navigation lines and section headers make masks that no search
can recover, so they are dropped before tagging. Rules (MaskSearch reference pipeline): drop
list-like lines, lines with 2+ '/', lines starting with '*', lines ending with ':'; prepend the page
title when the paragraph does not contain it, so every sample names its subject. The word minimum and
the title separator are our choices (flags of `ParagraphFilter`).

Layouts: KILT pages `{"wikipedia_title", "text": [paragraphs]}` are read here; the JSONL passage
layouts (`{id,title,text}`, wiki-18 `{id,contents}`) through `masksearch_jax.retrieval.corpus`.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Iterator

from masksearch_jax import jsonl
from masksearch_jax.retrieval import corpus as corpus_lib


class PassageError(ValueError):
  """A corpus line that cannot be read; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class Paragraph:
  """One paragraph of one page; `key` is unique and stable, so per-paragraph seeds can use it."""
  key: str
  title: str
  text: str
  source: str


@dataclasses.dataclass(frozen=True)
class ParagraphFilter:
  min_words: int = 12  # ours: shorter paragraphs rarely hold 2+ salient spans
  max_words: int = 400
  title_sep: str = ": "  # ours: "Title: paragraph" when the paragraph lacks its title
  prepend_title: bool = True


# KILT markup for section headers and bullets; a bare "-"/"•"/"1." opener is a list item.
_LIST_PREFIX = re.compile(r"^\s*(?:BULLET::::|Section::::|[-•·–]\s|\d{1,3}[.)]\s|#)")


def is_list_like(line: str) -> bool:
  """List items, KILT headers, and lines that are mostly separators/tabs (tables)."""
  s = line.strip()
  if _LIST_PREFIX.match(s):
    return True
  if s.count("\t") >= 2 or s.count("|") >= 2:
    return True
  return False


def keep_paragraph(line: str, cfg: ParagraphFilter = ParagraphFilter()) -> bool:
  s = line.strip()
  if not s:
    return False
  if is_list_like(s) or s.count("/") >= 2 or s.startswith("*") or s.endswith(":"):
    return False
  n = len(s.split())
  return cfg.min_words <= n <= cfg.max_words


def with_title(text: str, title: str, cfg: ParagraphFilter = ParagraphFilter()) -> str:
  """Prepends the title when the paragraph does not mention it (case-insensitive)."""
  text = text.strip()
  if not cfg.prepend_title or not title or title.lower() in text.lower():
    return text
  # "Ed Wood (film)" is mentioned as "Ed Wood": the disambiguation suffix is not text.
  bare = re.sub(r"\s*\([^)]*\)\s*$", "", title).strip()
  if bare and bare.lower() in text.lower():
    return text
  return f"{title}{cfg.title_sep}{text}"


def read_kilt_pages(path: str | Path) -> Iterator[tuple[str, list[str]]]:
  """Yields (title, paragraphs) per KILT page line; errors name file and line."""
  try:
    for p, lineno, obj in jsonl.iter_objects(path, what="KILT file"):
      title, paras = obj.get("wikipedia_title"), obj.get("text")
      if not isinstance(title, str):
        raise PassageError(f"{p}:{lineno}: field 'wikipedia_title' missing or not a string")
      if not isinstance(paras, list) or not all(isinstance(x, str) for x in paras):
        raise PassageError(f"{p}:{lineno}: field 'text' must be a list of strings")
      yield title, paras
  except jsonl.JsonlError as e:
    raise PassageError(str(e)) from None


def detect_layout(path: str | Path) -> str:
  """'kilt' when the first non-blank line has `wikipedia_title`, else 'jsonl' (corpus.py layouts)."""
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        try:
          obj = json.loads(line)
        except json.JSONDecodeError:
          return "jsonl"  # corpus.py reports the bad line with its number
        return "kilt" if isinstance(obj, dict) and "wikipedia_title" in obj else "jsonl"
  return "jsonl"


def iter_paragraphs(path: str | Path, *, layout: str = "auto",
                    cfg: ParagraphFilter = ParagraphFilter(),
                    source: str | None = None) -> Iterator[Paragraph]:
  """Streams filtered, title-prefixed paragraphs of a corpus file in file order.

  KILT pages split into their paragraphs; a JSONL passage is one paragraph (its lines are joined,
  since wiki-18 passages are 100-word windows, not paragraphs).
  """
  path = Path(path)
  source = source or path.stem
  layout = detect_layout(path) if layout == "auto" else layout
  if layout == "kilt":
    for title, paras in read_kilt_pages(path):
      for i, p in enumerate(paras):
        if keep_paragraph(p, cfg) and p.strip() != title:
          yield Paragraph(f"{title}#{i}", title, with_title(p, title, cfg), source)
  elif layout == "jsonl":
    for p in corpus_lib.iter_passages(path, check_duplicates=False):
      text = " ".join(p.text.split("\n")).strip()
      if keep_paragraph(text, cfg):
        yield Paragraph(p.id, p.title, with_title(text, p.title, cfg), source)
  else:
    raise ValueError(f"unknown layout {layout!r}; expected auto, kilt or jsonl")
