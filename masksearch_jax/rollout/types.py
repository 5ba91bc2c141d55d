"""Configs and the output record of the rollout engine.

`SamplingConfig` and `RolloutConfig` are frozen (hashable) because they are static arguments of the
jitted device functions: one compiled program per (config, batch size, prompt bucket).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

# Finish reasons (strings, so they print and serialise as they are).
ANSWER = "answer"          # closed the answer tag
EOS = "eos"                # sampled an EOS id
STOP = "stop"              # produced one of RolloutConfig.stop_strings
LENGTH = "length"          # ran out of buffer / new-token budget
MAX_TURNS = "max_turns"    # closed a search tag with no search turns left
MALFORMED = "malformed"    # broke the tag protocol (see tools.py for the rules)
FINISH_REASONS = (ANSWER, EOS, STOP, LENGTH, MAX_TURNS, MALFORMED)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How the next token is drawn. temperature == 0 means greedy.

  Log-probs (`Rollout.logprobs`) are taken under the distribution actually sampled from: softmax of
  logits / temperature, renormalised over the top-k / top-p survivors. Greedy reports the plain
  (temperature 1, unfiltered) log-softmax, since the one-hot greedy distribution carries no signal.
  """
  temperature: float = 1.0
  top_k: int = 0             # 0: off
  top_p: float = 1.0         # 1.0: off (top-p without top-k sorts the whole vocabulary each step)

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = off)")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p={self.top_p} must be in (0, 1]")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """Buffer sizes, budgets and the tool protocol switches of one rollout engine.

  max_len: the per-row buffer (= KV cache) length: prompt + policy tokens + tool tokens.
  max_new_tokens: per-row cap on everything after the prompt (policy + tool tokens); None = buffer.
  prompt_buckets: prompts are right-padded to the smallest bucket that fits (one compile each).
  chunk_steps: decode steps per device call; the host checks stop strings between chunks.
  pause_exit_fraction: > 0 ends a chunk early once this share of the batch has stopped on a stop
    tag since the last host round, so paused rows wait less for their observation (more rounds).
  steps_per_check: decode steps per on-device "any row still active?" test. A data-dependent
    loop condition makes XLA copy it to the host and wait after every iteration, draining the
    GPU; k steps run as a fixed-count inner loop between tests (rows that stop meanwhile idle
    as padding, at most k - 1 steps). Must divide chunk_steps (else the largest divisor is used).
  overlap_retrieval: a round's search runs in a host thread while the device decodes the rows
    that did not search; their observations are spliced after that chunk. Rows are independent
    (per-row keys), so rollouts are the same either way, token for token (tested on CPU; on an
    H200 too); only the wall time changes. It pays when a search takes longer than a decode
    chunk (a remote retriever) and rows search at different times; with a fast retriever each
    search instead delays its row by a whole chunk. Measured on an H200 (1.5B, 64 rows searching
    at 4 offsets, Pallas decode, 64-step chunks of ~0.13 s): -3.5% wall time with a 50 ms
    retriever, +12 to +19% with 5 ms (benchmarks/sampler.py --overlap_retrieval=false,true
    --mt_stagger; RESULTS.md, session 25). Opt-in.
  """
  max_len: int = 1024
  max_new_tokens: int | None = None
  prompt_buckets: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
  chunk_steps: int = 64
  pause_exit_fraction: float = 0.0
  steps_per_check: int = 1
  overlap_retrieval: bool = False
  eos_ids: tuple[int, ...] = ()
  stop_strings: tuple[str, ...] = ()
  # Tool use (the protocol's search / answer tags); off = plain generation.
  use_tools: bool = True
  max_turns: int = 4             # search calls executed per row
  max_tool_tokens: int = 512     # per-turn observation budget (tokens), truncated to fit
  top_k_docs: int = 3
  retriever_timeout_s: float = 60.0
  pad_id: int = 0

  def __post_init__(self):
    if self.max_len < 2:
      raise ValueError(f"max_len={self.max_len} must be >= 2")
    if self.chunk_steps < 1:
      raise ValueError(f"chunk_steps={self.chunk_steps} must be >= 1")
    if self.steps_per_check < 1:
      raise ValueError(f"steps_per_check={self.steps_per_check} must be >= 1")
    if self.max_tool_tokens < 1 or self.max_turns < 0:
      raise ValueError("max_tool_tokens must be >= 1 and max_turns >= 0")
    if tuple(sorted(self.prompt_buckets)) != tuple(self.prompt_buckets) or not self.prompt_buckets:
      raise ValueError(f"prompt_buckets={self.prompt_buckets} must be non-empty and ascending")

  def prompt_bucket(self, n: int) -> int:
    """Smallest bucket >= n, capped by the buffer; error when the prompt cannot fit."""
    if n >= self.max_len:
      raise ValueError(f"prompt of {n} tokens leaves no room in max_len={self.max_len}")
    for b in self.prompt_buckets:
      if b >= n:
        return min(b, self.max_len)
    return self.max_len

  def tool_buckets(self) -> tuple[int, ...]:
    """Splice widths: powers of two up to the per-turn budget + the re-fed tag token."""
    top, out, b = self.max_tool_tokens + 1, [], 16
    while b < top:
      out.append(b)
      b *= 2
    return tuple(out) + (top,)


@dataclasses.dataclass
class Rollout:
  """One batch of finished sequences. Row b holds its tokens in [0, lengths[b]); pad after.

  tokens/loss_mask/logprobs: [B, T] (T = RolloutConfig.max_len); loss_mask is 1 exactly on tokens
  the policy sampled (0 on prompt, tool observations and padding); logprobs are 0 where mask is 0.
  """
  tokens: np.ndarray          # [B, T] int32
  loss_mask: np.ndarray       # [B, T] int32
  logprobs: np.ndarray        # [B, T] float32
  prompt_lengths: np.ndarray  # [B] int32
  lengths: np.ndarray         # [B] int32
  num_searches: np.ndarray    # [B] int32: retriever calls that returned passages for this row
  num_tool_errors: np.ndarray  # [B] int32: error observations (retriever failure, empty query)
  queries: list[list[str]]    # per row, the queries sent to the retriever, in order
  finish_reason: list[str]    # per row, one of FINISH_REASONS
  texts: list[str]            # per row, decoded text after the prompt (policy + observations)
  stats: dict[str, Any] = dataclasses.field(default_factory=dict)  # timings, rounds, ...

  @property
  def batch_size(self) -> int:
    return int(self.tokens.shape[0])
