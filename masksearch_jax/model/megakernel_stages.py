"""The body of model/decode_megakernel.py's kernel: the stages of a layer, split-K everywhere.

Every product stage hands out (column tile, K-split) items with a grid stride and stores f32
partials; its consumer sums them (in a fixed order: a step repeats bit for bit), masked to the
batch's rows (masked loads read no memory). The residual stream lives in hb[0] / hb[1]: the
q/k/v stage reads hb[0] + the last down partials and program 0 publishes the sum into hb[1];
the gate/up stage reads hb[1] + the o partials and publishes into hb[0]. Each stage ends at
`grid_barrier` (its cost: benchmarks/grid_barrier.py). Activations written by another program
are read with volatile loads, past the SM's L1 (not coherent across SMs).
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
  the spin's result. Why so: this jax's Triton lowering adds with `fadd` whatever the dtype
  (an int32 counter stayed 0 on an H200), so the counter is float32 (exact to 2^24 arrivals);
  and a spin whose result is unused is dropped as dead code before Triton."""
  from jax.experimental.pallas import triton as plgpu
  plgpu.atomic_add(cnt, (pl.ds(0, 1),), jnp.ones((1,), jnp.float32))
  target = jnp.asarray((k + 1) * programs, jnp.float32)
  v = jax.lax.while_loop(lambda v: v < target,
                         lambda v: plgpu.load(cnt.at[pl.ds(0, 1)], volatile=True)[0],
                         jnp.float32(0))
  return jnp.where(v >= target, value, 0)


def kernel(hb_in, pos_ref, end_ref, inv_ref, wqkv, bqkv, wo, wgu, wdown, fnorm, wlm, kc_in,
           vc_in, dp_in, cnt_in, hb, kc, vc, d_p, cnt, qkv_p, att_acc, att_m, att_l, o_p, gu_p,
           logits_ref, *, cfg, batch: int, plan, bn: int, bk: int, bkv: int,
           skip: frozenset = frozenset()):
  """Refs as decode_megakernel.decode_step passes them (the *_in ones alias outputs). skip:
  stage names ("qkv", "attn", "o", "mlp", "down", "lm") whose items are not run (timing only)."""
  from jax.experimental.pallas import triton as plgpu
  del hb_in, kc_in, vc_in, dp_in, cnt_in
  H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
  G, half, eps = H // K, Dh // 2, cfg.rms_norm_eps
  D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  S, P, bq = kc.shape[2], pl.num_programs(0), plan.bq      # P: the grid (plan may be larger)
  wdt = wqkv.dtype
  f32 = jnp.float32
  pid = pl.program_id(0)
  dot = lambda a, b: jnp.dot(a, b, preferred_element_type=f32)
  live_rows = (jnp.arange(ROWS) < batch)[:, None]

  def act(ref, w, other=0.0):                # [16, w] of the batch's rows, fresh from L2
    return plgpu.load(ref, mask=jnp.broadcast_to(live_rows, (ROWS, w)), other=other,
                      volatile=True)

  def psum(parts, n, lo, w):                 # Σ of n partials [n, 16, :] at columns lo:lo+w
    x = act(parts.at[_i(0), :, pl.ds(lo, w)], w)
    for s in range(1, n):
      x = x + act(parts.at[_i(s), :, pl.ds(lo, w)], w)
    return x

  def resid(slot, parts, n, lo, w):          # hb[slot][:, lo:lo+w] + its n partials
    return act(hb.at[_i(slot), :, pl.ds(lo, w)], w) + psum(parts, n, lo, w)

  def inv_rms(slot, parts, n):               # [16, 1]
    ss = jax.lax.fori_loop(0, D // bk, lambda i, s: s + jnp.sum(
        jnp.square(resid(slot, parts, n, i * bk, bk)), axis=1), jnp.zeros((ROWS,), f32))
    return jax.lax.rsqrt(ss / D + eps)[:, None]

  def publish(slot, parts, n, dst: int):     # program 0 stores the summed residual in hb[dst]
    @pl.when(pid == 0)
    def _():
      def blk(i, c):
        hb[_i(dst), :, pl.ds(i * bk, bk)] = resid(slot, parts, n, i * bk, bk)
        return c
      jax.lax.fori_loop(0, D // bk, blk, 0)

  def items(n, body, carry, name):           # body(item, carry) for items pid, pid + P, ...
    if name in skip:
      return carry
    count = jnp.maximum(n - pid + P - 1, 0) // P
    return jax.lax.fori_loop(0, count, lambda i, c: body(pid + i * P, c), carry)

  barrier = lambda k, tick: grid_barrier(cnt, k, P, tick)

  def layer(l, tick):
    # -- q/k/v: (tile of bq columns inside a head, K-split) --------------------------------
    r = inv_rms(0, d_p, plan.sd)
    publish(0, d_p, plan.sd, 1)
    kq = D // bk // plan.sq

    def qkv_item(it, c):
      t, s = it // plan.sq, it % plan.sq
      head, off = (t * bq) // Dh, (t * bq) % Dh
      def step(i, a):
        lo = (s * kq + i) * bk
        x = (resid(0, d_p, plan.sd, lo, bk) * r).astype(wdt)
        return a + dot(x, wqkv[l, pl.ds(lo, bk), head, pl.ds(off, bq)])
      qkv_p[s, :, head, pl.ds(off, bq)] = jax.lax.fori_loop(0, kq, step,
                                                            jnp.zeros((ROWS, bq), f32))
      return c
    tick = barrier(l * STAGES, items((H + 2 * K) * Dh // bq * plan.sq, qkv_item, tick, "qkv"))

    # -- attention: (row, kv head, key split) -> flash-decoding partials ----------------------
    def attn_item(it, c):
      b, j, cs = it // (K * plan.sa), (it // plan.sa) % K, it % plan.sa
      pos, e = pos_ref[b], end_ref[b]
      ang = pos.astype(f32) * inv_ref[...]
      cos, sin = jnp.cos(ang)[None, :], jnp.sin(ang)[None, :]
      live_q = jnp.broadcast_to((jnp.arange(ROWS) < G)[:, None], (ROWS, half))

      def heads(first, n_rows, lo, w, mask):   # Σ partials + bias of n_rows heads from `first`
        kw = {} if mask is None else {"mask": mask, "other": 0.0}
        x = plgpu.load(bqkv.at[l, pl.ds(first, n_rows), pl.ds(lo, w)], **kw)
        for s in range(plan.sq):
          x = x + plgpu.load(qkv_p.at[_i(s), b, pl.ds(first, n_rows), pl.ds(lo, w)], volatile=True,
                             **kw)
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
        kc[l, b, pl.ds(e, 1), pl.ds(j * Dh, half)] = ka.astype(kc.dtype)
        kc[l, b, pl.ds(e, 1), pl.ds(j * Dh + half, half)] = kb.astype(kc.dtype)
        vc[l, b, pl.ds(e, 1), pl.ds(j * Dh, Dh)] = vn.astype(vc.dtype)

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
        ld = lambda ref, lo, w: plgpu.load(ref.at[l, b, pl.ds(slot0, bkv), pl.ds(lo, w)],
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
      plgpu.store(att_acc.at[cs, b, pl.ds(j * G, ROWS), :], acc,
                  mask=jnp.broadcast_to(rows[:, None], (ROWS, Dh)))
      plgpu.store(att_m.at[cs, b, pl.ds(j * G, ROWS)], m, mask=rows)
      plgpu.store(att_l.at[cs, b, pl.ds(j * G, ROWS)], lsum, mask=rows)
      return c
    tick = barrier(l * STAGES + 1, items(batch * K * plan.sa, attn_item, tick, "attn"))

    # -- o: (column tile, head group); merges the key splits of each of its heads ------------
    hs = H // plan.so

    def o_item(it, c):
      t, s = it // plan.so, it % plan.so
      cols = pl.ds(t * bn, bn)

      def head(i, a):
        hd = s * hs + i
        def merge(cs, mla):
          m0, l0, a0 = mla
          m1 = act(att_m.at[cs, :, pl.ds(hd, 1)], 1, -1e30)                        # [16, 1]
          mn = jnp.maximum(m0, m1)
          w0, w1 = jnp.exp(m0 - mn), jnp.exp(m1 - mn)
          return (mn, l0 * w0 + act(att_l.at[cs, :, pl.ds(hd, 1)], 1) * w1,
                  a0 * w0 + act(att_acc.at[cs, :, hd, :], Dh) * w1)
        z1 = jnp.zeros((ROWS, 1), f32)
        _, lsum, out = jax.lax.fori_loop(0, plan.sa, merge,
                                         (z1 - 1e30, z1, jnp.zeros((ROWS, Dh), f32)))
        x = (out / jnp.where(lsum > 0, lsum, 1.0)).astype(wdt)
        return a + dot(x, wo[l, pl.ds(hd * Dh, Dh), cols])
      o_p[s, :, cols] = jax.lax.fori_loop(0, hs, head, jnp.zeros((ROWS, bn), f32))
      return c
    tick = barrier(l * STAGES + 2, items(D // bn * plan.so, o_item, tick, "o"))

    # -- gate/up: (block of bn units, K-split); gate and up partials side by side -------------
    r = inv_rms(1, o_p, plan.so)
    publish(1, o_p, plan.so, 0)
    kg = D // bk // plan.sg

    def mlp_item(it, c):
      t, s = it // plan.sg, it % plan.sg
      def step(i, gu):
        lo = (s * kg + i) * bk
        x = (resid(1, o_p, plan.so, lo, bk) * r).astype(wdt)
        return (gu[0] + dot(x, wgu[l, pl.ds(lo, bk), pl.ds(2 * t * bn, bn)]),
                gu[1] + dot(x, wgu[l, pl.ds(lo, bk), pl.ds(2 * t * bn + bn, bn)]))
      z = jnp.zeros((ROWS, bn), f32)
      g, u = jax.lax.fori_loop(0, kg, step, (z, z))
      gu_p[s, :, pl.ds(2 * t * bn, bn)] = g
      gu_p[s, :, pl.ds(2 * t * bn + bn, bn)] = u
      return c
    tick = barrier(l * STAGES + 3, items(F // bn * plan.sg, mlp_item, tick, "mlp"))

    # -- down: (column tile, K-split over blocks of bn units); SwiGLU of the summed partials -
    kd = F // bn // plan.sd

    def down_item(it, c):
      t, s = it // plan.sd, it % plan.sd
      cols = pl.ds(t * bn, bn)
      def step(i, a):
        ub = s * kd + i
        g = psum(gu_p, plan.sg, 2 * ub * bn, bn)
        u = psum(gu_p, plan.sg, 2 * ub * bn + bn, bn)
        x = (g / (1.0 + jnp.exp(-g)) * u).astype(wdt)
        return a + dot(x, wdown[l, pl.ds(ub * bn, bn), cols])
      d_p[s, :, cols] = jax.lax.fori_loop(0, kd, step, jnp.zeros((ROWS, bn), f32))
      return c
    return barrier(l * STAGES + 4, items(D // bn * plan.sd, down_item, tick, "down"))

  tick = jax.lax.fori_loop(0, cfg.num_layers, layer, jnp.zeros((), f32))

  # -- final norm + LM head over vocabulary tiles (lm [V, D]) ---------------------------------
  r = inv_rms(0, d_p, plan.sd)

  def lm_item(t, c):
    def step(i, a):
      x = resid(0, d_p, plan.sd, i * bk, bk) * r * fnorm[pl.ds(i * bk, bk)][None, :]
      return a + dot(x.astype(wdt), wlm[pl.ds(t * bn, bn), pl.ds(i * bk, bk)].T)
    logits_ref[:, pl.ds(t * bn, bn)] = jax.lax.fori_loop(
        0, D // bk, step, jnp.zeros((ROWS, bn), f32)) + c
    return c
  items(V // bn, lm_item, tick, "lm")
