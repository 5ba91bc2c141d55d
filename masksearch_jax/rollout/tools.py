"""The host half of the tool protocol: stop detection in text, the malformed-output rules, the
retriever call (once per round, with a timeout) and observation tokenisation under a budget.

Stop rule. The device loop stops a row as soon as its last policy tokens equal the token ids of a
stop tag tokenised on its own (`stop_id_sequences`): the exact, cheap fast path. Because a BPE may
tokenise a tag differently inside text, the host also decodes each row's current turn after every
decode chunk and looks for the stop strings; the text check is authoritative. When it finds a stop
the device missed, the row is rolled back to the shortest token prefix whose text contains it
(tokens after it are discarded; the KV cache only needs its `end` moved back).

Per turn (the text since the last observation), the earliest stop string decides:
  `</answer>`      -> finish ANSWER if an `<answer>` opens before it in the turn, else MALFORMED.
  user stop string -> finish STOP.
  `</search>`      -> no `<search>` before it in the turn            -> finish MALFORMED
                      query contains any protocol tag (e.g. <answer>) -> finish MALFORMED
                      no search turns left                            -> finish MAX_TURNS
                      empty query                  -> error observation (uses a turn), continue
                      otherwise                                       -> retrieve, splice, continue
No stop string, device saw EOS / hit the length limit -> EOS / LENGTH, but MALFORMED when the turn
has an unclosed `<search>`. Text is decoded with invalid UTF-8 replaced by U+FFFD (never raises);
a query with replacement characters is sent as it is.
A retriever exception, timeout or malformed result gives every query of that round an error
observation (`format_error_observation`), counted in `num_tool_errors`; the rollout goes on (at
most one call per retriever is in flight: `call_retriever`).
A search call or empty query that closes exactly at the row's length limit leaves no room for an
observation: the row finishes LENGTH and the retriever is not called for it.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Sequence

from absl import logging

from masksearch_jax import protocol as proto
from masksearch_jax.rollout import types as T

SEARCH, ANSWER, STOP = "search", "answer", "stop"


def encode(tokenizer, text: str) -> list[int]:
  return list(tokenizer.encode(text, add_special_tokens=False))


def safe_decode(tokenizer, ids: Sequence[int]) -> str:
  """Decode that never raises: invalid UTF-8 becomes U+FFFD, unknown ids are skipped."""
  ids = [int(i) for i in ids]
  try:
    out = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
  except Exception:                                  # e.g. an id outside the tokenizer's vocab
    parts = []
    for i in ids:
      try:
        parts.append(tokenizer.decode([i], skip_special_tokens=False,
                                      clean_up_tokenization_spaces=False))
      except Exception:
        parts.append("\ufffd")
    out = "".join(parts)
  if isinstance(out, bytes):
    out = out.decode("utf-8", errors="replace")
  return out


def stop_strings(rcfg: T.RolloutConfig, protocol: proto.Protocol) -> list[tuple[str, str]]:
  """(string, kind) pairs the host looks for, in priority order for equal end positions."""
  out = []
  if rcfg.use_tools:
    out += [(protocol.answer_close, ANSWER), (protocol.search_close, SEARCH)]
  out += [(s, STOP) for s in rcfg.stop_strings if s]
  return out


def stop_id_sequences(tokenizer, rcfg: T.RolloutConfig, protocol: proto.Protocol):
  """The device loop's fast-path stops: every stop string tokenised alone and after a space (the
  two ways BPE vocabularies commonly split a tag in running text), duplicates dropped."""
  out = []
  for s, _ in stop_strings(rcfg, protocol):
    for variant in (s, " " + s):
      ids = tuple(encode(tokenizer, variant))
      if ids and ids not in out:
        out.append(ids)
  return tuple(out)


def find_stop(text: str, stops: list[tuple[str, str]]) -> tuple[str, str] | None:
  """The stop (string, kind) whose first occurrence ends earliest in `text`."""
  best, best_end = None, None
  for s, kind in stops:
    i = text.find(s)
    if i >= 0 and (best_end is None or i + len(s) < best_end):
      best, best_end = (s, kind), i + len(s)
  return best


def cut_at(tokenizer, ids: Sequence[int], s: str) -> int:
  """Smallest k such that decode(ids[:k]) contains s (binary search; len(ids) if it never does)."""
  lo, hi = 1, len(ids)
  while lo < hi:
    mid = (lo + hi) // 2
    if s in safe_decode(tokenizer, ids[:mid]):
      hi = mid
    else:
      lo = mid + 1
  return hi


@dataclasses.dataclass(frozen=True)
class Decision:
  """What the host does with a row after a chunk. `cut`: turn tokens kept (None = all)."""
  action: str                  # "continue" | "finish" | "search" | "error_obs"
  reason: str | None = None    # finish reason when action == "finish"
  query: str | None = None
  message: str | None = None   # error observation text
  cut: int | None = None


def _unclosed_search(text: str, p: proto.Protocol) -> bool:
  return text.rfind(p.search_open) > text.rfind(p.search_close)


def decide(tokenizer, turn_ids: Sequence[int], device_reason: str | None, turns_used: int,
           rcfg: T.RolloutConfig, p: proto.Protocol, checked: int = 0) -> Decision:
  """Applies the module's rules to one row's current turn. device_reason: EOS, LENGTH, "ids"
  (a stop-id sequence matched) or None (chunk ended with the row still running).
  checked: turn tokens already searched without a stop (earlier chunks); only the tail after them
  (plus a margin for stops straddling the boundary) is decoded while the row keeps running."""
  stops = stop_strings(rcfg, p)
  if device_reason is None:
    if not stops:
      return Decision("continue")
    margin = 2 * max(len(s) for s, _ in stops) + 4          # a token holds >= 1 char, or a byte
    tail = safe_decode(tokenizer, turn_ids[max(0, checked - margin):])
    if find_stop(tail, stops) is None:
      return Decision("continue")
  text = safe_decode(tokenizer, turn_ids)
  hit = find_stop(text, stops)
  if hit is None:
    if device_reason in (T.EOS, T.LENGTH):
      return Decision("finish", T.MALFORMED if rcfg.use_tools and _unclosed_search(text, p)
                      else device_reason)
    if device_reason == "ids":   # ids matched but the text does not show the tag: cannot trust it
      logging.warning("stop ids matched but decoded turn has no stop string: %r", text[-80:])
      return Decision("finish", T.MALFORMED)
    return Decision("continue")
  s, kind = hit
  cut = cut_at(tokenizer, turn_ids, s)
  text = safe_decode(tokenizer, turn_ids[:cut])
  if kind == STOP:
    return Decision("finish", T.STOP, cut=cut)
  if kind == ANSWER:
    ok = p.extract_answer(text) is not None
    return Decision("finish", T.ANSWER if ok else T.MALFORMED, cut=cut)
  query = p.last_search_query(text)
  if query is None or any(tag in query for tag in p.all_tags):
    return Decision("finish", T.MALFORMED, cut=cut)
  if turns_used >= rcfg.max_turns:
    return Decision("finish", T.MAX_TURNS, cut=cut)
  if not query:
    return Decision("error_obs", message="empty query", cut=cut)
  return Decision("search", query=query, cut=cut)


# id(retriever) -> the worker of its last call. A timed-out worker cannot be killed and may still
# be inside retriever.search; at most one call per retriever is in flight (see call_retriever).
_WORKERS: dict[int, threading.Thread] = {}
_WORKERS_LOCK = threading.Lock()


def call_retriever(retriever, queries: list[str], k: int,
                   timeout_s: float) -> tuple[list[list[Any]] | None, str | None]:
  """One batched search in a worker thread. Returns (hits per query, None) or (None, error).

  A call that times out leaves its worker running. The next call to the same retriever first
  waits up to `timeout_s` for it; if it is still running, that round gets a "busy" error at once
  instead of a second, concurrent search: threads never pile up behind a stuck retriever, and a
  retriever that is not thread-safe is never entered twice."""
  with _WORKERS_LOCK:
    prev = _WORKERS.get(id(retriever))
  if prev is not None and prev.is_alive():
    prev.join(timeout_s)
    if prev.is_alive():
      logging.warning("retriever still busy with a timed-out call; %d queries not sent",
                      len(queries))
      return None, "retriever busy with an earlier timed-out call"
  box: dict[str, Any] = {}

  def work():
    try:
      box["out"] = retriever.search(queries, k)
    except Exception as e:                            # any retriever failure is recoverable
      box["err"] = f"{type(e).__name__}: {e}"

  th = threading.Thread(target=work, daemon=True, name="rollout-retriever")
  with _WORKERS_LOCK:
    for key in [key for key, w in _WORKERS.items() if not w.is_alive()]:
      del _WORKERS[key]                               # finished workers: nothing to wait for
    _WORKERS[id(retriever)] = th
  th.start()
  th.join(timeout_s)
  if th.is_alive():
    logging.warning("retriever timed out after %gs (%d queries)", timeout_s, len(queries))
    return None, f"retriever timed out after {timeout_s:g}s"
  if "err" in box:
    return None, box["err"][:200]
  out = box.get("out")
  if not isinstance(out, (list, tuple)) or len(out) != len(queries):
    return None, f"retriever returned {type(out).__name__} of wrong length for {len(queries)} queries"
  return [list(h)[:k] for h in out], None


def observation_ids(tokenizer, text: str, budget: int, p: proto.Protocol) -> list[int]:
  """Tokenised observation of at most `budget` tokens. The passage body is truncated first so the
  closing tag survives; if even the wrapper does not fit, the ids are cut hard."""
  ids = encode(tokenizer, text)
  if len(ids) <= budget:
    return ids
  empty = proto.format_observation([], p)
  cut = empty.find(p.info_close)
  head, tail = empty[:cut], empty[cut:]
  if text.startswith(head) and text.endswith(tail):
    h, t = encode(tokenizer, head), encode(tokenizer, tail)
    room = budget - len(h) - len(t)
    if room >= 0:
      body = encode(tokenizer, text[len(head):len(text) - len(tail)])
      return h + body[:room] + t
  return ids[:budget]
