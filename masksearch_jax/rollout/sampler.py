"""The rollout engine: jitted generation that pauses rows at a search call, retrieves once per
round for all paused rows, splices the observations into the same KV cache and resumes them.

Host loop (the device work is engine.py, the protocol rules are tools.py):
  prefill the bucketed prompt batch
  repeat until no row is active:
    decode up to `chunk_steps` tokens per active row (one jitted while_loop; rows stop on their
      own at EOS, a stop-tag id sequence or their length limit)
    per row that ran: decode its current turn, apply the rules of tools.py
    all search queries of this round -> ONE retriever call -> observations, tokenised with the
      per-turn budget (never past the row's limit) -> one jitted splice for all those rows
Compiled programs: prefill per prompt bucket, one decode, splice per tool bucket, one update; so
a fixed config stops compiling after warm-up (`Sampler.warmup` compiles them all up front).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from masksearch_jax import protocol as proto
from masksearch_jax.model.config import Qwen2Config
from masksearch_jax.rollout import engine as eng
from masksearch_jax.rollout import sampling, sharding, tools
from masksearch_jax.rollout import types as T

_DEVICE_REASON = {eng.R_EOS: T.EOS, eng.R_LENGTH: T.LENGTH, eng.R_STOP_IDS: "ids"}


class Sampler:
  """Generates `Rollout`s for batches of prompts. Params are passed per call (RL updates them).

  tokenizer: any HF-style object with encode(text, add_special_tokens=...) and decode(ids, ...).
  retriever: anything with `search(queries, k) -> list[list[Hit]]` (retrieval/types.py); needed
    only when rollout.use_tools is on.
  mesh: optional; rows are placed over its `data_axis` (batch size must divide evenly).
  device_stops: off leaves stop detection to the host's text check alone (rows then run to the
    end of their chunk and are rolled back); for tests and tokenizers whose tag ids are unreliable.
  linear_impl: "pallas" runs each one-token step's projections as model/decode_linear.py kernels
    (norm, bias, RoPE, SwiGLU and residual fused in); needs scan_layers=False and one device.
    Measured slower than the XLA path on an H200 (benchmarks/RESULTS.md): an experiment.
    "xla_folded": XLA products with the RMSNorm gains folded into the following weights (one
    normalising kernel less per norm; needs scan_layers=False). Measured on an H200: +2% at
    batch 1, -1.4% at batch 64 (benchmarks/RESULTS.md); opt-in.
  pad_single_row: a batch of one prompt runs as two rows, the second a dead copy (inactive from
    the start, dropped from the output). On GPUs a one-row product is a vector x matrix that
    XLA would rewrite (model/matmul.rows_einsum pads it per product instead); two real rows need
    no per-product padding and step faster (1.5B on an H200: 1.53 ms for two rows vs 1.59 for
    one). None: on GPUs without a mesh or logits_hook (a hook sees the padded batch).
  """

  def __init__(self, cfg: Qwen2Config, tokenizer, sampling_cfg: T.SamplingConfig = T.SamplingConfig(),
               rollout_cfg: T.RolloutConfig = T.RolloutConfig(), *, retriever=None,
               protocol: proto.Protocol = proto.DEFAULT, compute_dtype=jnp.bfloat16,
               cache_dtype=jnp.bfloat16, attn_impl: str = "xla", scan_layers: bool = True,
               logits_hook: eng.LogitsHook | None = None, mesh=None, data_axis: str = "data",
               device_stops: bool = True, linear_impl: str = "xla",
               pad_single_row: bool | None = None):
    if rollout_cfg.use_tools and retriever is None:
      raise ValueError("rollout_cfg.use_tools is on but no retriever was given")
    self.cfg, self.tok, self.scfg, self.rcfg = cfg, tokenizer, sampling_cfg, rollout_cfg
    self.retriever, self.protocol = retriever, protocol
    self.mesh, self.data_axis = mesh, data_axis
    if pad_single_row is None:
      pad_single_row = mesh is None and logits_hook is None and jax.default_backend() == "gpu"
    self.pad_single_row = pad_single_row
    stop_ids = tools.stop_id_sequences(tokenizer, rollout_cfg, protocol) if device_stops else ()
    self.engine = eng.Engine(cfg, sampling_cfg, rollout_cfg, stop_ids, compute_dtype=compute_dtype,
                             cache_dtype=cache_dtype, attn_impl=attn_impl, scan_layers=scan_layers,
                             logits_hook=logits_hook,
                             state_sharding=sharding.state_constraint(mesh, data_axis), mesh=mesh,
                             linear_impl=linear_impl)

  # ---- inputs --------------------------------------------------------------------------------
  def _prompt_ids(self, prompts) -> list[list[int]]:
    out = []
    for i, p in enumerate(prompts):
      ids = tools.encode(self.tok, p) if isinstance(p, str) else [int(t) for t in p]
      if not ids:
        raise ValueError(f"prompt {i} is empty after tokenisation")
      bad = [t for t in ids if not 0 <= t < self.cfg.vocab_size]
      if bad:
        raise ValueError(f"prompt {i} has ids outside [0, {self.cfg.vocab_size}): {bad[:5]}")
      out.append(ids)
    return out

  def _put(self, x: np.ndarray):
    s = sharding.batch_sharding(self.mesh, self.data_axis)
    return jax.device_put(x) if s is None else jax.device_put(x, s)

  def start(self, params, prompts, seed: int | jax.Array = 0):
    """Prefill only: (device state, prompt lengths), both over all rows — with pad_single_row a
    one-prompt batch has a second, dead row (limit = its prompt length: inactive from the start).
    Exposed for benchmarks."""
    ids = self._prompt_ids(prompts)
    dead = 1 if self.pad_single_row and len(ids) == 1 else 0
    ids = ids + ids[:dead]
    b = len(ids)
    if b % sharding.data_size(self.mesh, self.data_axis):
      raise ValueError(f"batch {b} does not divide over data axis of {self.mesh.shape}")
    lens = np.array([len(x) for x in ids], np.int32)
    width = self.rcfg.prompt_bucket(int(lens.max()))
    arr = np.full((b, width), self.rcfg.pad_id, np.int32)
    for i, x in enumerate(ids):
      arr[i, :len(x)] = x
    new = self.rcfg.max_new_tokens
    limit = np.minimum(self.rcfg.max_len, lens + (new if new is not None else self.rcfg.max_len))
    if dead:
      limit[-dead:] = lens[-dead:]
    keys = np.asarray(sampling.row_keys(seed, b - dead))      # real rows' keys as without padding
    keys = np.concatenate([keys, keys[:dead]])
    state = self.engine.prefill(params, self._put(arr), self._put(lens), self._put(limit.astype(np.int32)),
                                self._put(keys))
    return state, lens

  # ---- the loop ------------------------------------------------------------------------------
  def warmup(self, params, batch: int) -> int:
    """Runs every program a `batch`-prompt rollout can need once on dummy inputs — prefill for
    each prompt bucket, decode, update and a splice of each tool width — so that no later
    generate() of that batch size compiles (an RL step or a benchmark then never stalls on a
    longer prompt or passage). Returns the number of programs run."""
    if batch < 1:
      raise ValueError(f"warmup batch={batch} must be >= 1")
    r = self.rcfg
    # one dummy prompt length per bucket width, longest last (its decode is one step)
    per_width = {r.prompt_bucket(min(n, r.max_len - 1)): min(n, r.max_len - 1)
                 for n in (*r.prompt_buckets, r.max_len - 1)}
    for w in sorted(per_width):
      state, lens = self.start(params, [[r.pad_id] * per_width[w]] * batch)
    b = len(lens)
    state = self.engine.decode(params, state)
    state = self.engine.update(state, self._put(lens), self._put(np.zeros(b, bool)))
    widths = r.tool_buckets() if r.use_tools else ()
    for w in widths:
      state = self.engine.splice(params, state, self._put(np.full((b, w), r.pad_id, np.int32)),
                                 self._put(np.zeros(b, np.int32)), self._put(lens),
                                 self._put(np.zeros(b, bool)))
    jax.block_until_ready(state["length"])
    return len(per_width) + 2 + len(widths)

  def generate(self, params, prompts: Sequence[str] | Sequence[Sequence[int]],
               seed: int | jax.Array = 0) -> T.Rollout:
    t0 = time.perf_counter()
    r, p = self.rcfg, self.protocol
    state, plen = self.start(params, prompts, seed)
    b = len(plen)
    limit = np.asarray(state["limit"])
    finish: list[str | None] = [None if plen[i] < limit[i] else T.LENGTH for i in range(b)]
    turn_start = plen.copy()
    checked = np.zeros(b, np.int64)        # turn tokens already searched for stop strings
    turns = np.zeros(b, np.int32)
    nsearch, nerr = np.zeros(b, np.int32), np.zeros(b, np.int32)
    queries: list[list[str]] = [[] for _ in range(b)]
    st = {"decode_s": 0.0, "retrieve_s": 0.0, "splice_s": 0.0, "chunks": 0, "rounds": 0}
    jax.block_until_ready(state["length"])
    st["prefill_s"] = time.perf_counter() - t0

    waiting = np.zeros(b, bool)          # rows whose search is in flight (overlap_retrieval)
    pending = None                       # (rows, future) of that search
    pool = ThreadPoolExecutor(1, thread_name_prefix="rollout-search") \
        if r.overlap_retrieval and r.use_tools else None
    try:
      while any(f is None for f in finish):
        running = np.array([f is None for f in finish]) & ~waiting   # rows the device advances
        if running.any():
          before = np.array(state["length"])
          t = time.perf_counter()
          state = self.engine.decode(params, state)
          # Copies: on CPU device_get may alias buffers that the next call donates.
          length, reason, dev_active, tokens = (np.array(x) for x in jax.device_get(
              (state["length"], state["reason"], state["active"], state["tokens"])))
          st["decode_s"] += time.perf_counter() - t
          st["chunks"] += 1
          if not (length[running] > before[running]).any():   # a bug, never a hang
            raise RuntimeError(f"decode made no progress (chunk {st['chunks']}); lengths {length}")
        else:                            # every unfinished row waits for its observation
          length, dev_active, tokens = (np.array(x) for x in jax.device_get(
              (state["length"], state["active"], state["tokens"])))
        rewind, active = length.copy(), np.array([f is None for f in finish]) & ~waiting
        feeds: dict[int, str] = {}       # row -> observation text
        search_rows: list[int] = []
        for i in np.flatnonzero(running):
          d = tools.decide(self.tok, tokens[i, turn_start[i]:length[i]],
                           _DEVICE_REASON.get(int(reason[i])), int(turns[i]), r, p,
                           checked=int(checked[i]))
          checked[i] = length[i] - turn_start[i]
          if d.cut is not None:
            rewind[i] = turn_start[i] + d.cut
          if d.action == "finish":
            finish[i], active[i] = d.reason, False
          elif d.action != "continue" and rewind[i] >= limit[i]:   # a call at the limit: no room
            finish[i], active[i] = T.LENGTH, False
          elif d.action == "search":
            search_rows.append(i)
            queries[i].append(d.query)
            turns[i] += 1
          elif d.action == "error_obs":
            feeds[i] = proto.format_error_observation(d.message, p)
            nerr[i] += 1
            turns[i] += 1
        if pending is not None:          # the search that ran during this chunk
          t = time.perf_counter()
          rows, fut = pending
          self._take_hits(rows, *fut.result(), feeds, nsearch, nerr)
          st["retrieve_s"] += time.perf_counter() - t
          waiting[rows], active[rows], pending = False, True, None
        if search_rows:
          qs = [queries[i][-1] for i in search_rows]
          call = (self.retriever, qs, r.top_k_docs, r.retriever_timeout_s)
          st["rounds"] += 1
          if pool is not None:
            pending = (search_rows, pool.submit(tools.call_retriever, *call))
            waiting[search_rows], active[search_rows] = True, False
          else:
            t = time.perf_counter()
            self._take_hits(search_rows, *tools.call_retriever(*call), feeds, nsearch, nerr)
            st["retrieve_s"] += time.perf_counter() - t
        if feeds:
          t = time.perf_counter()
          state = self._splice(params, state, feeds, rewind, active, tokens, limit, finish,
                               turn_start)
          checked[list(feeds)] = 0
          st["splice_s"] += time.perf_counter() - t
        elif (rewind != length).any() or (active != dev_active).any():
          state = self.engine.update(state, self._put(rewind.astype(np.int32)), self._put(active))
    finally:
      if pool is not None:
        pool.shutdown(wait=False)
    return self._collect(state, plen, finish, nsearch, nerr, queries, st, t0, len(prompts))

  def _take_hits(self, rows, hits, err, feeds, nsearch, nerr) -> None:
    """One search's result -> the observation text of each of its rows (an error observation for
    all of them when the call failed)."""
    for j, i in enumerate(rows):
      if err is None:
        feeds[i] = proto.format_observation(hits[j], self.protocol)
        nsearch[i] += 1
      else:
        feeds[i] = proto.format_error_observation(err, self.protocol)
        nerr[i] += 1

  def _splice(self, params, state, feeds, rewind, active, tokens, limit, finish, turn_start):
    """Tokenises the observations within budget and runs one jitted splice for all of them."""
    rows = sorted(feeds)
    ids = {}
    for i in rows:
      budget = int(min(self.rcfg.max_tool_tokens, limit[i] - rewind[i]))
      ids[i] = tools.observation_ids(self.tok, feeds[i], budget, self.protocol) if budget > 0 else []
    width = next(w for w in self.rcfg.tool_buckets() if w >= 1 + max(len(x) for x in ids.values()))
    b = tokens.shape[0]
    feed = np.full((b, width), self.rcfg.pad_id, np.int32)
    feed_len = np.zeros(b, np.int32)
    for i in rows:
      row = [int(tokens[i, rewind[i] - 1])] + ids[i]      # re-feed the closing tag's last token
      feed[i, :len(row)] = row
      feed_len[i] = len(row)
      new_len = rewind[i] + len(ids[i])
      turn_start[i] = new_len
      if new_len >= limit[i]:                              # the observation filled the budget
        finish[i], active[i] = T.LENGTH, False
    return self.engine.splice(params, state, self._put(feed), self._put(feed_len),
                              self._put(rewind.astype(np.int32)), self._put(active))

  def _collect(self, state, plen, finish, nsearch, nerr, queries, st, t0, n: int) -> T.Rollout:
    """The first n rows (the rest are pad_single_row's dead copy) as a Rollout."""
    tokens, mask, lps, length = (x[:n] for x in jax.device_get(
        (state["tokens"], state["mask"], state["logprobs"], state["length"])))
    plen, finish, nsearch, nerr, queries = plen[:n], finish[:n], nsearch[:n], nerr[:n], queries[:n]
    live = np.arange(tokens.shape[1])[None, :] < length[:, None]
    tokens = np.where(live, tokens, self.rcfg.pad_id).astype(np.int32)
    mask = np.where(live, mask, 0).astype(np.int32)
    lps = np.where(live & (mask == 1), lps, 0.0).astype(np.float32)
    texts = [tools.safe_decode(self.tok, tokens[i, plen[i]:length[i]]) for i in range(len(plen))]
    st["total_s"] = time.perf_counter() - t0
    st["outside_decode_share"] = 1.0 - st["decode_s"] / max(st["total_s"], 1e-9)
    return T.Rollout(tokens=tokens, loss_mask=mask, logprobs=lps, prompt_lengths=plen.astype(np.int32),
                     lengths=length.astype(np.int32), num_searches=nsearch, num_tool_errors=nerr,
                     queries=queries, finish_reason=[f or T.LENGTH for f in finish], texts=texts,
                     stats=st)
