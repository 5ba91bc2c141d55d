"""The device half of the sampler: prefill, chunked decode and splicing, each one jitted program.

All state lives in one dict pytree with static shapes (B rows, T = max_len buffer):
  cache      model KV cache (kv_cache.py) of kv_cache.aligned_length(T) slots;
             cache["end"] == length at every function boundary
  logits     [B, V] f32   next-token logits of each row (what the next decode step samples from)
  tokens     [B, T] int32 the row's sequence: prompt, then policy and tool tokens, at slot = position
  logprobs   [B, T] f32   sampler log-probs at policy slots, 0 elsewhere
  mask       [B, T] int32 1 at policy slots
  length     [B] int32    filled slots (= position of the next token)
  limit      [B] int32    a row stops with reason LENGTH when length reaches it
  active     [B] bool     row decodes; paused and finished rows pass segment id 0 and never move
  reason     [B] int32    why the device stopped the row in the last chunk (R_* below)
  keys       [B, 2] uint32 per-row PRNG keys
The host owns the protocol; it reads length/reason/tokens between chunks and writes back lengths,
active flags and spliced observations through `splice` (which never changes shapes).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from masksearch_jax.model import kv_cache, qwen2
from masksearch_jax.model.config import Qwen2Config
from masksearch_jax.parallel import mesh as mesh_lib
from masksearch_jax.rollout import sampling
from masksearch_jax.rollout.types import RolloutConfig, SamplingConfig

R_NONE, R_EOS, R_STOP_IDS, R_LENGTH = 0, 1, 2, 3

# hook(logits [B, V], tokens [B, T], mask [B, T], length [B]) -> logits [B, V]; runs inside jit.
LogitsHook = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def _gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x [B, T, ...], idx [B] -> x[b, idx[b]] [B, ...]."""
  return jnp.take_along_axis(x, idx.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]


def _scatter_rows(buf: jax.Array, pos: jax.Array, val: jax.Array, keep: jax.Array) -> jax.Array:
  """buf[b, pos[b, j]] = val[b, j] where keep[b, j]; pos/val/keep [B, W]. Others untouched."""
  rows = jnp.arange(buf.shape[0])[:, None]
  pos = jnp.where(keep, pos, buf.shape[1])                 # out of range -> dropped
  return buf.at[rows, pos].set(val.astype(buf.dtype), mode="drop")


def stop_ids_matched(tokens, mask, length, stop_ids: tuple[tuple[int, ...], ...]) -> jax.Array:
  """[B] bool: the row's last policy tokens equal one of the stop-id sequences."""
  if not stop_ids:
    return jnp.zeros(length.shape, bool)
  w = max(len(s) for s in stop_ids)
  seqs = jnp.array([(-1,) * (w - len(s)) + tuple(s) for s in stop_ids], jnp.int32)  # [S, W]
  pos = length[:, None] - w + jnp.arange(w)[None, :]          # [B, W] the last w slots
  ok = pos >= 0
  pos = jnp.maximum(pos, 0)
  win = jnp.where(ok, jnp.take_along_axis(tokens, pos, axis=1), -2)
  wmask = jnp.where(ok, jnp.take_along_axis(mask, pos, axis=1), 0)
  hit = (seqs[None] == -1) | ((win[:, None] == seqs[None]) & (wmask[:, None] == 1))
  return jnp.any(jnp.all(hit, axis=-1), axis=-1)


def _largest_divisor_at_most(n: int, k: int) -> int:
  return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


class Engine:
  """Jitted prefill / decode / splice for one (model config, sampling, rollout config)."""

  def __init__(self, cfg: Qwen2Config, sampling_cfg: SamplingConfig, rollout_cfg: RolloutConfig,
               stop_ids: tuple[tuple[int, ...], ...] = (), *, compute_dtype=jnp.bfloat16,
               cache_dtype=jnp.bfloat16, attn_impl: str = "xla", scan_layers: bool = True,
               logits_hook: LogitsHook | None = None, state_sharding: Callable | None = None,
               mesh=None, linear_impl: str = "xla"):
    self.cfg, self.sampling, self.rcfg = cfg, sampling_cfg, rollout_cfg
    self.stop_ids = tuple(tuple(int(t) for t in s) for s in stop_ids if s)
    self.cache_dtype, self.compute_dtype = cache_dtype, compute_dtype
    self.hook = logits_hook
    self.scan_layers = scan_layers
    self._constrain = state_sharding or (lambda s: s)
    self.attn_impl = attn_impl
    if linear_impl not in qwen2.LINEAR_IMPLS:
      raise ValueError(f"linear_impl {linear_impl!r} not in {qwen2.LINEAR_IMPLS}")
    if linear_impl != "xla" and scan_layers:
      raise ValueError(f"linear_impl={linear_impl!r} needs scan_layers=False (the unrolled decode "
                       "layout)")
    if linear_impl == "pallas" and mesh is not None and mesh.size > 1:
      raise ValueError("linear_impl='pallas' runs on one device (its kernels are not partitioned);"
                       f" got a mesh of {mesh.size} devices — use linear_impl='xla'")
    self.linear_impl = linear_impl
    self._model = functools.partial(qwen2.apply, cfg=cfg, attn_impl=attn_impl,
                                    compute_dtype=compute_dtype, scan_layers=scan_layers)
    on = lambda f: mesh_lib.under_mesh(f, mesh)     # fused attention runs per shard under it
    self.prefill = on(jax.jit(self._prefill))
    self.decode = on(jax.jit(self._decode, donate_argnums=(1,)))
    self.splice = on(jax.jit(self._splice, donate_argnums=(1,)))
    self.update = jax.jit(self._update, donate_argnums=(0,))

  # ---- programs ------------------------------------------------------------------------------
  def _cast(self, params):
    """Weights in the compute dtype once per call, outside the decode loop: the model casts them
    anyway, and this way each step reads bf16 weights even when the params are f32 masters."""
    if not self.scan_layers:        # per-layer buffers + fused projections (qwen2.decode_layout)
      return qwen2.decode_layout(params, self.cfg, self.compute_dtype, self.linear_impl)
    cast = lambda x: x.astype(self.compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree.map(cast, params)

  def _last_logits(self, params, h, last):
    """Logits only at each row's last real token (never the whole [B, T, V] block)."""
    hl = _gather_rows(h, last)[:, None]                        # [B, 1, D]
    return qwen2.logits_from_hidden(params, self.cfg, hl)[:, 0]  # [B, V] f32

  def _prefill(self, params, prompt, prompt_len, limit, keys):
    """prompt [B, P] right-padded, prompt_len [B] >= 1 -> fresh state."""
    params = self._cast(params)
    b, p = prompt.shape
    t = self.rcfg.max_len
    cache = kv_cache.init_cache(self.cfg, b, kv_cache.aligned_length(t), self.cache_dtype,
                                per_layer=not self.scan_layers)
    seg = (jnp.arange(p)[None, :] < prompt_len[:, None]).astype(jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    h, cache = self._model(params, tokens=prompt, positions=pos, segment_ids=seg, cache=cache,
                           return_hidden=True)
    tokens = jnp.full((b, t), self.rcfg.pad_id, jnp.int32)
    tokens = jax.lax.dynamic_update_slice(tokens, jnp.where(seg == 1, prompt, self.rcfg.pad_id), (0, 0))
    active = prompt_len < limit
    state = dict(cache=cache, logits=self._last_logits(params, h, prompt_len - 1),
                 tokens=tokens, logprobs=jnp.zeros((b, t), jnp.float32),
                 mask=jnp.zeros((b, t), jnp.int32), length=prompt_len.astype(jnp.int32),
                 limit=limit.astype(jnp.int32), active=active,
                 reason=jnp.where(active, R_NONE, R_LENGTH).astype(jnp.int32), keys=keys)
    return self._constrain(state)

  def _step(self, params, s):
    """One token for every active row; paused/finished rows run as padding and do not move."""
    logits = s["logits"]
    if self.hook is not None:
      logits = self.hook(logits, s["tokens"], s["mask"], s["length"])
    tok, lp = sampling.sample(logits, s["keys"], s["length"], self.sampling)
    act, pos = s["active"], s["length"]
    keep = act[:, None]
    tokens = _scatter_rows(s["tokens"], pos[:, None], tok[:, None], keep)
    logprobs = _scatter_rows(s["logprobs"], pos[:, None], lp[:, None], keep)
    mask = _scatter_rows(s["mask"], pos[:, None], jnp.ones_like(tok)[:, None], keep)
    new_logits, cache = self._model(params, tokens=tok[:, None], positions=pos[:, None],
                                    segment_ids=keep.astype(jnp.int32), cache=s["cache"])
    length = pos + act.astype(jnp.int32)
    eos = jnp.isin(tok, jnp.array(self.rcfg.eos_ids or (-1,), jnp.int32))
    seq = stop_ids_matched(tokens, mask, length, self.stop_ids)
    full = length >= s["limit"]
    reason = jnp.where(eos, R_EOS, jnp.where(seq, R_STOP_IDS, jnp.where(full, R_LENGTH, R_NONE)))
    reason = jnp.where(act, reason, s["reason"])
    return dict(s, cache=cache, logits=jnp.where(keep, new_logits[:, 0], s["logits"]),
                tokens=tokens, logprobs=logprobs, mask=mask, length=length,
                active=act & (reason == R_NONE), reason=reason)

  def _decode(self, params, state):
    """Up to chunk_steps tokens per active row; returns early once no row is active."""
    params = self._cast(params)
    state = dict(state, reason=jnp.zeros_like(state["reason"]))   # reasons of this chunk only
    b = state["active"].shape[0]
    frac = self.rcfg.pause_exit_fraction
    pause_exit = max(1, int(np.ceil(frac * b))) if frac > 0 else b + 1

    def cond(c):
      i, s = c
      paused = jnp.sum((s["reason"] == R_STOP_IDS) & ~s["active"])
      return (i < self.rcfg.chunk_steps) & jnp.any(s["active"]) & (paused < pause_exit)

    k = _largest_divisor_at_most(self.rcfg.chunk_steps, self.rcfg.steps_per_check)

    def body(c):
      i, s = c
      if k == 1:
        return i + 1, self._step(params, s)
      # Fixed trip count: XLA runs it without a host round trip per step.
      return i + k, jax.lax.fori_loop(0, k, lambda _, s: self._step(params, s), s)

    _, state = jax.lax.while_loop(cond, body, (jnp.int32(0), state))
    return self._constrain(state)

  def _splice(self, params, state, feed, feed_len, rewind, active):
    """Rows with feed_len > 0 rewind to `rewind`, re-feed their last kept token (feed[:, 0]) and
    then append feed[:, 1:feed_len] as tool tokens (mask 0); their next logits come from the last
    fed token. Other rows only take `rewind` as their length. feed [B, W], the rest [B]."""
    params = self._cast(params)
    spliced = feed_len > 0
    start = jnp.where(spliced, rewind - 1, rewind)
    w = feed.shape[1]
    j = jnp.arange(w)[None, :]
    seg = (j < feed_len[:, None]).astype(jnp.int32)
    cache = dict(state["cache"], end=start)
    h, cache = self._model(params, tokens=feed, positions=start[:, None] + j, segment_ids=seg,
                           cache=cache, return_hidden=True)
    logits = self._last_logits(params, h, jnp.maximum(feed_len - 1, 0))
    pos, keep = start[:, None] + j, (seg == 1) & (j >= 1)
    zeros = jnp.zeros_like(feed)
    state = dict(state, cache=cache,
                 logits=jnp.where(spliced[:, None], logits, state["logits"]),
                 tokens=_scatter_rows(state["tokens"], pos, feed, keep),
                 logprobs=_scatter_rows(state["logprobs"], pos, zeros, keep),
                 mask=_scatter_rows(state["mask"], pos, zeros, keep),
                 length=jnp.where(spliced, start + feed_len, rewind).astype(jnp.int32),
                 active=active, reason=jnp.zeros_like(state["reason"]))
    return self._constrain(state)

  def _update(self, state, rewind, active):
    """Host decisions without new tokens: lengths (rollback to a stop string) and active flags."""
    cache = dict(state["cache"], end=rewind.astype(jnp.int32))
    return self._constrain(dict(state, cache=cache, length=rewind.astype(jnp.int32),
                                active=active, reason=jnp.zeros_like(state["reason"])))
