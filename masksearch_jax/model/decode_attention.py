"""One-token decode attention against the KV cache as a single Pallas (Triton) kernel.

Why: at decode, XLA lowers attention over the cache to several small kernels per layer (scores,
softmax reductions, weighted sum), and small kernels are where a 1.5B decode step at batch 1
spends half its time on an H100 (1.19 of 2.34 ms; benchmarks/RESULTS.md); XLA also reads the whole
cache, filled or not. This kernel does one layer's attention in one launch, split-K:
program (row b, kv head h, key split c) walks its share of that head's keys straight from the
cache layout [B, S, K, Dh] (no transpose copy) in 64-key blocks with an online softmax, reads
nothing past the row's length (masked loads), and writes a partial (max, sum, weighted values);
a few XLA ops then merge the splits (flash-decoding). How many splits: `key_splits` (one 64-key
block a program at batch 1; two shares a row at batch 64, where one block a program made the
partials' traffic half the cache's: 1.5B on an H200, 29,433 vs 28,462 tok/s; RESULTS.md). The
attend-only kernel shares out the row's filled blocks, not the cache's, so that no program walks
them all while the others idle.

`decode_attend_write` also appends the new token's key and value to the cache: the program whose
key block holds slot `end` (the row's length before this token) attends to the new key from its
input instead of the cache, and stores it there (the cache is an aliased output). This replaces
the model's two XLA scatters a layer into the cache (~130-140 us of a 1.5B decode step on an H200
at batch 1 and 64; benchmarks/RESULTS.md). Measured at batch 1 (two rows): +3% decode tokens/s;
at batch 64 it loses (28,544 vs 29,433 tok/s, same machine), so the model uses it up to
WRITE_MAX_ROWS rows only; above that one separate kernel writes both (model/cache_append.py).

Used for `attn_impl="pallas"` when a forward appends exactly one token to a cache; on other
backends than GPU it runs in Pallas interpret mode (tests). Equal to `attention.attend_xla` with
the cache mask (slots < length) up to float rounding.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

_Q_ROWS = 16                       # tl.dot needs >= 16 rows: the G query heads of a group are padded
_NEG = -1e30
WRITE_MAX_ROWS = 8                 # rows up to which the model appends k/v inside the kernel
# Programs a layer's kernel aims for (about two per SM of an H100/H200): the keys of one (row, kv
# head) are split over just enough programs to reach it. Few rows (batch 1): every 64-key block is
# its own program and an XLA merge combines them; many rows: each program walks its share of the
# keys, and with one share a row the kernel normalises its output itself (no partials, no merge).
# Measured (1.5B, H200, one machine): batch 64 with 2 splits 29,433 tok/s (28,462 with one block
# a program); with the k/v append in the kernel 2 / 4 / 1 splits 28,544 / 28,139 / 26,485;
# batch 1 with 12 splits (every block) 697, 3 splits 641, 1 split 504. With one split the kernel
# stores the G real rows straight into [B, H, Dh] (no XLA slice after it): 128 rows 51,779-51,938
# tok/s against 51,336-51,402 with the slice (+0.8-1.1%, alternating processes; 256 rows equal;
# session 25).
# KEY_SPLITS (set by benchmarks) forces a count.
MIN_PROGRAMS = 256
KEY_SPLITS: int | None = None
# The kernels' tiling: keys per inner step (at most; the largest of 128/64/32/16 <= it dividing
# the cache length), Triton warps per program and software-pipeline stages of the key loop. Module
# settings (read when a call is traced; benchmarks/decode_attention.py sweeps them per call through
# the keyword arguments of the same names); NUM_WARPS / NUM_STAGES None: each kernel's measured
# default (_TILING).
BLOCK_KEYS = 64
NUM_WARPS: int | None = None
NUM_STAGES: int | None = None
# (warps, stages) per kernel. The attend-only kernel runs above WRITE_MAX_ROWS rows, where each
# program walks several key blocks and a third pipeline stage keeps more loads in flight: 1.5B,
# batch 64, H200, w2 s3 31,684 / 31,614 tok/s against w4 s2 30,464 / 30,547 (session 21,
# RESULTS.md; the best of 36 tilings alone, benchmarks/decode_attention.py). The appending kernel
# (one block a program at few rows) is latency-bound: the best tiling alone, w4 s1, gave 695.6
# against 694.1 tok/s at batch 1, so it keeps w4 s2.
_TILING = {"attend": (2, 3), "write": (4, 2)}


def set_tiling(spec: str) -> None:
  """'bBLOCK wWARPS sSTAGES' (any subset, e.g. 'b128 s3') -> BLOCK_KEYS / NUM_WARPS / NUM_STAGES,
  for the benchmarks' A/B flags; '' changes nothing."""
  global BLOCK_KEYS, NUM_WARPS, NUM_STAGES
  parts = spec.split()
  bad = [p for p in parts if p[:1] not in ("b", "w", "s") or not p[1:].isdigit() or int(p[1:]) < 1]
  if bad:
    raise ValueError(f"decode attention tiling {spec!r}: expected 'bN wN sN' items, got {bad}")
  got = {p[0]: int(p[1:]) for p in parts}
  BLOCK_KEYS = got.get("b", BLOCK_KEYS)
  NUM_WARPS = got.get("w", NUM_WARPS)
  NUM_STAGES = got.get("s", NUM_STAGES)


def block_size(s: int, max_block: int | None = None) -> int | None:
  """Keys per inner step: the largest of 128/64/32/16 that is <= max_block (None: BLOCK_KEYS)
  and divides the cache length s (None: no such size, the shape is unsupported)."""
  cap = BLOCK_KEYS if max_block is None else max_block
  for blk in (128, 64, 32, 16):
    if blk <= cap and s % blk == 0:
      return blk
  return None


def key_splits(b: int, kh: int, nb: int) -> int:
  """Programs per (row, kv head) for nb key blocks: the smallest divisor of nb that gives
  MIN_PROGRAMS programs (nb when none does), or the largest divisor <= KEY_SPLITS if set."""
  divisors = [d for d in range(1, nb + 1) if nb % d == 0]
  if KEY_SPLITS is not None:
    if KEY_SPLITS < 1:
      raise ValueError(f"decode_attention.KEY_SPLITS={KEY_SPLITS}: must be >= 1 (or None)")
    return max(d for d in divisors if d <= KEY_SPLITS)
  return next((d for d in divisors if b * kh * d >= MIN_PROGRAMS), nb)


def _plan(b: int, kh: int, s: int, splits: int | None,
          max_block: int | None = None) -> tuple[int, int, int]:
  """(keys per inner step, programs per (row, kv head), inner steps per program) for a cache of
  s slots; splits None: key_splits' choice; max_block None: BLOCK_KEYS."""
  blk = block_size(s, max_block)
  if blk is None:
    raise ValueError(f"decode attention: no key block of 16..{max_block or BLOCK_KEYS} divides "
                     f"the {s}-slot cache")
  nb = s // blk
  ns = splits or key_splits(b, kh, nb)
  if ns < 1 or nb % ns:
    raise ValueError(f"decode attention: splits={ns} must divide the {nb} key blocks of a "
                     f"{s}-slot cache (else some keys would never be attended)")
  return blk, ns, nb // ns


def supported(q_shape, k_shape) -> bool:
  """One query token, head_dim a power of two >= 16, cache length a multiple of 16."""
  _, t, h, dh = q_shape
  _, s, kh, _ = k_shape
  return (t == 1 and h % kh == 0 and h // kh <= _Q_ROWS and dh >= 16 and dh & (dh - 1) == 0
          and block_size(s) is not None)


def _attend_span(load_kv, q, *, start, n, blk: int, steps, scale: float):
  """Online softmax of the 16 query rows q [16, Dh] over keys [start, start + steps * blk)
  (steps static or traced), of which those >= n are masked (and not read: load_kv(i, live) loads
  block i's keys and values [blk, Dh] only where live [blk]). Returns (acc [16, Dh]
  unnormalised, m [16], l [16]) in f32. With start < n the first block has a live key, so m is
  finite from then on; a program wholly past n reads nothing and returns m = -1e30, which
  _finish turns into the neutral partial."""
  def body(i, carry):
    m, l, acc = carry
    live = start + i * blk + jnp.arange(blk) < n
    k, v = load_kv(i, live)
    s = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * scale          # [16, blk]
    s = jnp.where(live[None, :], s, _NEG)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[:, None])
    acc = acc * alpha[:, None] + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return m_new, l * alpha + jnp.sum(p, axis=1), acc

  init = (jnp.full((_Q_ROWS,), _NEG, jnp.float32), jnp.zeros((_Q_ROWS,), jnp.float32),
          jnp.zeros((_Q_ROWS, q.shape[-1]), jnp.float32))
  m, l, acc = jax.lax.fori_loop(0, steps, body, init)
  return acc, m, l


def _finish(acc, m, l, out_refs, *, start, n):
  """Store a program's result: with partial refs (o, m, l) its flash-decoding partial (a program
  wholly past the row's length writes the neutral (0, -1e30, 0)); with one ref [G, Dh] (the
  program saw all of the row's keys) the G real rows, normalised, in that ref's dtype — straight
  into the model's [B, H, Dh] layout, so no XLA slice of the padded rows follows the kernel.
  (Triton tiles are powers of two and G need not be: each row is picked out of the tile.)"""
  if len(out_refs) == 1:
    out_ref = out_refs[0]
    out = acc / jnp.maximum(l, 1e-30)[:, None]
    rid = jnp.arange(_Q_ROWS)[:, None]
    for r in range(out_ref.shape[0]):
      out_ref[r, :] = jnp.sum(jnp.where(rid == r, out, 0.0), axis=0).astype(out_ref.dtype)
    return
  o_ref, m_ref, l_ref = out_refs
  live = start < n
  o_ref[...] = jnp.where(live, acc, 0.0)
  m_ref[...] = jnp.where(live, m, _NEG)
  l_ref[...] = jnp.where(live, l, 0.0)


def _masked_block(ref, i, blk, live):
  """Block i [blk, Dh] of a [steps * blk, Dh] key or value ref; rows not `live` read as 0 without
  touching memory (Triton predicates the load), so keys past a row's length cost no bandwidth."""
  from jax.experimental.pallas import triton as plgpu
  return plgpu.load(ref.at[pl.ds(i * blk, blk), :], mask=live[:, None], other=0)


def _kernel(len_ref, q_ref, k_ref, v_ref, *out_refs, scale: float, blk: int, ns: int):
  """len_ref [] int32; q_ref [16, Dh]; k_ref/v_ref [S, Dh] (the row's whole cache for this kv
  head); out_refs: o [16, Dh] f32, m/l [16] f32 (partials), or out [16, Dh] (ns == 1).
  The ns programs of a (row, kv head) share its *filled* blocks evenly (program c walks blocks
  [c * per, c * per + per) of the cdiv(n, blk) live ones), not the cache's: with a static split
  the program holding the cache's start walked every filled block while the others idled
  (at 512 of 768 slots filled and 2 splits: 6 blocks against 2)."""
  # A full row steps on with length S + 1 (its token dropped): attend the S slots, read no more.
  n, c = jnp.minimum(len_ref[...], k_ref.shape[0]), pl.program_id(2)
  live_blocks = (n + blk - 1) // blk
  per = (live_blocks + ns - 1) // ns
  first = c * per
  steps = jnp.clip(live_blocks - first, 0, per)
  load_kv = lambda i, live: (_masked_block(k_ref, first + i, blk, live),
                             _masked_block(v_ref, first + i, blk, live))
  acc, m, l = _attend_span(load_kv, q_ref[...], start=first * blk, n=n, blk=blk, steps=steps,
                           scale=scale)
  _finish(acc, m, l, out_refs, start=first * blk, n=n)


def _kernel_write(end_ref, q_ref, kn_ref, vn_ref, k_ref, v_ref, *refs, scale: float, blk: int,
                  steps: int):
  """As _kernel with the new token at slot end_ref[] (keys < end are the cache's): kn_ref/vn_ref
  [1, Dh] its key/value in the cache dtype; the last two refs [steps * blk, Dh] alias k_ref/
  v_ref's buffers. The stale slot's load may race with the store; it is replaced by kn/vn."""
  *out_refs, ko_ref, vo_ref = refs
  start, end = pl.program_id(2) * steps * blk, end_ref[...]
  kn, vn = kn_ref[...], vn_ref[...]                                # read once, not per block

  def load_kv(i, live):
    new = (start + i * blk + jnp.arange(blk) == end)[:, None]
    return (jnp.where(new, kn, _masked_block(k_ref, i, blk, live)),
            jnp.where(new, vn, _masked_block(v_ref, i, blk, live)))

  acc, m, l = _attend_span(load_kv, q_ref[...], start=start, n=end + 1, blk=blk, steps=steps,
                           scale=scale)
  _finish(acc, m, l, out_refs, start=start, n=end + 1)

  @pl.when((start <= end) & (end < start + steps * blk))
  def _():
    ko_ref[pl.ds(end - start, 1), :] = kn
    vo_ref[pl.ds(end - start, 1), :] = vn


def _merge(o, m, l, b, kh, ns, g, h, dh, dtype):
  """Flash-decoding merge of the key splits' partials -> [B, 1, H, Dh]: weights exp(m_c - max_c
  m_c); splits past the length have m = -1e30 -> weight 0. Only the G real query rows are read."""
  o = o.reshape(b, kh, ns, _Q_ROWS, dh)[:, :, :, :g]
  m, l = (x.reshape(b, kh, ns, _Q_ROWS)[..., :g] for x in (m, l))
  w = jnp.exp(m - jnp.max(m, axis=2, keepdims=True))                      # [B, K, ns, G]
  num = jnp.sum(o * w[..., None], axis=2)                                  # [B, K, G, Dh]
  den = jnp.sum(l * w, axis=2)[..., None]
  return (num / jnp.maximum(den, 1e-30)).reshape(b, 1, h, dh).astype(dtype)


def _padded_queries(q, kh):
  """q [B, 1, H, Dh] -> [B, K * 16, Dh]: each kv head's G query heads, then zero rows."""
  b, _, h, dh = q.shape
  qg = q.reshape(b, kh, h // kh, dh)
  return jnp.pad(qg, ((0, 0), (0, 0), (0, _Q_ROWS - h // kh), (0, 0))).reshape(b, kh * _Q_ROWS, dh)


def kv_row(kh: int) -> int:
  """Where the new keys start in new_rows' layout (after K x 16 query rows)."""
  return kh * _Q_ROWS


def new_rows(q, k_new, v_new):
  """One decode step's padded queries and new keys and values as one array [B, K * 16 + 2K, Dh]
  in q's dtype (row i: K x 16 query rows, K key rows, K value rows), so that XLA computes them
  all (bias, RoPE, the padding, the split of the fused q/k/v product) in one fusion; the kernels
  read their parts through block specs (decode_attend_write, decode_attend_rows and
  cache_append.append_rows with first = K * 16)."""
  b, kh, dh = k_new.shape[0], k_new.shape[2], k_new.shape[3]
  return jnp.concatenate([_padded_queries(q, kh), k_new.reshape(b, kh, dh).astype(q.dtype),
                          v_new.reshape(b, kh, dh).astype(q.dtype)], axis=1)


def _outputs_io(b: int, kh: int, ns: int, dh: int, dtype, h: int):
  """(q block spec, out specs, out shapes) of a grid (row, kv head, key split): queries read
  from rows [B, >= K * 16, Dh] (new_rows, or the padded queries alone); partials
  o [B * K * ns, 16, Dh], m / l [B * K * ns, 16] f32 out — or, with one split, the normalised
  output [B, H, Dh] in `dtype` (program (i, j) writes heads jG .. jG + G - 1 of row i)."""
  q_spec = pl.BlockSpec((None, _Q_ROWS, dh), lambda i, j, c: (i, j, 0))   # rows 16j.. of row i
  if ns == 1:
    out = pl.BlockSpec((None, h // kh, dh), lambda i, j, c: (i, j, 0))
    return (q_spec, [out], [jax.ShapeDtypeStruct((b, h, dh), dtype)])
  part = lambda i, j, c: ((i * kh + j) * ns + c, 0)
  specs = [pl.BlockSpec((None, _Q_ROWS, dh), lambda i, j, c: part(i, j, c) + (0,)),
           pl.BlockSpec((None, _Q_ROWS), part), pl.BlockSpec((None, _Q_ROWS), part)]
  shapes = [jax.ShapeDtypeStruct((b * kh * ns, _Q_ROWS, dh), jnp.float32),
            jax.ShapeDtypeStruct((b * kh * ns, _Q_ROWS), jnp.float32),
            jax.ShapeDtypeStruct((b * kh * ns, _Q_ROWS), jnp.float32)]
  return q_spec, specs, shapes


def _combine(outs, b, kh, ns, g, h, dh, dtype):
  """The kernel's outputs -> [B, 1, H, Dh]: the merge of partials, or the output itself."""
  if ns == 1:
    return outs[0].reshape(b, 1, h, dh)
  return _merge(*outs, b, kh, ns, g, h, dh, dtype)


def _compiler_params(interpret: bool, kernel: str, num_warps: int | None,
                     num_stages: int | None) -> dict:
  """Triton launch settings of `kernel` ("attend" / "write"): the arguments, else the module's
  NUM_WARPS / NUM_STAGES, else _TILING's; none in interpret mode."""
  if interpret:
    return {}
  from jax.experimental.pallas import triton as plgpu
  w, st = _TILING[kernel]
  return {"compiler_params": plgpu.CompilerParams(num_warps=num_warps or NUM_WARPS or w,
                                                  num_stages=num_stages or NUM_STAGES or st)}


def _kv_spec(span: int, dh: int):
  """Keys (or values) [span, Dh] of one kv head from the cache viewed as [B, S, K * Dh]."""
  return pl.BlockSpec((None, span, dh), lambda i, j, c: (i, c, j))


_STATIC = ("interpret", "splits", "block", "num_warps", "num_stages")


@functools.partial(jax.jit, static_argnames=_STATIC)
def decode_attend_write(q, k_new, v_new, k_cache, v_cache, end, *, interpret: bool = False,
                        splits: int | None = None, block: int | None = None,
                        num_warps: int | None = None, num_stages: int | None = None):
  """Append one token to the cache and attend over it, in one kernel. q [B, 1, H, Dh]; k_new/
  v_new [B, 1, K, Dh] and the caches [B, S, K, Dh] in one dtype (q's); end [B] int32: the slot
  of the new token (slots < end hold the row's keys; end >= S: the token is dropped and all S
  slots attended, as the scatter with mode="drop" and lengths end + 1 did). splits: programs per
  (row, kv head), a divisor of S / block_size(S) (None: key_splits' choice). block, num_warps,
  num_stages: the tiling (None: BLOCK_KEYS, NUM_WARPS, NUM_STAGES).
  Returns (out [B, 1, H, Dh], k_cache, v_cache) with the caches updated in place."""
  b, _, h, dh = q.shape
  s, kh = k_cache.shape[1], k_cache.shape[2]
  blk, ns, steps = _plan(b, kh, s, splits, block)
  k3, v3 = k_cache.reshape(b, s, kh * dh), v_cache.reshape(b, s, kh * dh)
  kv_spec = _kv_spec(steps * blk, dh)
  # Queries and the new k and v in one array (new_rows): one XLA fusion a layer computes them,
  # not two (batch 1 on an H200: 702.2 / 700.3 vs 695.6 / 696.4 tok/s; RESULTS.md, session 21).
  qr = kv_row(kh)
  rows = new_rows(q, k_new, v_new)                                     # [B, qr + 2K, Dh]
  k_spec = pl.BlockSpec((None, 1, dh), lambda i, j, c: (i, qr + j, 0))
  v_spec = pl.BlockSpec((None, 1, dh), lambda i, j, c: (i, qr + kh + j, 0))
  q_spec, out_specs, out_shapes = _outputs_io(b, kh, ns, dh, q.dtype, h)
  *outs, k3, v3 = pl.pallas_call(
      functools.partial(_kernel_write, scale=dh ** -0.5, blk=blk, steps=steps),
      grid=(b, kh, ns),
      in_specs=[pl.BlockSpec((None,), lambda i, j, c: (i,)), q_spec, k_spec, v_spec,
                kv_spec, kv_spec],
      out_specs=out_specs + [kv_spec, kv_spec],
      out_shape=out_shapes + [jax.ShapeDtypeStruct(k3.shape, k3.dtype),
                              jax.ShapeDtypeStruct(v3.shape, v3.dtype)],
      input_output_aliases={4: len(out_specs), 5: len(out_specs) + 1},
      interpret=interpret, name="decode_attention_write",
      **_compiler_params(interpret, "write", num_warps, num_stages),
  )(end.astype(jnp.int32), rows, rows, rows, k3, v3)
  out = _combine(outs, b, kh, ns, h // kh, h, dh, q.dtype)
  return out, k3.reshape(k_cache.shape), v3.reshape(v_cache.shape)


@functools.partial(jax.jit, static_argnames=_STATIC)
def decode_attend(q, k, v, lengths, *, interpret: bool = False, splits: int | None = None,
                  block: int | None = None, num_warps: int | None = None,
                  num_stages: int | None = None):
  """q [B, 1, H, Dh], k/v [B, S, K, Dh] (the cache), lengths [B] int32 (slots < length are
  attended; >= 1) -> [B, 1, H, Dh] in q's dtype. splits, block, num_warps, num_stages: as in
  decode_attend_write."""
  return decode_attend_rows(_padded_queries(q, k.shape[2]), k, v, lengths, num_heads=q.shape[2],
                            interpret=interpret, splits=splits, block=block, num_warps=num_warps,
                            num_stages=num_stages)


@functools.partial(jax.jit, static_argnames=_STATIC + ("num_heads",))
def decode_attend_rows(rows, k, v, lengths, *, num_heads: int, interpret: bool = False,
                       splits: int | None = None, block: int | None = None,
                       num_warps: int | None = None, num_stages: int | None = None):
  """decode_attend with the queries given padded, as the first K * 16 rows of rows [B, R, Dh]
  (new_rows' layout; rows past them are not read) -> [B, 1, num_heads, Dh] in rows' dtype."""
  b, s, kh, dh = k.shape
  h = num_heads
  if (rows.shape[0] != b or rows.shape[2] != dh or rows.shape[1] < kv_row(kh) or h % kh
      or not 1 <= h // kh <= _Q_ROWS):
    raise ValueError(f"decode_attend_rows: rows {rows.shape} must hold {kv_row(kh)} padded query "
                     f"rows of {dh} for each of the {b} cache rows, and num_heads={h} must be a "
                     f"multiple of the {kh} kv heads, at most {_Q_ROWS} per kv head")
  blk, ns, _ = _plan(b, kh, s, splits, block)
  k3, v3 = k.reshape(b, s, kh * dh), v.reshape(b, s, kh * dh)     # free: heads side by side
  kv_spec = pl.BlockSpec((None, s, dh), lambda i, j, c: (i, 0, j))   # the whole row: see _kernel
  q_spec, out_specs, out_shapes = _outputs_io(b, kh, ns, dh, rows.dtype, h)
  outs = pl.pallas_call(
      functools.partial(_kernel, scale=dh ** -0.5, blk=blk, ns=ns),
      grid=(b, kh, ns),
      in_specs=[pl.BlockSpec((None,), lambda i, j, c: (i,)), q_spec, kv_spec, kv_spec],
      out_specs=out_specs, out_shape=out_shapes,
      interpret=interpret, name="decode_attention",
      **_compiler_params(interpret, "attend", num_warps, num_stages),
  )(lengths.astype(jnp.int32), rows, k3, v3)
  return _combine(outs, b, kh, ns, h // kh, h, dh, rows.dtype)
