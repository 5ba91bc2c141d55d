"""Splits a tag-protocol response into ordered segments and rollout records into a checked form.

Why here and not in protocol.py: the viewer needs a lossless split (every character lands in some
segment, unclosed tags of truncated generations included), which training code never needs.
Tag strings still come from `masksearch_jax.protocol`.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping

from masksearch_jax.protocol import DEFAULT, Hit, Protocol


@dataclasses.dataclass(frozen=True)
class Segment:
  kind: str            # "think" | "search" | "information" | "answer" | "text"
  text: str            # stripped content (without the tags)
  closed: bool = True  # False for a tag the generation never closed (truncated output)
  turn: int = 0        # increments after each information block (= one tool round trip)
  hits: tuple[Hit, ...] = ()


@dataclasses.dataclass(frozen=True)
class Rollout:
  id: str
  source: str
  prompt: str
  response: str
  gold: list[str]
  reward: dict[str, float]
  extra: dict[str, Any]

  @property
  def total(self) -> float:
    return self.reward.get("total", 0.0)


def _pairs(p: Protocol) -> list[tuple[str, str, str]]:
  return [(p.think_open, p.think_close, "think"), (p.search_open, p.search_close, "search"),
          (p.info_open, p.info_close, "information"), (p.answer_open, p.answer_close, "answer")]


_DOC = re.compile(r"^Doc (\d+)\(Title: (.*?)\)(?: (.*))?$")


def parse_information(body: str) -> tuple[Hit, ...]:
  """`Doc i(Title: t) text` lines (protocol.format_observation) -> hits; other lines join the last hit."""
  hits: list[list[str]] = []
  for line in body.strip().splitlines():
    m = _DOC.match(line.strip())
    if m:
      hits.append([m.group(1), m.group(2), m.group(3) or ""])
    elif hits:
      hits[-1][2] += "\n" + line
    elif line.strip():
      return ()  # not the Doc layout (e.g. "Search failed: ..."): the caller shows raw text
  return tuple(Hit(id=i, title=t.strip(), text=x.strip(), score=float("nan")) for i, t, x in hits)


def split_response(text: str, protocol: Protocol = DEFAULT) -> list[Segment]:
  """Lossless, ordered split of `text` into tagged segments and free text between them."""
  pairs = _pairs(protocol)
  opener = re.compile("|".join(re.escape(o) for o, _, _ in pairs))
  out: list[Segment] = []
  pos, turn = 0, 0
  while pos < len(text):
    m = opener.search(text, pos)
    if m is None:
      break
    if text[pos:m.start()].strip():
      out.append(Segment("text", text[pos:m.start()].strip(), turn=turn))
    _, close, kind = next(p for p in pairs if p[0] == m.group(0))
    end = text.find(close, m.end())
    body = text[m.end():] if end < 0 else text[m.end():end]
    hits = parse_information(body) if kind == "information" else ()
    out.append(Segment(kind, body.strip(), closed=end >= 0, turn=turn, hits=hits))
    if kind == "information":
      turn += 1
    pos = len(text) if end < 0 else end + len(close)
  if text[pos:].strip():
    out.append(Segment("text", text[pos:].strip(), turn=turn))
  return out


def _float(v: Any, where: str) -> float:
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    raise ValueError(f"{where} is {v!r}, not a number")
  return float(v)


def parse_rollout(rec: Mapping[str, Any], where: str) -> Rollout:
  """Checks one rollout record {id, source, prompt, response, gold, reward{total,...}}."""
  if not isinstance(rec, Mapping):
    raise ValueError(f"{where}: expected a JSON object")
  for key in ("response", "reward"):
    if key not in rec:
      raise ValueError(f"{where}: missing field '{key}' (has {sorted(rec)})")
  if not isinstance(rec["response"], str):
    raise ValueError(f"{where}: field 'response' must be a string")
  reward = rec["reward"]
  if isinstance(reward, (int, float)) and not isinstance(reward, bool):
    reward = {"total": reward}
  if not isinstance(reward, Mapping) or "total" not in reward:
    raise ValueError(f"{where}: field 'reward' must be a number or an object with 'total'")
  parts = {str(k): _float(v, f"{where}: reward.{k}") for k, v in reward.items()}
  gold = rec.get("gold", [])
  gold = [gold] if isinstance(gold, str) else [str(g) for g in (gold or [])]
  known = {"id", "source", "prompt", "response", "gold", "reward"}
  return Rollout(id=str(rec.get("id", where)), source=str(rec.get("source", "unknown")),
                 prompt=str(rec.get("prompt", "")), response=rec["response"], gold=gold, reward=parts,
                 extra={k: v for k, v in rec.items() if k not in known})


def load_rollouts(path: str | Path, limit: int | None = None) -> list[Rollout]:
  """Reads rollouts JSONL; bad lines raise ValueError naming file:line."""
  path = Path(path)
  out = []
  with path.open(encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      if limit is not None and len(out) >= limit:
        break
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: invalid JSON: {e}") from e
      out.append(parse_rollout(rec, f"{path}:{lineno}"))
  return out
