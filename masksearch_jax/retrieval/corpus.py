"""Streaming JSONL passage readers for the two common corpus layouts.

Layouts (one JSON object per line):
  * plain:    {"id": ..., "title": ..., "text": ...}
  * wiki-18:  {"id": ..., "contents": "\"Title\"\ntext"}   (FlashRAG / Search-R1)

A 21M-line wiki dump must never sit in memory as Python objects, so `iter_passages` is a generator.
Bad lines raise `CorpusError` naming file and line, unless `skip_bad=True`, in which case they are
skipped and counted in a `ReadStats` the caller passes in (and logged, boundedly).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Iterator

from absl import logging

_MAX_LOGGED_SKIPS = 20


class CorpusError(ValueError):
  """A corpus line that cannot be read; the message names file and line."""


class BadLine(ValueError):
  """Why one line is unusable: a short `reason` (for counting) plus detail."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}{detail}")
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Passage:
  id: str
  title: str
  text: str

  def contents(self) -> str:
    """The wiki-18 `contents` field, which Search-R1 clients expect in responses."""
    return f'"{self.title}"\n{self.text}'


@dataclasses.dataclass
class ReadStats:
  """Counts of a read; `skipped_by_reason` lets a caller report why lines were dropped."""
  read: int = 0
  skipped: int = 0
  skipped_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)


def split_contents(contents: str) -> tuple[str, str]:
  """`"Title"\\ntext` -> (title, text). A first line without quotes is still taken as the title;
  contents without a newline are all text (title empty)."""
  if "\n" not in contents:
    return "", contents
  head, text = contents.split("\n", 1)
  head = head.strip()
  if len(head) >= 2 and head[0] == '"' and head[-1] == '"':
    head = head[1:-1]
  return head, text


def parse_line(line: str) -> Passage:
  """One JSON line -> Passage; raises BadLine (no file/line context: the caller adds it)."""
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise BadLine("invalid JSON", f" ({e.msg} at column {e.colno})") from None
  if not isinstance(obj, dict):
    raise BadLine("expected a JSON object", f", got {type(obj).__name__}")
  if "id" not in obj or obj["id"] is None:
    raise BadLine("missing field 'id'")
  pid = str(obj["id"])
  if "contents" in obj:
    contents = obj["contents"]
    if not isinstance(contents, str):
      raise BadLine("field 'contents' is not a string")
    title, text = split_contents(contents)
  elif "text" in obj:
    text, title = obj["text"], obj.get("title", "")
    if not isinstance(text, str):
      raise BadLine("field 'text' is not a string")
    if not isinstance(title, str):
      raise BadLine("field 'title' is not a string")
  else:
    raise BadLine("missing text", ": neither 'contents' nor 'text' field")
  if not text.strip():
    raise BadLine("empty text")
  return Passage(pid, title, text)


def _id_key(pid: str) -> bytes:
  # 8-byte digests keep the duplicate-id set ~10x smaller than holding the id strings.
  return hashlib.blake2b(pid.encode("utf-8"), digest_size=8).digest()


def iter_passages(path: str | Path, *, skip_bad: bool = False,
                  stats: ReadStats | None = None,
                  check_duplicates: bool = True) -> Iterator[Passage]:
  """Yields passages of a JSONL file in file order; blank lines are ignored.

  Duplicate ids are detected with 8-byte hashes (a hash collision would be reported as a duplicate:
  with 21M ids the chance is ~1e-5).
  """
  path = Path(path)
  stats = stats if stats is not None else ReadStats()
  seen: set[bytes] = set()
  with open(path, "r", encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        p = parse_line(line)
        if check_duplicates:
          key = _id_key(p.id)
          if key in seen:
            raise BadLine("duplicate id", f" {p.id!r}")
          seen.add(key)
      except BadLine as e:
        reason = e.reason
        if not skip_bad:
          raise CorpusError(f"{path}:{lineno}: {e}") from None
        stats.skipped += 1
        stats.skipped_by_reason[reason] = stats.skipped_by_reason.get(reason, 0) + 1
        if stats.skipped <= _MAX_LOGGED_SKIPS:
          logging.warning("skipping %s:%d: %s", path, lineno, e)
        continue
      stats.read += 1
      yield p
