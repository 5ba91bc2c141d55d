"""A whole one-token decode step of Qwen2 as ONE Pallas (Triton) kernel: every layer's q/k/v,
attention, o, MLP and the LM head, its programs meeting at grid-wide barriers between stages.

Why: a decode step at few rows is ~12 dependent kernels a layer, each paying a fixed launch
cost; one persistent launch streams the same weights at the copy rate (4.25 TB/s for the 1.5B's
layer weights, 0.834 ms with a barrier after each of their 112 stages on an H200;
benchmarks/grid_barrier.py, docs/decode_megakernel.md). Status: the first, correctness-first
version — equal to `qwen2.apply`'s decode step on CPU (interpret mode, one program) and lowers
for CUDA; not yet timed on a GPU, not used by the sampler (opt-in, next: the measurement).

Stages a layer (each hands its work items to the programs with a grid stride, then a barrier):
  qkv   one item a head (input norm folded into the weights: h * 1/RMS(h) times them, + bias)
  attn  one item a (row, kv head): RoPE on q and the new k, the new k/v written to the cache,
        online softmax over the row's filled slots and the new token
  o     one item a 64-column tile: h += attn @ W_o
  mlp   one item a block of hidden units: silu(gate) * up (post-norm folded, columns of gate
        and up interleaved per block)
  down  one item a 64-column tile: h += act @ W_down
then the final norm and the LM head over vocabulary tiles. Activations pass between stages
through global scratch buffers of 16 rows (Triton's smallest `dot`), read past the L1
(volatile loads): another program wrote them. No float atomics touch data, so a step repeats bit for bit.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from masksearch_jax.model.config import Qwen2Config

ROWS = 16                          # rows of every activation tile (tl.dot's minimum)
BLOCK_N = 64                       # output columns of a tile
BLOCK_K = 128                      # reduction step of a product
BLOCK_KEYS = 64                    # cache slots per attention step


def _tiles(cfg: Qwen2Config) -> tuple[int, int]:
  """(columns of a tile, reduction step) for this model: BLOCK_N / BLOCK_K capped by D."""
  d = cfg.hidden_size
  return min(BLOCK_N, d), min(BLOCK_K, d, cfg.intermediate_size)


def supported(cfg: Qwen2Config, batch: int, slots: int) -> bool:
  """Shapes the kernel tiles exactly: <= 16 rows, head_dim a power of two, the widths
  multiples of the tiles and the cache of the key block."""
  bn, bk = _tiles(cfg)
  d, f, dh = cfg.hidden_size, cfg.intermediate_size, cfg.dim_per_head
  return (1 <= batch <= ROWS and dh & (dh - 1) == 0 and dh >= 4
          and cfg.num_heads // cfg.num_kv_heads <= ROWS and d % bn == 0 and d % bk == 0
          and f % bn == 0 and f % bk == 0 and cfg.vocab_size % bn == 0
          and (cfg.num_heads * dh) % bn == 0 and slots % min(BLOCK_KEYS, slots) == 0)


def layout(params, cfg: Qwen2Config, dtype) -> dict:
  """The stacked [L, ...] weights the kernel indexes by layer (from the stacked param tree):
  qkv [L, D, NH, Dh] with the input-norm gain folded in (NH = H + 2K), qkv_bias [L, NH, Dh] f32,
  o [L, H * Dh, D], gate_up [L, D, 2F] with the post-norm gain folded in and gate / up columns
  interleaved per BLOCK_N units, down [L, F, D], final_norm [D] f32, lm [V, D]."""
  f32 = lambda x: x.astype(jnp.float32)
  ly = params["layers"]
  L, D = ly["q"].shape[:2]
  F = ly["gate"].shape[-1]
  bn, _ = _tiles(cfg)
  qkv = jnp.concatenate([f32(ly[k]) for k in ("q", "k", "v")], axis=2)          # [L, D, NH, Dh]
  qkv = qkv * f32(ly["input_norm"])[:, :, None, None]
  bias = jnp.concatenate([f32(ly[k]) for k in ("q_bias", "k_bias", "v_bias")], axis=1)
  g, u = (f32(ly[k]).reshape(L, D, F // bn, bn) for k in ("gate", "up"))
  gate_up = jnp.stack([g, u], axis=3).reshape(L, D, 2 * F) * f32(ly["post_norm"])[:, :, None]
  lm = params["embed"] if cfg.tie_embeddings else params["lm_head"].T
  c = lambda x: x.astype(dtype)
  return {"qkv": c(qkv), "qkv_bias": bias, "o": c(ly["o"].reshape(L, -1, D)),
          "gate_up": c(gate_up), "down": c(ly["down"]), "final_norm": f32(params["final_norm"]),
          "lm": c(lm)}


def _kernel(h_in, pos_ref, end_ref, inv_ref, wqkv, bqkv, wo, wgu, wdown, fnorm, wlm, kc_in, vc_in,
            cnt_in, h_ref, kc, vc, cnt, qkv_buf, att_buf, act_buf, logits_ref, *,
            cfg: Qwen2Config, batch: int, programs: int):
  """All refs whole arrays (see decode_step); h_in / kc_in / vc_in / cnt_in alias h_ref / kc /
  vc / cnt and are only used through those."""
  from jax.experimental.pallas import triton as plgpu
  del h_in, kc_in, vc_in, cnt_in
  H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
  G, half, eps = H // K, Dh // 2, cfg.rms_norm_eps
  D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  S = kc.shape[2]
  bn, bk = _tiles(cfg)
  bkv = min(BLOCK_KEYS, S)
  wdt = wqkv.dtype
  pid = pl.program_id(0)
  f32 = jnp.float32
  # Activations another program wrote since the last barrier: volatile loads, which skip the
  # SM's L1 (not coherent across SMs; a line cached a layer earlier would be stale). (The `.cg`
  # cache modifier would do, but this jax's Triton lowering rejects it: its table lacks the dot.)
  fresh = lambda ref, **kw: plgpu.load(ref, volatile=True, **kw)
  dot = lambda a, b: jnp.dot(a, b, preferred_element_type=f32)

  def items(n, body, carry):
    """body(item, carry) for items pid, pid + P, ... < n."""
    count = jnp.maximum(n - pid + programs - 1, 0) // programs
    return jax.lax.fori_loop(0, count, lambda i, c: body(pid + i * programs, c), carry)

  def barrier(k, acc):
    """The k-th grid barrier (float32 counter, see benchmarks/grid_barrier.py); returns acc
    through the spin's result so the loop is not dropped as dead code."""
    plgpu.atomic_add(cnt, (pl.ds(0, 1),), jnp.ones((1,), f32))
    target = ((k + 1) * programs).astype(f32)
    v = jax.lax.while_loop(lambda v: v < target,
                           lambda v: plgpu.load(cnt.at[pl.ds(0, 1)], volatile=True)[0],
                           jnp.float32(0))
    return jnp.where(v >= target, acc, 0)

  def inv_rms():                                                  # [16, 1] f32
    ss = jax.lax.fori_loop(0, D // bk, lambda i, s: s + jnp.sum(
        jnp.square(fresh(h_ref.at[:, pl.ds(i * bk, bk)])), axis=1), jnp.zeros((ROWS,), f32))
    return jax.lax.rsqrt(ss / D + eps)[:, None]

  def normed(i, r):                                               # [16, bk] in the weight dtype
    return (fresh(h_ref.at[:, pl.ds(i * bk, bk)]) * r).astype(wdt)

  def layer(l, tick):
    # -- q/k/v: one head a tile [16, Dh] -----------------------------------------------------
    r = inv_rms()

    def qkv_item(t, c):
      acc = jax.lax.fori_loop(0, D // bk, lambda i, a: a + dot(
          normed(i, r), wqkv[l, pl.ds(i * bk, bk), t, :]), jnp.zeros((ROWS, Dh), f32))
      qkv_buf[:, t, :] = acc + bqkv[l, t, :][None, :]
      return c
    tick = barrier(l * 5, items(H + 2 * K, qkv_item, tick))

    # -- attention: one (row, kv head) ---------------------------------------------------------
    def attn_item(item, c):
      b, j = item // K, item % K
      pos, e = pos_ref[b], end_ref[b]
      ang = pos.astype(f32) * inv_ref[...]                                    # [Dh/2]
      cos, sin = jnp.cos(ang)[None, :], jnp.sin(ang)[None, :]
      live_q = (jnp.arange(ROWS) < G)[:, None]
      qrows = lambda lo: fresh(qkv_buf.at[b, pl.ds(j * G, ROWS), pl.ds(lo, half)],
                               mask=jnp.broadcast_to(live_q, (ROWS, half)), other=0.0)
      qa, qb = qrows(0), qrows(half)
      scale = Dh ** -0.5
      qa, qb = (qa * cos - qb * sin) * scale, (qb * cos + qa * sin) * scale  # [16, Dh/2] each
      kvrow = lambda n, lo, w: fresh(qkv_buf.at[b, pl.ds(n, 1), pl.ds(lo, w)])   # [1, w]
      ka, kb = kvrow(H + j, 0, half), kvrow(H + j, half, half)
      ka, kb = ka * cos - kb * sin, kb * cos + ka * sin                       # [1, Dh/2]
      vn = kvrow(H + K + j, 0, Dh)                                            # [1, Dh]

      @pl.when(e < S)
      def _():                                              # the new token's slot (past S: dropped)
        kc[l, b, pl.ds(e, 1), pl.ds(j * Dh, half)] = ka.astype(kc.dtype)
        kc[l, b, pl.ds(e, 1), pl.ds(j * Dh + half, half)] = kb.astype(kc.dtype)
        vc[l, b, pl.ds(e, 1), pl.ds(j * Dh, Dh)] = vn.astype(vc.dtype)

      # Online softmax, starting from the new token (read from registers, not the cache).
      m = jnp.sum(qa * ka + qb * kb, axis=1)                                  # [16]
      lsum = jnp.ones((ROWS,), f32)
      acc = jnp.broadcast_to(vn, (ROWS, Dh)).astype(f32)
      n = jnp.minimum(e, S)

      def kv_block(i, carry):
        m, lsum, acc = carry
        live = i * bkv + jnp.arange(bkv) < n
        ld = lambda ref, lo, w: plgpu.load(ref.at[l, b, pl.ds(i * bkv, bkv), pl.ds(lo, w)],
                                           mask=jnp.broadcast_to(live[:, None], (bkv, w)),
                                           other=0.0).astype(f32)
        s = (dot(qa, ld(kc, j * Dh, half).T) + dot(qb, ld(kc, j * Dh + half, half).T))
        s = jnp.where(live[None, :], s, -1e30)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        p = jnp.exp(s - m_new[:, None])
        alpha = jnp.exp(m - m_new)
        acc = acc * alpha[:, None] + dot(p, ld(vc, j * Dh, Dh))
        return m_new, lsum * alpha + jnp.sum(p, axis=1), acc

      m, lsum, acc = jax.lax.fori_loop(0, (n + bkv - 1) // bkv, kv_block, (m, lsum, acc))
      plgpu.store(att_buf.at[b, pl.ds(j * G, ROWS), :], acc / lsum[:, None],
                  mask=jnp.broadcast_to(live_q, (ROWS, Dh)))
      return c
    tick = barrier(l * 5 + 1, items(batch * K, attn_item, tick))

    # -- o + residual: one column tile ---------------------------------------------------------
    def o_item(t, c):
      cols = pl.ds(t * bn, bn)
      acc = jax.lax.fori_loop(0, H, lambda hd, a: a + dot(
          fresh(att_buf.at[:, hd, :]).astype(wdt), wo[l, pl.ds(hd * Dh, Dh), cols]),
          jnp.zeros((ROWS, bn), f32))
      h_ref[:, cols] = fresh(h_ref.at[:, cols]) + acc
      return c
    tick = barrier(l * 5 + 2, items(D // bn, o_item, tick))

    # -- post norm + gate/up + SwiGLU: one block of bn hidden units --------------------------
    r = inv_rms()

    def mlp_item(t, c):
      def step(i, gu):
        x = normed(i, r)
        return (gu[0] + dot(x, wgu[l, pl.ds(i * bk, bk), pl.ds(2 * t * bn, bn)]),
                gu[1] + dot(x, wgu[l, pl.ds(i * bk, bk), pl.ds(2 * t * bn + bn, bn)]))
      z = jnp.zeros((ROWS, bn), f32)
      g, u = jax.lax.fori_loop(0, D // bk, step, (z, z))
      act_buf[:, pl.ds(t * bn, bn)] = g / (1.0 + jnp.exp(-g)) * u
      return c
    tick = barrier(l * 5 + 3, items(F // bn, mlp_item, tick))

    # -- down + residual: one column tile -------------------------------------------------------
    def down_item(t, c):
      cols = pl.ds(t * bn, bn)
      acc = jax.lax.fori_loop(0, F // bk, lambda i, a: a + dot(
          fresh(act_buf.at[:, pl.ds(i * bk, bk)]).astype(wdt), wdown[l, pl.ds(i * bk, bk), cols]),
          jnp.zeros((ROWS, bn), f32))
      h_ref[:, cols] = fresh(h_ref.at[:, cols]) + acc
      return c
    return barrier(l * 5 + 4, items(D // bn, down_item, tick))

  tick = jax.lax.fori_loop(0, cfg.num_layers, layer, jnp.zeros((), f32))

  # -- final norm + LM head: one vocabulary tile (lm [V, D]: rows are the output columns) -------
  r = inv_rms()

  def lm_item(t, c):
    acc = jax.lax.fori_loop(0, D // bk, lambda i, a: a + dot(
        (fresh(h_ref.at[:, pl.ds(i * bk, bk)]) * r * fnorm[pl.ds(i * bk, bk)][None, :]
         ).astype(wdt), wlm[pl.ds(t * bn, bn), pl.ds(i * bk, bk)].T), jnp.zeros((ROWS, bn), f32))
    logits_ref[:, pl.ds(t * bn, bn)] = acc + c
    return c
  items(V // bn, lm_item, tick)


@functools.partial(jax.jit, static_argnames=("cfg", "programs", "interpret"))
def decode_step(mp: dict, cfg: Qwen2Config, h, positions, k_cache, v_cache, end, *,
                programs: int, interpret: bool = False):
  """One token per row through the whole model in one kernel.

  mp: layout(...). h [B, D]: the tokens' embeddings; positions / end [B] int32 (RoPE position,
  cache slot of the new token); k_cache / v_cache [L, B, S, K, Dh] (stacked; updated in place).
  programs: resident programs (<= the GPU's SM count: every barrier waits for all of them; 1 in
  interpret mode, which runs programs one after another). Returns (logits [B, V] f32, k_cache,
  v_cache)."""
  from jax.experimental.pallas import triton as plgpu
  B, D = h.shape
  L, _, S, K, Dh = k_cache.shape
  H, V, F = cfg.num_heads, cfg.vocab_size, cfg.intermediate_size
  if not supported(cfg, B, S):
    raise ValueError(f"decode_megakernel does not tile {cfg.name!r} at {B} rows, {S} slots")
  pad = lambda x: jnp.zeros((ROWS,) + x.shape[1:], x.dtype).at[:B].set(x)
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, Dh, 2, dtype=jnp.float32) / Dh))   # as qwen2.rope
  kc, vc = k_cache.reshape(L, B, S, K * Dh), v_cache.reshape(L, B, S, K * Dh)
  sds = jax.ShapeDtypeStruct
  f32 = jnp.float32
  # q/k/v and attention buffers carry 16 spare heads: a group's 16-row tile starting at any
  # head stays in bounds (its rows past the group are masked).
  out_shape = (sds((ROWS, D), f32), sds(kc.shape, kc.dtype), sds(vc.shape, vc.dtype),
               sds((1,), f32), sds((ROWS, H + 2 * K + ROWS, Dh), f32),
               sds((ROWS, H + ROWS, Dh), f32),
               sds((ROWS, F), f32), sds((ROWS, V), f32))
  outs = pl.pallas_call(
      functools.partial(_kernel, cfg=cfg, batch=B, programs=programs),
      grid=(programs,), out_shape=out_shape,
      input_output_aliases={0: 0, 11: 1, 12: 2, 13: 3},
      compiler_params=plgpu.CompilerParams(num_warps=8, num_stages=3),
      interpret=interpret)(
          pad(h.astype(f32)), pad(positions.astype(jnp.int32)), pad(end.astype(jnp.int32)), inv,
          mp["qkv"], mp["qkv_bias"], mp["o"], mp["gate_up"], mp["down"], mp["final_norm"],
          mp["lm"], kc, vc, jnp.zeros((1,), f32))
  _, kc, vc, _, _, _, _, logits = outs
  return logits[:B], kc.reshape(k_cache.shape), vc.reshape(v_cache.shape)
