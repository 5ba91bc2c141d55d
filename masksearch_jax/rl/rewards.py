"""Rewards for DAPO: strict format, answer overlap (recall / F1 / EM) with a length penalty, judge.

Host-side and pure: strings in, NumPy arrays out (one value per response), so the trainer can log
every part and jit only the loss. `compute_rewards` is the one entry point; the parts are public
for tests, the viewer and evaluation.

Format (`check_format`): a small explicit state machine over tag tokens rather than one regex, so
every rejection says *why* (which tag, at which character). Rules, for the decoded response
(everything after the prompt, `<information>` blocks included, special tokens such as
`<|im_end|>` already stripped by the caller):
- outside tags there is nothing but whitespace;
- blocks come in the order think, (search, information, think)*, answer; nothing follows the answer;
- no tag opens inside another block and every block is closed (`<information>` content is written
  by the environment, so inside it only its own close tag is looked for);
- search queries and answers are non-empty after stripping.

Answer (`answer_score`), on the content of the last closed `<answer>`:
- QA: gold is a list of answers; score = max over golds of metric(answer, gold) (eval/metrics.py).
- RAMP: gold is the ordered list of masked spans; the answer lists the predicted spans in the same
  order separated by `RewardConfig.span_separator` (default ";"). Span i is scored against mask i
  with the same metric; the reward is the mean over masks (a missing span scores 0, extra spans are
  ignored). Spans, not the filled paragraph, because the paragraph's copied context would dominate
  every overlap metric.
- Length penalty (recall only; F1 and EM already punish padding): recall rewards an answer that
  lists many candidates, so the score is multiplied by min(1, allowed / n_pred) where n_pred is the
  number of normalised answer tokens and allowed = max(ceil(length_ratio * n_gold),
  n_gold + length_slack). With the defaults (2.0, 1) a one-token gold allows two tokens.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from typing import Any, Callable, Mapping, Protocol as _Protocol, Sequence, runtime_checkable

import numpy as np

from masksearch_jax.eval import metrics
from masksearch_jax.protocol import DEFAULT, Protocol
from masksearch_jax.rl.dapo import overlong_penalty

__all__ = ["FormatResult", "check_format", "length_penalty_factor", "answer_score", "Gold",
           "as_gold", "Judge",
           "LMJudge", "parse_verdict", "RewardConfig", "compute_rewards"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- format

@dataclasses.dataclass(frozen=True)
class FormatResult:
  ok: bool
  reason: str = ""          # empty when ok
  num_searches: int = 0     # completed search -> information rounds


# What may come next after each state: START, after a think / search / information / answer block.
_NEXT = {
    "start": ("think",),
    "think": ("search", "answer"),
    "search": ("information",),
    "information": ("think",),
    "answer": (),
}


def _blocks(p: Protocol) -> dict[str, tuple[str, str]]:
  return {"think": (p.think_open, p.think_close), "search": (p.search_open, p.search_close),
          "information": (p.info_open, p.info_close), "answer": (p.answer_open, p.answer_close)}


def _next_tag(text: str, pos: int, tags: tuple[str, ...]) -> tuple[int, str]:
  """Earliest occurrence of any tag at or after pos: (index, tag); (-1, "") when none."""
  best, best_tag = -1, ""
  for t in tags:
    i = text.find(t, pos)
    if i >= 0 and (best < 0 or i < best or (i == best and len(t) > len(best_tag))):
      best, best_tag = i, t
  return best, best_tag


def check_format(text: str, protocol: Protocol = DEFAULT) -> FormatResult:
  """Runs the state machine over `text`; FormatResult.ok is the strict verdict."""
  blocks = _blocks(protocol)
  opens = {o: name for name, (o, _) in blocks.items()}
  all_tags = protocol.all_tags
  state, pos, searches = "start", 0, 0
  while True:
    i, tag = _next_tag(text, pos, all_tags)
    gap = text[pos:] if i < 0 else text[pos:i]
    if gap.strip():
      where = "after the answer" if state == "answer" else "outside tags"
      return FormatResult(False, f"text {where} at char {pos}: {gap.strip()[:40]!r}", searches)
    if i < 0:
      if state != "answer":
        return FormatResult(False, f"ended without an answer (last block: {state})", searches)
      return FormatResult(True, "", searches)
    if tag not in opens:
      return FormatResult(False, f"unexpected closing tag {tag} at char {i}", searches)
    name = opens[tag]
    if name not in _NEXT[state]:
      allowed = " or ".join(_NEXT[state]) or "nothing"
      return FormatResult(False, f"{name} block at char {i} after {state}; expected {allowed}",
                          searches)
    close = blocks[name][1]
    start = i + len(tag)
    if name == "information":   # environment text: only its close tag matters
      end = text.find(close, start)
    else:
      end, inner = _next_tag(text, start, all_tags)
      if end >= 0 and inner != close:
        return FormatResult(False, f"{inner} at char {end} inside an open {name} block", searches)
    if end < 0:
      return FormatResult(False, f"unclosed {name} block opened at char {i}", searches)
    content = text[start:end]
    if name in ("search", "answer") and not content.strip():
      return FormatResult(False, f"empty {name} block at char {i}", searches)
    if name == "information":
      searches += 1
    state, pos = name, end + len(close)


# ----------------------------------------------------------------------------- answer overlap

_METRICS: dict[str, Callable[[str, str], float]] = {
    "recall": metrics.token_recall, "f1": metrics.f1, "em": metrics.exact_match}


def length_penalty_factor(pred_tokens: int, gold_tokens: int, ratio: float = 2.0,
                          slack: int = 1) -> float:
  """min(1, allowed / pred_tokens), allowed = max(ceil(ratio * gold), gold + slack)."""
  if pred_tokens <= 0:
    return 1.0
  allowed = max(math.ceil(ratio * gold_tokens), gold_tokens + slack)
  return min(1.0, allowed / pred_tokens)


def _one_span_score(pred: str, golds: Sequence[str], cfg: "RewardConfig") -> float:
  """max over golds of metric(pred, gold) x (length factor for recall)."""
  metric = _METRICS[cfg.answer_metric]
  n_pred = len(metrics.normalize_answer(pred).split())
  best = 0.0
  for g in golds:
    s = metric(pred, g)
    if cfg.answer_metric == "recall" and cfg.length_penalty:
      s *= length_penalty_factor(n_pred, len(metrics.normalize_answer(g).split()),
                                 cfg.length_ratio, cfg.length_slack)
    best = max(best, s)
  return best


def answer_score(answer: str | None, gold: "Gold", cfg: "RewardConfig") -> float:
  """Overlap score in [0, 1] of an extracted answer (None: no closed answer tag -> 0)."""
  if answer is None:
    return 0.0
  if gold.masks:
    spans = [s.strip() for s in answer.split(cfg.span_separator)]
    total = 0.0
    for i, mask in enumerate(gold.masks):
      if i < len(spans) and spans[i]:
        total += _one_span_score(spans[i], [mask], cfg)
    return total / len(gold.masks)
  return _one_span_score(answer, gold.answers, cfg)


@dataclasses.dataclass(frozen=True)
class Gold:
  """Normalised view of one example's gold: QA answers, or RAMP masks (ordered)."""
  answers: tuple[str, ...] = ()
  masks: tuple[str, ...] = ()
  question: str = ""

  @property
  def as_list(self) -> list[str]:
    return list(self.masks) if self.masks else list(self.answers)


def as_gold(g: Any, index: int) -> Gold:
  """Accepts a str, a list of str, or an Example mapping with `masks` or `gold_answers`."""
  if isinstance(g, Gold):
    return g
  if isinstance(g, str):
    return Gold(answers=(g,))
  if isinstance(g, Mapping):
    q = str(g.get("question", g.get("prompt", "")))
    if g.get("masks"):
      return Gold(masks=tuple(str(x) for x in g["masks"]), question=q)
    for key in ("gold_answers", "golden_answers", "answers", "answer"):
      if g.get(key):
        v = g[key]
        return Gold(answers=(v,) if isinstance(v, str) else tuple(str(x) for x in v), question=q)
    raise ValueError(f"rewards: gold #{index} has none of masks / gold_answers / golden_answers / "
                     f"answers / answer (non-empty); fields found: {sorted(g)}")
  if isinstance(g, Sequence) and g and all(isinstance(x, str) for x in g):
    return Gold(answers=tuple(g))
  raise ValueError(f"rewards: gold #{index} must be a str, a non-empty list of str or an Example "
                   f"mapping; got {type(g).__name__}: {g!r:.80}")


# ----------------------------------------------------------------------------- model judge

@runtime_checkable
class Judge(_Protocol):
  """Says whether a prediction answers the question as the gold does."""

  def judge(self, question: str, gold: Sequence[str], prediction: str) -> bool:
    ...


_YES = frozenset({"yes", "correct", "true", "right"})
_NO = frozenset({"no", "incorrect", "false", "wrong"})
_THINK = re.compile(re.escape(DEFAULT.think_open) + ".*?" + re.escape(DEFAULT.think_close), re.S)


def parse_verdict(text: str) -> bool | None:
  """Yes/no verdict of a judge model's reply; None when there is none or it is ambiguous.

  First word decides when it is a verdict word ("Yes, because..." / "No."); otherwise the reply
  counts only if every verdict word in it has the same polarity ("not correct" is negative).
  A `<think>` block of a reasoning judge is ignored.
  """
  words = re.findall(r"[a-z]+", _THINK.sub(" ", text).lower())
  if not words:
    return None
  if words[0] in _YES:
    return True
  if words[0] in _NO:
    return False
  seen = set()
  for i, w in enumerate(words):
    if w in _YES or w in _NO:
      negated = i > 0 and words[i - 1] in ("not", "isn", "t")
      seen.add((w in _YES) != negated)
  return seen.pop() if len(seen) == 1 else None


JUDGE_TEMPLATE = (
    "You are grading an answer to a question.\nQuestion: {question}\n"
    "Gold answer(s): {gold}\nPredicted answer: {prediction}\n"
    "Does the predicted answer mean the same as a gold answer? Reply with yes or no only.")


@dataclasses.dataclass(frozen=True)
class LMJudge:
  """A Judge over any text generator (our sampler, an HF model, an OpenAI-compatible endpoint).

  An unparseable reply counts as "no" and is logged: a bounded fallback that can only withhold
  reward, never grant it.
  """
  generate: Callable[[str], str]
  template: str = JUDGE_TEMPLATE

  def judge(self, question: str, gold: Sequence[str], prediction: str) -> bool:
    reply = self.generate(self.template.format(question=question, gold=" | ".join(gold),
                                               prediction=prediction))
    verdict = parse_verdict(reply)
    if verdict is None:
      log.warning("judge reply has no clear yes/no verdict, counted as no: %r", reply[:200])
      return False
    return verdict


# ----------------------------------------------------------------------------- combination

@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """Which reward parts count and how much; total = sum of weight x part."""
  format_weight: float = 1.0
  answer_weight: float = 1.0
  judge_weight: float = 0.0
  answer_metric: str = "recall"         # recall | f1 | em
  length_penalty: bool = True           # recall only
  length_ratio: float = 2.0
  length_slack: int = 1
  answer_requires_format: bool = False  # answer (and judge) parts count only on a valid format
  span_separator: str = ";"             # RAMP: predicted spans in mask order
  overlong_max_tokens: int | None = None  # DAPO soft overlong penalty (model-written tokens)
  overlong_buffer: int = 0
  overlong_weight: float = 1.0
  protocol: Protocol = DEFAULT

  def __post_init__(self):
    if self.answer_metric not in _METRICS:
      raise ValueError(f"RewardConfig.answer_metric={self.answer_metric!r}; "
                       f"expected one of {sorted(_METRICS)}")
    if self.length_ratio < 1.0 or self.length_slack < 0:
      raise ValueError(f"RewardConfig.length_ratio={self.length_ratio} must be >= 1 and "
                       f"length_slack={self.length_slack} >= 0")
    if not self.span_separator:
      raise ValueError("RewardConfig.span_separator must be non-empty")
    max_tokens = self.overlong_max_tokens
    if max_tokens is not None and not 0 <= self.overlong_buffer < max_tokens:
      raise ValueError(f"RewardConfig.overlong_buffer={self.overlong_buffer} must be in "
                       f"[0, overlong_max_tokens={self.overlong_max_tokens})")


def compute_rewards(responses: Sequence[str], golds: Sequence[Any], cfg: RewardConfig, *,
                    judge: Judge | None = None, questions: Sequence[str] | None = None,
                    num_model_tokens: Sequence[int] | np.ndarray | None = None,
                    ) -> dict[str, np.ndarray]:
  """Per-response reward parts (unweighted) and their weighted `total`, each float32 [N].

  Parts: `format` (0/1), `answer` ([0, 1]), `num_searches` (not a reward; logged), plus `judge`
  (0/1) when judge_weight > 0 and `overlong` (<= 0) when cfg.overlong_max_tokens is set — that one
  needs `num_model_tokens`, the count of policy-written tokens per response (loss-mask sum).
  """
  n = len(responses)
  if len(golds) != n:
    raise ValueError(f"compute_rewards: {n} responses but {len(golds)} golds")
  if questions is not None and len(questions) != n:
    raise ValueError(f"compute_rewards: {n} responses but {len(questions)} questions")
  if cfg.judge_weight and judge is None:
    raise ValueError("compute_rewards: RewardConfig.judge_weight > 0 but no judge was given")
  gs = [as_gold(g, i) for i, g in enumerate(golds)]
  fmt = np.zeros(n, np.float32)
  ans = np.zeros(n, np.float32)
  searches = np.zeros(n, np.float32)
  jdg = np.zeros(n, np.float32)
  for i, (text, gold) in enumerate(zip(responses, gs)):
    fr = check_format(text, cfg.protocol)
    fmt[i], searches[i] = float(fr.ok), fr.num_searches
    if cfg.answer_requires_format and not fr.ok:
      continue
    answer = cfg.protocol.extract_answer(text)
    ans[i] = answer_score(answer, gold, cfg)
    if cfg.judge_weight and answer is not None:
      q = questions[i] if questions is not None else gold.question
      jdg[i] = float(judge.judge(q, gold.as_list, answer))
  parts = {"format": fmt, "answer": ans, "num_searches": searches}
  total = cfg.format_weight * fmt + cfg.answer_weight * ans
  if cfg.judge_weight:
    parts["judge"] = jdg
    total = total + cfg.judge_weight * jdg
  if cfg.overlong_max_tokens is not None:
    if num_model_tokens is None or len(num_model_tokens) != n:
      raise ValueError("compute_rewards: RewardConfig.overlong_max_tokens is set, so "
                       f"num_model_tokens must have one count per response ({n})")
    over = np.asarray(overlong_penalty(np.asarray(num_model_tokens), cfg.overlong_max_tokens,
                                       cfg.overlong_buffer), np.float32)
    parts["overlong"] = over
    total = total + cfg.overlong_weight * over
  parts["total"] = total.astype(np.float32)
  return parts
