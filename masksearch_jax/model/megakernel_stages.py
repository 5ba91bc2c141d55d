"""The body of model/decode_megakernel.py's kernel: the stages of a layer, split-K everywhere.

Every product stage hands out (column tile, K-split) items with a grid stride and stores f32
partials; its consumer sums them (in a fixed order: a step repeats bit for bit), masked to the
batch's rows (masked loads read no memory). Every buffer a stage writes is indexed by layer, so
no address is written twice in a step: plain loads (cached in the SM's L1, which is not
coherent across SMs) cannot see a stale line. The residual stream is described in `kernel`.
Each stage ends at `grid_barrier` (its cost: benchmarks/grid_barrier.py); the loads after it
are indexed with the barrier's result, so none is hoisted above the spin.
Measured (RESULTS.md, session 26): correct on an H200, but 4.39 ms a 1.5B step against XLA's
1.41 ms; the stages are latency-bound, not yet located.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

ROWS = 16
STAGES = 5                                     # barriers a layer


def _i(v: int):
  """A static index as an int32 value: this jax's masked Triton loads reject Python ints."""
  return jnp.int32(v)


def grid_barrier(cnt, k, programs, value):
  """The k-th grid-wide barrier of `programs` programs (all resident): each adds 1 to the
  counter cnt [1] and spins until it reads (k + 1) * programs. Returns `value`, passed through
  the spin's result (callers index their next loads with it, so that no load is hoisted above
  the spin). Why so: this jax's Triton lowering adds with `fadd` whatever the dtype
  (an int32 counter stayed 0 on an H200), so the counter is float32 (exact to 2^24 arrivals);
  and a spin whose result is unused is dropped as dead code before Triton."""
  from jax.experimental.pallas import triton as plgpu
  plgpu.atomic_add(cnt, (pl.ds(0, 1),), jnp.ones((1,), jnp.float32))
  target = jnp.asarray((k + 1) * programs, jnp.float32)
  v = jax.lax.while_loop(lambda v: v < target,
                         lambda v: plgpu.load(cnt.at[pl.ds(0, 1)], volatile=True)[0],
                         jnp.float32(0))
  return value + v * 0.0          # = value, but not foldable: it depends on the spin's loads


def kernel(h_in, pos_ref, end_ref, inv_ref, wqkv, bqkv, wo, wgu, wdown, fnorm, wlm, kc_in, vc_in,
           cnt_in, kc, vc, cnt, a, xs, dp, qkv_p, att_acc, att_m, att_l, o_p, gu_p, fin,
           logits_ref, *, cfg, batch: int, plan, bn: int, bk: int, bkv: int,
           skip: frozenset = frozenset()):
  """Refs as decode_megakernel.decode_step passes them (the *_in ones alias outputs). skip:
  stage names ("qkv", "attn", "o", "mlp", "down", "lm") whose items are not run (timing only).

  The residual stream: a[l] + Σ dp[l] is layer l's input (a[0] = h, dp[0] = 0, set in the
  prologue); the q/k/v stage publishes it into xs[l]; xs[l] + Σ o_p[l] is the attention block's
  output, which the gate/up stage publishes into a[l + 1]; layer l's down partials are dp[l + 1].
  """
  from jax.experimental.pallas import triton as plgpu
  del kc_in, vc_in, cnt_in
  H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
  G, half, eps = H // K, Dh // 2, cfg.rms_norm_eps
  D, F, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
  S, P, bq = kc.shape[2], pl.num_programs(0), plan.bq      # P: the grid (plan may be larger)
  wdt = wqkv.dtype
  f32 = jnp.float32
  pid = pl.program_id(0)
  dot = lambda a_, b_: jnp.dot(a_, b_, preferred_element_type=f32)
  live_rows = (jnp.arange(ROWS) < batch)[:, None]
  rows_mask = lambda w: jnp.broadcast_to(live_rows, (ROWS, w))

  def act(view, w, other=0.0):               # [16, w] of the batch's rows (masked: no traffic)
    return plgpu.load(view, mask=rows_mask(w), other=other)

  def put(view, x):                          # store the batch's rows of a [16, w] tile
    plgpu.store(view, x, mask=rows_mask(x.shape[1]))

  def psum(parts, pi, n, lo, w):             # Σ_s parts[pi, s][:, lo:lo+w], in a fixed order
    x = act(parts.at[pi, _i(0), :, pl.ds(lo, w)], w)
    for s in range(1, n):
      x = x + act(parts.at[pi, _i(s), :, pl.ds(lo, w)], w)
    return x

  def resid(base, bi, parts, pi, n, lo, w):  # base[bi][:, lo:lo+w] + its n partials
    return act(base.at[bi, :, pl.ds(lo, w)], w) + psum(parts, pi, n, lo, w)

  def inv_rms(*src):                         # [16, 1]; unrolled: every block's loads in flight
    ss = jnp.zeros((ROWS,), f32)
    for i in range(D // bk):
      ss = ss + jnp.sum(jnp.square(resid(*src, i * bk, bk)), axis=1)
    return jax.lax.rsqrt(ss / D + eps)[:, None]

  def blocks(body):                          # body(i) for the D // bk column blocks, grid-strided
    n = D // bk
    jax.lax.fori_loop(0, jnp.maximum(n - pid + P - 1, 0) // P,
                      lambda i, c: (body(pid + i * P), c)[1], 0)

  def items(n, body, carry, name):           # body(item, carry) for items pid, pid + P, ...
    if name in skip:
      return carry
    count = jnp.maximum(n - pid + P - 1, 0) // P
    return jax.lax.fori_loop(0, count, lambda i, c: body(pid + i * P, c), carry)

  def barrier(k, tick):
    """Waits for all programs; the returned 0 depends on the spin's loads, and later indices
    add it so that no load after the barrier can be scheduled before it."""
    t = grid_barrier(cnt, k, P, tick)
    return t, t.astype(jnp.int32)

  # -- prologue: a[0] = h, dp[0] = 0 -------------------------------------------------------
  def init(i):
    lo = pl.ds(i * bk, bk)
    put(a.at[_i(0), :, lo], act(h_in.at[:, lo], bk))
    for s in range(plan.sd):
      put(dp.at[_i(0), _i(s), :, lo], jnp.zeros((ROWS, bk), f32))
  blocks(init)
  tick, z = barrier(0, jnp.zeros((), f32))

  def layer(l, tz):
    tick, z = tz
    base = 1 + l * STAGES
    # -- q/k/v: (tile of bq columns inside a head, K-split) --------------------------------
    lz = l + z
    src = (a, lz, dp, lz, plan.sd)
    r = inv_rms(*src)
    blocks(lambda i: put(xs.at[lz, :, pl.ds(i * bk, bk)], resid(*src, i * bk, bk)))
    kq = D // bk // plan.sq

    def qkv_item(it, c):
      t, s = it // plan.sq, it % plan.sq
      head, off = (t * bq) // Dh, (t * bq) % Dh
      def step(i, acc):
        lo = (s * kq + i) * bk
        x = (resid(*src, lo, bk) * r).astype(wdt)
        return acc + dot(x, wqkv[lz, t, pl.ds(lo, bk), :])
      put(qkv_p.at[lz, s, :, head, pl.ds(off, bq)],
          jax.lax.fori_loop(0, kq, step, jnp.zeros((ROWS, bq), f32)))
      return c
    tick, z = barrier(base, items((H + 2 * K) * Dh // bq * plan.sq, qkv_item, tick, "qkv"))

    # -- attention: (row, kv head, key split) -> flash-decoding partials ----------------------
    lz = l + z

    def attn_item(it, c):
      b, j, cs = it // (K * plan.sa), (it // plan.sa) % K, it % plan.sa
      pos, e = pos_ref[b], end_ref[b]
      ang = pos.astype(f32) * inv_ref[...]
      cos, sin = jnp.cos(ang)[None, :], jnp.sin(ang)[None, :]
      live_q = jnp.broadcast_to((jnp.arange(ROWS) < G)[:, None], (ROWS, half))

      def heads(first, n_rows, lo, w, mask):   # Σ partials + bias of n_rows heads from `first`
        kw = {} if mask is None else {"mask": mask, "other": 0.0}
        x = plgpu.load(bqkv.at[lz, pl.ds(first, n_rows), pl.ds(lo, w)], **kw)
        for s in range(plan.sq):
          x = x + plgpu.load(qkv_p.at[lz, _i(s), b, pl.ds(first, n_rows), pl.ds(lo, w)], **kw)
        return x
      qa, qb = heads(j * G, ROWS, 0, half, live_q), heads(j * G, ROWS, half, half, live_q)
      scale = Dh ** -0.5
      qa, qb = (qa * cos - qb * sin) * scale, (qb * cos + qa * sin) * scale   # [16, Dh/2]
      ka, kb = heads(H + j, 1, 0, half, None), heads(H + j, 1, half, half, None)
      ka, kb = ka * cos - kb * sin, kb * cos + ka * sin                          # [1, Dh/2]
      vn = heads(H + K + j, 1, 0, Dh, None)                                      # [1, Dh]
      first = cs == 0

      @pl.when(first & (e < S))
      def _():                                 # split 0 stores the new token (past S: dropped)
        kc[lz, b, pl.ds(e, 1), pl.ds(j * Dh, half)] = ka.astype(kc.dtype)
        kc[lz, b, pl.ds(e, 1), pl.ds(j * Dh + half, half)] = kb.astype(kc.dtype)
        vc[lz, b, pl.ds(e, 1), pl.ds(j * Dh, Dh)] = vn.astype(vc.dtype)

      # Split 0 starts from the new token (registers); the others from the neutral state.
      # (Arithmetic on a 0/1 float: Triton's select does not broadcast a scalar predicate.)
      fl = first.astype(f32)
      m = fl * jnp.sum(qa * ka + qb * kb, axis=1) + (1.0 - fl) * -1e30
      lsum = fl + jnp.zeros((ROWS,), f32)
      acc = fl * jnp.broadcast_to(vn, (ROWS, Dh))
      n = jnp.minimum(e, S)
      nb = (n + bkv - 1) // bkv
      per = (nb + plan.sa - 1) // plan.sa
      lo_blk = cs * per
      steps = jnp.clip(nb - lo_blk, 0, per)

      def kv_block(i, carry):
        m, lsum, acc = carry
        slot0 = (lo_blk + i) * bkv
        live = slot0 + jnp.arange(bkv) < n
        ld = lambda ref, lo, w: plgpu.load(ref.at[lz, b, pl.ds(slot0, bkv), pl.ds(lo, w)],
                                           mask=jnp.broadcast_to(live[:, None], (bkv, w)),
                                           other=0.0).astype(f32)
        s = dot(qa, ld(kc, j * Dh, half).T) + dot(qb, ld(kc, j * Dh + half, half).T)
        s = jnp.where(live[None, :], s, -1e30)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        p = jnp.exp(s - m_new[:, None])
        alpha = jnp.exp(m - m_new)
        return (m_new, lsum * alpha + jnp.sum(p, axis=1),
                acc * alpha[:, None] + dot(p, ld(vc, j * Dh, Dh)))

      m, lsum, acc = jax.lax.fori_loop(0, steps, kv_block, (m, lsum, acc))
      rows = jnp.arange(ROWS) < G
      plgpu.store(att_acc.at[lz, cs, b, pl.ds(j * G, ROWS), :], acc,
                  mask=jnp.broadcast_to(rows[:, None], (ROWS, Dh)))
      plgpu.store(att_m.at[lz, cs, b, pl.ds(j * G, ROWS)], m, mask=rows)
      plgpu.store(att_l.at[lz, cs, b, pl.ds(j * G, ROWS)], lsum, mask=rows)
      return c
    tick, z = barrier(base + 1, items(batch * K * plan.sa, attn_item, tick, "attn"))

    # -- o: (column tile, head group); merges the key splits of each of its heads ------------
    lz = l + z
    hs = H // plan.so

    def o_item(it, c):
      t, s = it // plan.so, it % plan.so
      cols = pl.ds(t * bn, bn)

      def head(i, acc):
        hd = s * hs + i
        mn = jnp.full((ROWS, 1), -1e30, f32)   # unrolled over the key splits: loads in flight
        ms = [act(att_m.at[lz, _i(cs), :, pl.ds(hd, 1)], 1, -1e30) for cs in range(plan.sa)]
        for m1 in ms:
          mn = jnp.maximum(mn, m1)
        lsum, out = jnp.zeros((ROWS, 1), f32), jnp.zeros((ROWS, Dh), f32)
        for cs in range(plan.sa):
          w1 = jnp.exp(ms[cs] - mn)
          lsum = lsum + act(att_l.at[lz, _i(cs), :, pl.ds(hd, 1)], 1) * w1
          out = out + act(att_acc.at[lz, _i(cs), :, hd, :], Dh) * w1
        x = (out / jnp.where(lsum > 0, lsum, 1.0)).astype(wdt)
        return acc + dot(x, wo[lz, t, pl.ds(hd * Dh, Dh), :])
      put(o_p.at[lz, s, :, cols], jax.lax.fori_loop(0, hs, head, jnp.zeros((ROWS, bn), f32)))
      return c
    tick, z = barrier(base + 2, items(D // bn * plan.so, o_item, tick, "o"))

    # -- gate/up: (block of bn units, K-split); gate and up partials side by side -------------
    lz = l + z
    src = (xs, lz, o_p, lz, plan.so)
    r = inv_rms(*src)
    blocks(lambda i: put(a.at[lz + 1, :, pl.ds(i * bk, bk)], resid(*src, i * bk, bk)))
    kg = D // bk // plan.sg

    def mlp_item(it, c):
      t, s = it // plan.sg, it % plan.sg
      def step(i, gu):
        lo = (s * kg + i) * bk
        x = (resid(*src, lo, bk) * r).astype(wdt)
        return (gu[0] + dot(x, wgu[lz, t, pl.ds(lo, bk), pl.ds(0, bn)]),
                gu[1] + dot(x, wgu[lz, t, pl.ds(lo, bk), pl.ds(bn, bn)]))
      zero = jnp.zeros((ROWS, bn), f32)
      g, u = jax.lax.fori_loop(0, kg, step, (zero, zero))
      put(gu_p.at[lz, s, :, pl.ds(2 * t * bn, bn)], g)
      put(gu_p.at[lz, s, :, pl.ds(2 * t * bn + bn, bn)], u)
      return c
    tick, z = barrier(base + 3, items(F // bn * plan.sg, mlp_item, tick, "mlp"))

    # -- down: (column tile, K-split over blocks of bn units); SwiGLU of the summed partials -
    lz = l + z
    kd = F // bn // plan.sd

    def down_item(it, c):
      t, s = it // plan.sd, it % plan.sd
      cols = pl.ds(t * bn, bn)
      def step(i, acc):
        ub = s * kd + i
        g = psum(gu_p, lz, plan.sg, 2 * ub * bn, bn)
        u = psum(gu_p, lz, plan.sg, 2 * ub * bn + bn, bn)
        x = (g / (1.0 + jnp.exp(-g)) * u).astype(wdt)
        return acc + dot(x, wdown[lz, t, pl.ds(ub * bn, bn), :])
      put(dp.at[lz + 1, s, :, cols], jax.lax.fori_loop(0, kd, step, jnp.zeros((ROWS, bn), f32)))
      return c
    return barrier(base + 4, items(D // bn * plan.sd, down_item, tick, "down"))

  tick, z = jax.lax.fori_loop(0, L, layer, (tick, z))

  # -- final norm (published once) + LM head over vocabulary tiles (lm [V, D]) ---------------
  lz = L + z
  src = (a, lz, dp, lz, plan.sd)
  r = inv_rms(*src)
  blocks(lambda i: put(fin.at[:, pl.ds(i * bk, bk)],
                       resid(*src, i * bk, bk) * r * fnorm[pl.ds(i * bk, bk)][None, :]))
  tick, z = barrier(1 + L * STAGES, tick)

  def lm_item(t, c):
    def step(i, acc):
      x = act(fin.at[:, pl.ds((i + z) * bk, bk)], bk).astype(wdt)
      return acc + dot(x, wlm[pl.ds(t * bn, bn), pl.ds(i * bk, bk)].T)
    put(logits_ref.at[:, pl.ds(t * bn, bn)],
        jax.lax.fori_loop(0, D // bk, step, jnp.zeros((ROWS, bn), f32)) + c)
    return c
  items(V // bn, lm_item, tick, "lm")
