"""BM25 over a small in-memory corpus: a Retriever that needs no encoder or index build.

The world's invented names are rare tokens, so lexical search finds their passages reliably; this
lets the oracle, the demo and tests run with nothing but the world's files. Large corpora belong to
`masksearch_jax.retrieval` (dense encoder + ScaNN).
"""
from __future__ import annotations

import collections
import itertools
import json
import math
import re
from pathlib import Path
from typing import Sequence

from masksearch_jax.protocol import Hit

_TOKEN = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
  return _TOKEN.findall(text.lower())


class LexicalRetriever:
  """Okapi BM25 (k1=1.2, b=0.75) over title + text; ties broken by corpus order."""

  def __init__(self, corpus: Sequence[dict], k1: float = 1.2, b: float = 0.75):
    self.docs = list(corpus)
    self.k1, self.b = k1, b
    self.tf = [collections.Counter(tokens(f"{d['title']} {d['text']}")) for d in self.docs]
    self.len = [sum(c.values()) for c in self.tf]
    self.avg = sum(self.len) / max(1, len(self.len))
    df = collections.Counter(t for c in self.tf for t in c)
    n = len(self.docs)
    self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
    self.postings: dict[str, list[int]] = collections.defaultdict(list)
    for i, c in enumerate(self.tf):
      for t in c:
        self.postings[t].append(i)

  @classmethod
  def from_jsonl(cls, path: str | Path) -> "LexicalRetriever":
    with open(path, encoding="utf-8") as f:
      return cls([json.loads(line) for line in f if line.strip()])

  def _score(self, query: str) -> dict[int, float]:
    scores: dict[int, float] = collections.defaultdict(float)
    for t in set(tokens(query)):
      for i in self.postings.get(t, ()):
        f = self.tf[i][t]
        norm = f + self.k1 * (1 - self.b + self.b * self.len[i] / self.avg)
        scores[i] += self.idf[t] * f * (self.k1 + 1) / norm
    return scores

  def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
    out = []
    for q in queries:
      scores = self._score(q)
      best = sorted(scores, key=lambda i: (-scores[i], i))[:k]
      # Always k hits (the Retriever contract): pad with unmatched passages in corpus order.
      best += itertools.islice((i for i in range(len(self.docs)) if i not in scores),
                               max(0, k - len(best)))
      out.append([Hit(str(self.docs[i]["id"]), self.docs[i]["title"], self.docs[i]["text"],
                      float(scores.get(i, 0.0))) for i in best])
    return out
