"""RL prompts: QA examples or RAMP records from JSONL, in curriculum order, with a resumable cursor.

An example is normalised to the DESIGN.md Example {id, prompt, gold, mask_num, source}:
- QA   {id, question | prompt, golden_answers | gold_answers | answers}  -> prompt = Search-R1's
       question prompt (data/traces.question_prompt), the wording SFT traces use;
- RAMP {id, query, masks, mask_num}                                      -> prompt = query (it
       already carries the RAMP instruction), gold = the ordered masks.
`gold` is what rl.rewards.compute_rewards accepts (a mapping with masks or gold_answers).

The stream's whole state is one integer (examples consumed), saved in the checkpoint's data state,
so a resumed run sees the same prompts as an uninterrupted one.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Sequence

from masksearch_jax import jsonl
from masksearch_jax.data import ramp, traces
from masksearch_jax.protocol import DEFAULT, Protocol

__all__ = ["normalize", "load_examples", "PromptStream"]


def normalize(rec: Any, where: str, protocol: Protocol = DEFAULT) -> dict:
  """One raw record -> Example; ValueError naming `where` (file:line) and the field."""
  if not isinstance(rec, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
  rid = str(rec.get("id", where))
  if rec.get("masks"):
    if not isinstance(rec.get("query"), str):
      raise ValueError(f"{where}: RAMP record needs a string field 'query'")
    masks = rec["masks"]
    if not isinstance(masks, list) or not all(isinstance(m, str) and m for m in masks):
      raise ValueError(f"{where}: field 'masks' must be a list of non-empty strings")
    return {"id": rid, "prompt": rec["query"], "gold": {"masks": masks, "question": rec["query"]},
            "mask_num": int(rec.get("mask_num", len(masks))), "source": rec.get("source", "ramp")}
  question = rec.get("question")
  question = question.strip() if isinstance(question, str) and question.strip() else None
  prompt = rec.get("prompt")
  prompt = prompt if isinstance(prompt, str) and prompt.strip() else None
  if question is None and prompt is None:
    raise ValueError(f"{where}: QA example needs a non-empty string 'question' or 'prompt' "
                     f"(fields: {sorted(rec)})")
  for key in ("golden_answers", "gold_answers", "answers", "answer"):
    gold = rec.get(key)
    if gold:
      break
  else:
    raise ValueError(f"{where}: QA example has no non-empty golden_answers / gold_answers / "
                     f"answers / answer (fields: {sorted(rec)})")
  gold = [gold] if isinstance(gold, str) else list(gold)
  if not all(isinstance(g, str) for g in gold):
    raise ValueError(f"{where}: gold answers must be strings")
  text = prompt if prompt is not None else traces.question_prompt(question, protocol)
  return {"id": rid, "prompt": text,
          "gold": {"gold_answers": gold, "question": question or prompt},
          "mask_num": 0, "source": rec.get("source", "qa")}


def load_examples(paths: Sequence[str | Path], protocol: Protocol = DEFAULT,
                  limit: int | None = None) -> list[dict]:
  out = []
  for path in paths:
    for p, lineno, rec in jsonl.iter_objects(path, what="RL prompts:"):
      out.append(normalize(rec, f"{p}:{lineno}", protocol))
      if limit and len(out) >= limit:
        return out
  if not out:
    raise ValueError(f"RL prompts: no examples in {[str(p) for p in paths]}")
  return out


class PromptStream:
  """Endless prompt order: `staged` (RAMP mask_num 1, 2, ... each shuffled; QA have mask_num 0) or
  `mixed` (one shuffled pool), re-shuffled with a new seed every epoch."""

  def __init__(self, examples: Sequence[dict], curriculum: str = "mixed", seed: int = 0,
               position: int = 0):
    if not examples:
      raise ValueError("PromptStream: no examples")
    if curriculum not in ("staged", "mixed"):
      raise ValueError(f"PromptStream: curriculum={curriculum!r}, expected staged or mixed")
    self.examples, self.curriculum, self.seed = list(examples), curriculum, seed
    self.position = int(position)
    self._epoch, self._order = -1, []

  def _epoch_order(self, epoch: int) -> list[dict]:
    if epoch != self._epoch:
      seed = self.seed * 100003 + epoch
      if self.curriculum == "staged":
        self._order = ramp.curriculum(self.examples, "staged", seed)
      else:
        self._order = list(self.examples)
        random.Random(seed).shuffle(self._order)
      self._epoch = epoch
    return self._order

  def take(self, n: int) -> list[dict]:
    out = []
    for _ in range(n):
      epoch, i = divmod(self.position, len(self.examples))
      out.append(self._epoch_order(epoch)[i])
      self.position += 1
    return out

  def state(self) -> dict:
    return {"position": self.position}
