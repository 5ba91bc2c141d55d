"""HTTP client of the retrieval service (ours or Search-R1's), implementing `types.Retriever`.

`open_retriever(spec)` is the one entry point the sampler needs: an `http(s)://` URL gives this
client, a directory gives the in-process `DenseRetriever`; both answer `search(queries, k)`.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

from absl import logging

from masksearch_jax.retrieval.corpus import split_contents
from masksearch_jax.retrieval.types import Hit, Retriever


class RetrievalError(RuntimeError):
  """The service refused the request (4xx) or stayed unreachable after all retries."""


def _hit(item: Any) -> Hit:
  """One result entry: {"document": doc, "score": s} or a bare doc; doc has `contents` (wiki-18)
  or `title` + `text`."""
  doc, score = (item["document"], item.get("score", 0.0)) if "document" in item else (item, 0.0)
  if "contents" in doc:
    title, text = split_contents(doc["contents"])
  else:
    title, text = doc.get("title", ""), doc.get("text", "")
  return Hit(str(doc.get("id", "")), title, text, float(score))


class HttpRetriever:
  """POSTs all queries of a call in one request; retries connection errors, timeouts and 5xx
  with exponential backoff, never 4xx (a bad request stays bad)."""

  def __init__(self, url: str, timeout_s: float = 30.0, retries: int = 2,
               backoff_s: float = 0.5):
    url = url.rstrip("/")
    self.url = url if url.endswith("/retrieve") else url + "/retrieve"
    self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s

  def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
    data = json.dumps(payload).encode("utf-8")
    last: Exception | None = None
    for attempt in range(self.retries + 1):
      if attempt:
        time.sleep(self.backoff_s * 2 ** (attempt - 1))
      req = urllib.request.Request(self.url, data=data, method="POST",
                                   headers={"Content-Type": "application/json"})
      try:
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
          return json.loads(resp.read())
      except urllib.error.HTTPError as e:
        detail = e.read()[:500].decode("utf-8", "replace")
        if 400 <= e.code < 500:
          raise RetrievalError(f"{self.url} answered {e.code}: {detail}") from None
        last = RetrievalError(f"{self.url} answered {e.code}: {detail}")
      except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        last = e
      logging.warning("retrieval attempt %d/%d failed: %s", attempt + 1, self.retries + 1, last)
    raise RetrievalError(f"{self.url} failed after {self.retries + 1} attempts: {last}")

  def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
    if isinstance(queries, str):
      raise TypeError("queries must be a sequence of strings, not one string")
    if not queries:
      return []
    resp = self._post({"queries": list(queries), "topk": k, "return_scores": True})
    result = resp.get("result") if isinstance(resp, dict) else None
    if not isinstance(result, list) or len(result) != len(queries):
      raise RetrievalError(f"{self.url}: malformed response for {len(queries)} queries: "
                           f"{str(resp)[:200]}")
    try:
      return [[_hit(item) for item in row] for row in result]
    except (KeyError, TypeError, AttributeError, ValueError) as e:
      raise RetrievalError(f"{self.url}: malformed hit in response: {e}") from None


def open_retriever(spec: str, **kwargs: Any) -> Retriever:
  """`http://host:port[/retrieve]` -> HttpRetriever; an index directory -> DenseRetriever."""
  if spec.startswith(("http://", "https://")):
    return HttpRetriever(spec, **kwargs)
  from masksearch_jax.retrieval.retriever import DenseRetriever  # pylint: disable=g-import-not-at-top
  return DenseRetriever.load(spec, **kwargs)
