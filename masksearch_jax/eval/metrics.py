"""Answer metrics: SQuAD v1.1 / HotpotQA normalisation, EM, F1 and MaskSearch's token-level recall.

The normalisation is a transcription of the official `evaluate-v1.1.py` (SQuAD) and
`hotpot_evaluate_v1.py` (HotpotQA) scripts, step for step and in the same order, so our numbers are
comparable with published ones: lowercase -> drop `string.punctuation` characters -> replace the
whole words a/an/the by a space -> collapse whitespace. The order matters: "The-End" becomes
"theend" (punctuation goes first, so "the" is no longer a word of its own) and stays.

Every metric takes one prediction and one or more gold answers and returns the max over golds
(the convention of both official scripts and of the MaskSearch paper).
"""
from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Sequence

__all__ = ["normalize_answer", "exact_match", "f1", "precision_recall_f1", "token_recall",
           "max_over_golds"]

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# HotpotQA: a prediction or gold equal to one of these scores F1 only by exact equality.
_SPECIAL = ("yes", "no", "noanswer")


def normalize_answer(s: str) -> str:
  """Lowercase, strip punctuation, remove articles, collapse whitespace (official order)."""
  s = s.lower()
  s = "".join(ch for ch in s if ch not in _PUNCT)
  s = _ARTICLES.sub(" ", s)
  return " ".join(s.split())


def _golds(golds: str | Iterable[str]) -> list[str]:
  if isinstance(golds, str):
    return [golds]
  out = list(golds)
  if not out:
    raise ValueError("metrics: empty list of gold answers (need at least one)")
  for g in out:
    if not isinstance(g, str):
      raise TypeError(f"metrics: gold answers must be strings, got {type(g).__name__}: {g!r}")
  return out


def max_over_golds(metric, prediction: str, golds: str | Iterable[str]) -> float:
  """max(metric(prediction, g) for g in golds): the official multi-gold convention."""
  return max(float(metric(prediction, g)) for g in _golds(golds))


def _exact_match_one(prediction: str, gold: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(gold))


def precision_recall_f1(prediction: str, gold: str) -> tuple[float, float, float]:
  """HotpotQA's `f1_score` for one gold: (precision, recall, f1) over normalised tokens.

  Special case (HotpotQA): if either side normalises to yes/no/noanswer and the two differ, all
  three are 0 — "yes it is" must not get partial credit against "yes".
  """
  p, g = normalize_answer(prediction), normalize_answer(gold)
  if (p in _SPECIAL or g in _SPECIAL) and p != g:
    return 0.0, 0.0, 0.0
  p_toks, g_toks = p.split(), g.split()
  common = collections.Counter(p_toks) & collections.Counter(g_toks)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0, 0.0, 0.0
  precision = num_same / len(p_toks)
  recall = num_same / len(g_toks)
  return precision, recall, 2 * precision * recall / (precision + recall)


def _f1_one(prediction: str, gold: str) -> float:
  return precision_recall_f1(prediction, gold)[2]


def _recall_one(prediction: str, gold: str) -> float:
  """Fraction of the gold's normalised tokens found in the prediction (multiset counts).

  MaskSearch's token-level recall, taken as the recall component of HotpotQA's `f1_score`, so
  the yes/no/noanswer rule applies here too: "yes no" against gold "yes" scores 0, not 1 — the
  rule doubles as a guard against hedging between the two verdicts. A gold that normalises to
  nothing scores 0 (no tokens can be recalled).
  """
  return precision_recall_f1(prediction, gold)[1]


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
  """1.0 if the normalised prediction equals any normalised gold, else 0.0."""
  return max_over_golds(_exact_match_one, prediction, golds)


def f1(prediction: str, golds: str | Sequence[str]) -> float:
  """HotpotQA token F1 (with its yes/no/noanswer rule), max over golds."""
  return max_over_golds(_f1_one, prediction, golds)


def token_recall(prediction: str, golds: str | Sequence[str]) -> float:
  """MaskSearch's token-level recall, max over golds."""
  return max_over_golds(_recall_one, prediction, golds)
