"""The one trace format: a prompt plus the assistant's text in the tag protocol, and its encoding.

`encode` renders a trace through the tokenizer's chat template and returns `tokens, loss_mask`
(1 = written by the policy). It tokenizes piece by piece — prompt, each span the model wrote, each
`<information>` block the environment wrote — exactly as a rollout splices observation tokens into
what the model sampled, so SFT and RL see the same token layout.

Mask layout:  <|im_start|>system…user…<|im_start|>assistant\n   -> 0
              model text (think/search/answer)                    -> 1
              "\n\n<information>…</information>\n\n"               -> 0
              <|im_end|> closing the assistant turn              -> 1 (the model must learn to stop)
              "\n" the template writes after it                  -> 0

The "\n\n" framing around an observation is what `protocol.format_observation` writes and what the
sampler splices in, so by default (`env_framing=True`) it is environment text: the token pieces are
then exactly the rollout's, for any tokenizer (with Qwen's, "</search>\n\n" tokenised as one piece
would merge ">" and the newlines). `env_framing=False` masks only the tags and their content.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from masksearch_jax import jsonl, tokenizer as tok_lib
from masksearch_jax.protocol import DEFAULT, Protocol


class TraceError(ValueError):
  """A trace record that cannot be read; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class Trace:
  prompt: str | list[dict[str, str]]  # user text, or the chat messages before the assistant turn
  response: str  # the assistant turn, in the tag protocol, <information> blocks included
  gold: list[str] = dataclasses.field(default_factory=list)  # gold answers (RAMP: the masks)
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def messages(self) -> list[dict[str, str]]:
    if isinstance(self.prompt, str):
      return [{"role": "user", "content": self.prompt}]
    return [dict(m) for m in self.prompt]

  def to_json(self) -> dict:
    return {"prompt": self.prompt, "response": self.response, "gold": list(self.gold),
            "meta": self.meta}

  @classmethod
  def from_json(cls, obj: Any) -> "Trace":
    """Raises ValueError naming the bad field."""
    if not isinstance(obj, dict):
      raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("prompt", "response"):
      if key not in obj:
        raise ValueError(f"missing field {key!r}")
    prompt, response = obj["prompt"], obj["response"]
    if isinstance(prompt, list):
      if not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                 and isinstance(m.get("content"), str) for m in prompt):
        raise ValueError("field 'prompt': messages need string 'role' and 'content'")
    elif not isinstance(prompt, str):
      raise ValueError("field 'prompt' must be a string or a list of messages")
    if not isinstance(response, str):
      raise ValueError("field 'response' must be a string")
    gold = obj.get("gold", [])
    gold = [gold] if isinstance(gold, str) else gold
    if not isinstance(gold, list) or not all(isinstance(g, str) for g in gold):
      raise ValueError("field 'gold' must be a string or a list of strings")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
      raise ValueError("field 'meta' must be an object")
    return cls(prompt, response, gold, meta)


def segments(response: str, protocol: Protocol = DEFAULT,
             env_framing: bool = True) -> list[tuple[str, bool]]:
  """(text, written_by_model) pieces; an unclosed <information> runs to the end (truncation)."""
  out: list[tuple[str, bool]] = []
  nl = "(?:\n\n)?" if env_framing else ""
  pat = re.compile(nl + re.escape(protocol.info_open) + r".*?(?:" + re.escape(protocol.info_close)
                   + nl + r"|\Z)", re.S)
  pos = 0
  for m in pat.finditer(response):
    if m.start() > pos:
      out.append((response[pos:m.start()], True))
    out.append((m.group(0), False))
    pos = m.end()
  if pos < len(response):
    out.append((response[pos:], True))
  return out


def encode(trace: Trace, tokenizer, protocol: Protocol = DEFAULT,
           env_framing: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """-> tokens [T] int32, loss_mask [T] int32 (1 on tokens the policy writes)."""
  prefix = tok_lib.chat_text(tokenizer, trace.messages(), add_generation_prompt=True)
  ids: list[int] = tok_lib.encode(tokenizer, prefix)
  mask: list[int] = [0] * len(ids)
  for text, trainable in segments(trace.response, protocol, env_framing):
    piece = tok_lib.encode(tokenizer, text)
    ids += piece
    mask += [int(trainable)] * len(piece)
  ids.append(tok_lib.eos_id(tokenizer))
  mask.append(1)
  tail = tok_lib.encode(tokenizer, "\n")
  ids += tail
  mask += [0] * len(tail)
  return np.asarray(ids, np.int32), np.asarray(mask, np.int32)


# ------------------------------------------------------------------------------------- JSONL I/O
def write_jsonl(path: str | Path, traces: Iterable[Trace]) -> int:
  n = 0
  with open(path, "w", encoding="utf-8") as f:
    for t in traces:
      f.write(json.dumps(t.to_json(), ensure_ascii=False) + "\n")
      n += 1
  return n


def iter_jsonl(path: str | Path) -> Iterator[Trace]:
  try:
    for p, lineno, obj in jsonl.iter_objects(path, what="trace file"):
      try:
        yield Trace.from_json(obj)
      except ValueError as e:
        raise TraceError(f"{p}:{lineno}: {e}") from None
  except jsonl.JsonlError as e:
    raise TraceError(str(e)) from None


def read_jsonl(path: str | Path) -> list[Trace]:
  return list(iter_jsonl(path))


# ------------------------------------------------------------------------ prompts and transcripts
def question_prompt(question: str, protocol: Protocol = DEFAULT) -> str:
  """Search-R1's user prompt for a question (the wording its checkpoints were trained on)."""
  p = protocol
  return (
      f"Answer the given question. You must conduct reasoning inside {p.think_open} and "
      f"{p.think_close} first every time you get new information. After reasoning, if you find you lack some knowledge, you can call a search engine by "
      f"{p.search_open} query {p.search_close} and it will return the top searched results between "
      f"{p.info_open} and {p.info_close}. You can search as many times as your want. If you find "
      f"no further external knowledge needed, you can directly provide the answer inside "
      f"{p.answer_open} and {p.answer_close}, without detailed illustrations. For example, "
      f"{p.answer_open} Beijing {p.answer_close}. Question: {question}\n")


_TURN = re.compile(re.escape(tok_lib.IM_START) + r"(system|user|assistant)\n(.*?)(?="
                   + re.escape(tok_lib.IM_END) + "|" + re.escape(tok_lib.IM_START) + r"|\Z)",
                   re.S)


def parse_transcript(text: str) -> list[Trace]:
  """Rendered chat text (e.g. Search-R1's example case) -> one Trace per assistant turn.

  An assistant turn not closed by <|im_end|> ends at the next <|im_start|> (trailing whitespace
  dropped) — transcripts dumped from rollouts often lack it.
  """
  traces, history = [], []
  for m in _TURN.finditer(text):
    role, content = m.group(1), m.group(2)
    closed = text.startswith(tok_lib.IM_END, m.end())
    if role == "assistant":
      traces.append(Trace(history, content if closed else content.rstrip()))
      history = []
    else:
      if role == "system" and history:
        history = []  # a new conversation started without an assistant turn
      history = history + [{"role": role, "content": content}]
  return traces


def strip_observations(response: str, protocol: Protocol = DEFAULT, env_framing: bool = True) -> str:
  """The policy-written text of a response: what `encode`'s loss mask covers (before <|im_end|>)."""
  return "".join(t for t, trainable in segments(response, protocol, env_framing) if trainable)
