"""DAPO dynamic sampling: keep only groups with a learning signal, generate until the batch is full.

A group (the G responses to one prompt) whose rewards are all equal has zero advantage everywhere,
so it would only shrink the effective batch. `fill_batch` keeps asking a generation callable for
more rounds until enough informative groups exist, with a cap on rounds so a policy that solves
(or fails) everything stops the run with a clear message instead of looping forever. With
`min_informative` below the target, a batch that comes up short after the cap is completed with
all-equal groups instead (zero advantage: they add tokens to the loss's denominator, no gradient,
exactly what DAPO without dynamic sampling trains on) and the shortfall is logged and counted.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Generic, Sequence, TypeVar

import numpy as np

__all__ = ["informative_groups", "Round", "FillStats", "fill_batch", "DynamicSamplingError"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def informative_groups(rewards: np.ndarray | Sequence[float], group_size: int) -> np.ndarray:
  """[N] rewards, group-major -> [N / group_size] bool: True where the group's rewards differ."""
  r = np.asarray(rewards, np.float64)
  if r.ndim != 1 or r.shape[0] % group_size:
    raise ValueError(f"informative_groups: rewards shape {r.shape} is not [num_groups * "
                     f"group_size] with group_size={group_size}")
  g = r.reshape(-1, group_size)
  return g.max(axis=1) != g.min(axis=1)


class DynamicSamplingError(RuntimeError):
  pass


@dataclasses.dataclass(frozen=True)
class FillStats:
  rounds: int
  groups_generated: int
  groups_kept: int       # informative groups found (may exceed the target; extras are dropped)
  groups_padded: int = 0  # all-equal groups that completed a short batch (min_informative)


@dataclasses.dataclass(frozen=True)
class Round(Generic[T]):
  """One generation round: `groups[i]` is any payload whose G rewards are `rewards[i]`."""
  groups: Sequence[T]
  rewards: np.ndarray    # [num_groups, G]


def fill_batch(generate_round: Callable[[int], Round[T]], num_groups: int,
               max_rounds: int, min_informative: int | None = None) -> tuple[list[T], FillStats]:
  """Calls generate_round(0), generate_round(1), ... until `num_groups` informative groups exist.

  Returns exactly `num_groups` groups (the first found, in generation order) and stats. After
  `max_rounds` rounds without enough: if at least `min_informative` (default `num_groups`) were
  found, the batch is completed with the first all-equal groups generated (logged, counted in
  `groups_padded`); otherwise raises DynamicSamplingError naming the counts.
  """
  min_informative = num_groups if min_informative is None else min_informative
  if num_groups < 1 or max_rounds < 1 or not 1 <= min_informative <= num_groups:
    raise ValueError(f"fill_batch: num_groups={num_groups}, max_rounds={max_rounds} must be >= 1 "
                     f"and 1 <= min_informative={min_informative} <= num_groups")
  kept: list[T] = []
  spare: list[T] = []                # all-equal groups, in generation order
  generated = 0
  for i in range(max_rounds):
    rnd = generate_round(i)
    rewards = np.asarray(rnd.rewards)
    if rewards.ndim != 2 or rewards.shape[0] != len(rnd.groups):
      raise ValueError(f"fill_batch: round {i} returned {len(rnd.groups)} groups but rewards "
                       f"of shape {rewards.shape}; expected [{len(rnd.groups)}, G]")
    mask = informative_groups(rewards.reshape(-1), rewards.shape[1])
    kept.extend(g for g, m in zip(rnd.groups, mask) if m)
    spare.extend(g for g, m in zip(rnd.groups, mask) if not m)
    generated += len(rnd.groups)
    log.debug("dynamic sampling round %d: %d/%d groups informative, %d/%d kept so far",
              i, int(mask.sum()), len(mask), len(kept), num_groups)
    if len(kept) >= num_groups:
      return kept[:num_groups], FillStats(i + 1, generated, len(kept))
  if len(kept) >= min_informative:
    pad = num_groups - len(kept)
    log.warning("dynamic sampling: %d of %d groups informative after %d rounds (%d generated); "
                "completing the batch with %d all-equal groups (zero advantage)",
                len(kept), num_groups, max_rounds, generated, pad)
    return kept + spare[:pad], FillStats(max_rounds, generated, len(kept), pad)
  raise DynamicSamplingError(
      f"dynamic sampling: after {max_rounds} generation rounds only {len(kept)} of the "
      f"{num_groups} groups needed had non-identical rewards ({generated} groups generated, "
      f"{generated - len(kept)} dropped as all-equal; at least {min_informative} needed to train "
      "on a completed batch). The policy may solve or fail every prompt at this difficulty: raise "
      "max_rounds, lower the minimum share of informative groups, change the prompt "
      "mix/curriculum, or check the reward.")
