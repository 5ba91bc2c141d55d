"""The Retriever protocol: the only thing the sampler, agents and evaluation know of search."""
from __future__ import annotations

from typing import Protocol as _Protocol, Sequence, runtime_checkable

from masksearch_jax.protocol import Hit

__all__ = ["Hit", "Retriever"]


@runtime_checkable
class Retriever(_Protocol):
  """Batched search: one call for all queries of a batch; returns k hits per query, best first."""

  def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
    ...
